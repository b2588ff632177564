"""RECM: recurrent equivariant constraint modulation, the project's formulation (v2).

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

Two departures from the first draft of the formulation (docs/design/recm.md section 2), both
found on the N-body property run (say so when citing):
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

Subgroup split (v2, ``recm`` mode). Conformer data break at most reflection: training
augments with proper rotations, so a rotation-breaking branch's expected alignment is exactly
zero, while an R/S label embedded as an even scalar leaves a real reflection gap. One gamma
for both mixes a zero signal with a small real one. So each layer has two branches, each with
its own gamma and ``RECMState``:
- the rotation branch (the free MLP above), its residual ``r = f - P_SO(3)[f]`` projected over
  proper rotations only (Haar samples of SO(3));
- the reflection branch ``g``: an ``o3.Linear`` from the layer's input irreps to its output
  irreps with every parity flipped, read as the output irreps. It is exactly
  rotation-equivariant, so its non-equivariant part is its inversion-odd part, exact with one
  extra evaluation because -I commutes with every rotation:
  ``r = (g(x) - rho_out(-I) g(rho_in(-I) x)) / 2`` (no Monte-Carlo bias: the 2-sample O(3)
  estimate gave 0, g or 2g for such a branch).
A layer whose irreps allow no flipped path has the rotation branch alone (projected over
O(3), as in v1); other modes keep one branch.

Absorption as a statistical decision. b is computed per molecule (cosine over that
molecule's rows), b_m. Under exact symmetry of the branch's subgroup, the argument above holds
conditionally on the network's parameters at each step (every molecule's orientation is a
fresh draw), so the b_m form a martingale-difference sequence with mean 0; under a real gap
their mean is mu > 0. With the running mean ``m`` and variance ``s^2`` of b_m over the
molecules of the last ``stats_window`` steps (n_eff of them), the martingale CLT gives
``t = (m - margin) / (s / sqrt(n_eff)) ~ N(0, 1)`` when mu = margin, and
``t ~ (mu - margin) sqrt(n_eff) / s`` in general. A branch is absorbed (gamma = 0, frozen,
dropped at export) when, after ``absorb_after_steps`` steps and ``min_samples`` molecules,
the one-sided test of ``E[b] > margin`` at level ``significance_level`` fails to reject
(t < z_{1-alpha}) for ``patience`` consecutive steps. A gap at or under the margin is then
absorbed with probability -> 1 (each step passes with probability >= 1 - alpha), and the
exported layer is exactly equivariant; a gap is kept while ``(mu - margin) sqrt(n_eff) / s``
stays well above z.

b on each branch's support (``RECMConfig.score_on_support``, default on). The reflection
branch can write only the output irreps whose flipped irrep occurs in its input (``o3.Linear``
connects equal irreps): ``S`` (``layer.reflection_support``; the 0o channels, 2 of 34, at the
denoiser's layer 0). r is zero off S, so ``<delta, r> = <delta_S, r_S>``, but the old
normalisation ``|delta|`` counted every channel and scored a perfectly aligned branch
``|delta_S| / |delta|`` (~sqrt(2/34)). We use ``b = -<delta_S, r_S> / (|delta_S| |r_S|)``. The
null survives: S is a union of whole irreps, so ``|rho_out(g) delta|_S = |delta|_S``, and for
the reflection branch ``r(rho_in(-I) z) = -rho_out(-I) r(z)``: a molecule and its mirror image
(equally likely under exact O(3) symmetry) have b of opposite signs, so E[b] = 0 exactly. The
same holds restricted to the rows where r is non-zero (``support_atoms``: the mirror has the
same rows). The rotation branch's MLP writes every channel: its support is all of them.

b on held-out molecules (``heldout_every`` = k, default 4; the training loop names each
molecule with ``RECMController.hold_out(keys)``). Molecules with ``key % k == 0`` pass no
gradient through either branch (their rows of the branch outputs are detached; the trunk
still trains on them), and b is scored on them alone. Why: the martingale argument above needs
molecules the branch has not fitted. Training molecules come back every epoch and the branch,
trained on them, fits the finite training set's own asymmetry, which biases b upwards even
when the population is exactly symmetric (N-body, eps = 0: +0.009 at t = 8.7 against 0). Held
out of every branch's gradient, a molecule's b has mean 0 under the null (the branches'
parameters do not depend on it), so the margin defaults to 0 (``gap_margin`` None: 0 for
held-out b, ``FITTED_GAP_MARGIN`` = 0.01 when no keys are given, where b is still measured on
training molecules). Statistics: a held-out molecule also comes back, and its b barely changes
between visits (the reflection branch's b is invariant under the proper rotations of
augmentation), so its visits are not independent samples: the absorbing test uses the
cluster-robust standard error over ``HELDOUT_CLUSTERS`` fixed clusters of held-out molecules
(windowed per-cluster sums S_c of b and W_c of counts; m = sum S_c / sum W_c,
Var m ~ C/(C-1) sum (S_c - m W_c)^2 / (sum W_c)^2), i.e. the evidence is the number of
distinct held-out molecules, not of visits. The gamma update still uses each step's mean b of
its held-out molecules. The minimum number of steps matters because b of a young branch
(random initial direction, before the surrogate gradient has taught it anything) is negative
or noise, and v1 decided at step ~300 on that.

The span score and magnitude weighting (session 12; ``RECMConfig.reflection_score``,
``RECMConfig.b_weighting``). Two measured faults of the per-molecule cosine on conformers:
(1) dilution: diffusion training puts denoising noise on every atom's gradient, so even a
branch pointing exactly where the loss wants it scored b ~ 0.01 and the fixed point
``gamma_max E[b]`` stayed near 0; (2) the sign: finite differences of the loss in each
reflection gamma (held-out molecules, fixed noise) said "more helps" where the mean of the
per-molecule cosines was negative: many molecules at low noise, where the branch slightly
overshoots, outvoted the few at high noise where it removes most of the loss.
(1) The reflection branch is linear in its weights, so what it can write on molecule m is a
linear space; ``P_m`` projects onto it (per output irrep block, onto the span of the input
channels of the same irrep that feed it; ``ReflectionBranch.followable_sq``) and

    b_m = -<delta_m, r_m> / (|P_m delta_m| |r_m|)  in [-1, 1]  (r_m lies in that space),

1 when the branch points where the loss wants it within what it could write, whatever the
noise outside. P_m's norm is invariant under rotations and under the mirror image (its Gram
matrix and cross term change by an orthogonal map, and by a sign, respectively), so the null
argument above is unchanged: a mirror pair has opposite b_m and equal norms.
(2) The mean over molecules is weighted by each molecule's denominator w_m = |P_m delta_m|
|r_m|: ``sum w_m b_m / sum w_m = -sum <delta_m, r_m> / sum w_m``, the batch cosine of v1, of
the sign of the loss's derivative along the branch. The cluster sums of the absorbing test
become weighted sums and sums of weights (the ratio estimator's linearised variance is the
same formula), and the gamma update uses each step's weighted mean times its weight over the
running mean step weight, so that both estimate the same ratio. Under exact symmetry the
ratio is 0 at gamma = 0; at gamma > 0 it is negative (the loss's curvature along the
branch: ``dL/dgamma = a + c gamma`` with a = 0), which only speeds absorption. With a gap
(a > 0), ``b ~ (a - c gamma) / w`` and the update's fixed point is
``gamma* = gamma_max a / (w + gamma_max c)``: positive, and bounded by ``gamma_max a / w``.

The test at the equivariant point (session 13; ``RECMConfig.heldout_point``). With a gap,
the weighted b at gamma > 0 is ``(a - c gamma) / w`` and the update holds it at
``gamma / gamma_max``: the better the branch and gamma fit, the smaller b. A gap kept at a
small gamma (0.05-0.4 on the chirality experiment) then tested as no gap after a few hundred
steps of bad luck and was absorbed, or not, depending on the length of training. So held-out
every other held-out molecule (``key // heldout_every`` even) is a *probe* that sees no
branch at all: every branch's value is 0 on its rows, and its b is

    b0 = -<delta0, r> / w,  delta0 = dL/dy at gamma = 0 for every branch of every layer,

i.e. ``a / w``, how much the loss at the equivariant point wants each branch. On a probe the
network is exactly O(3)-equivariant, whatever its parameters, so the argument above gives
E[b0] = 0 under exact symmetry (no curvature term, no fitting bias: the branches do not train
on held-out molecules); with a gap b0 grows as the branch learns to fill it, and each layer's
b0 measures its branch alone (the others are off too), so branches of different layers that
could each carry the same information do not hide one another. The absorbing test uses the
probes alone; the gamma update the other held-out molecules at the current gamma, as before
(not the training molecules: the branches, fitted to them, leave little of their gradient to
follow, and gamma stayed near 0.03 on the chirality preset). The trunk still trains on
probes, without the branches.

An option, off by default (session 13; ``RECMConfig.gamma_gate = "significant"``): gamma
follows its update only while the test shows a gap, else decays to 0, so a null branch adds
nothing before it is absorbed. Measured: no stereo gain on the chirality preset, and one
rotation branch opened and kept on a t that drifted above the threshold late in training.

Clipping (session 13; ``RECMController.clip_grad_norm_``). The surrogate gradient is the
branch's at gamma = 1, 2-100x the rest of the network's on the chirality preset; clipped
together with the trunk's to a total norm it shrank the trunk's step by that varying ratio.
Training loops clip the surrogate branches apart from the rest (``conformer train`` through
``configure_gradient_clipping``, ``reproduce chirality`` directly).

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
