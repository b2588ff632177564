"""RECM: recurrent equivariant constraint modulation, the project's formulation (v1).

Every modulated layer computes ``y = f_eq(x) + gamma * n(f_free(z))``: ``f_eq`` a strictly
O(3)-equivariant block, ``f_free`` an unconstrained GELU MLP on the node's flattened irreps
features ``z``, ``n(.)`` a rescaling of the free output to the RMS of ``f_eq``'s output (scale
detached, so gamma alone carries the branch's magnitude), and ``gamma`` a per-layer recurrent
state in [0, gamma_max], updated once per optimiser step, never by gradient descent.

Derivation of the signal. Let ``rho_in``, ``rho_out`` be the representations of O(3) on the
branch's input and output and ``P[f](z) = E_{g~Haar} rho_out(g)^-1 f(rho_in(g) z)`` the Haar
projection; ``r = f - P[f]`` is the branch's non-equivariant part (``P[r] = 0``). The backward
pass gives ``delta = dL/dy`` (kept by a tensor hook on ``y``). Suppose the layer's input-target
distribution is O(3)-invariant and the rest of the network is equivariant. Then the pair
``(z, delta)`` has the same law as ``(rho_in(g) z, rho_out(g) delta)`` for every g, so

    E <delta, r(z)> = E_g E <rho_out(g) delta, r(rho_in(g) z)> = E <delta, P[r](z)> = 0,

i.e. on average the descent direction has no component a non-equivariant map could follow.
When the distribution is not symmetric, the expectation is positive in proportion to the part
of ``-delta`` only a non-equivariant map can follow. We use the batch cosine

    b = -<delta, r> / (||delta|| ||r|| + eps)  in [-1, 1],

with ``P`` estimated by ``num_group_samples`` random elements of O(3) (reflections included;
unbiased because ``<delta, r_hat>`` is linear in the estimate). ``b`` is evaluated on the
current batch before the optimiser sees it, so the branch's fit to earlier batches' noise does
not bias it. The update ``gamma <- clip((1-beta) gamma + beta gamma_max b, 0, gamma_max)`` is a
contraction (Lipschitz 1-beta in gamma), so gamma tracks the fixed point ``gamma_max E[b]``,
which is 0 under exact symmetry and needs no per-layer target.

Two departures from recm.md v1, both found on the N-body property run (say so when citing):
(1) gamma starts at 0, not 1. n(.) inflates the freshly initialised (random) branch to the full
scale of the layer's output, so starting at 1 injects noise that costs part of a fixed training
budget (N-body, eps = 0: test MSE 0.020 vs 0.0146 equivariant); the update is a contraction, so
its fixed point does not depend on the start. (2) In ``recm`` mode the branch's own parameters get
the gradient as if gamma were 1 (the output still uses gamma): the branch learns the direction
it would take at full use even while gamma is small. The layers below get only the true
gradient (gamma times the branch's): letting the surrogate reach them trained the trunk on a
term absent from the loss and made diffusion training diverge. Without it, a branch whose gamma fell early
(the initial noise makes b < 0) stopped learning, b never became positive and gamma never
recovered at eps > 0 (every layer was absorbed at eps = 0.3 and 1.0).

Absorbing zero. Under exact symmetry gamma is a random walk reflected at 0, small but rarely
exactly 0. We keep running moments of b (window ``stats_window``); when the upper confidence
bound of the fixed point, ``gamma_max (mean + z stderr)``, and gamma itself stay under
``gamma_min`` for ``patience`` steps, the layer is frozen (gamma = 0) and its branch dropped.
recm.md suggests ``gamma_min ~ 1e-3`` on the mean of b; a standard error of 1e-3 needs ~1e4+
steps of b with spread ~0.1, so the bound here is on the fixed point with ``gamma_min = 0.05``:
a layer is absorbed only when its confident fixed point is under 5% of the equivariant output.

Baselines behind the same switch (``RECMConfig.mode``; each mode's behaviour is one policy in
``conformer.recm.modes``): ``equivariant`` (no branch),
``unconstrained`` (gamma = 1, no projection), ``scheduled`` (gamma triangular 0 -> 1 -> 0 over
training with a relative equivariance-defect penalty; dropped at test/export), ``ace``
(primal-dual: ``gamma -= eta_p (dJ/dgamma + lambda)``, ``lambda += eta_d gamma``, where
``dJ/dgamma = <delta, n(f)>`` comes from the same hook; truncated at export).
"""

from conformer.recm.config import RECMConfig
from conformer.recm.controller import RECMController, controller_of
from conformer.recm.export import export
from conformer.recm.haar import random_orthogonal
from conformer.recm.layer import FreeBranch, ModulatedLayer, RECMState, ReflectionBranch
from conformer.recm.modes import MODES, ModePolicy, mode_policy

__all__ = ["MODES", "ModePolicy", "mode_policy", "RECMConfig", "RECMController",
           "controller_of", "export", "random_orthogonal", "FreeBranch", "ModulatedLayer",
           "ReflectionBranch",
           "RECMState"]
