"""Flow matching from a harmonic prior on the bond graph (ET-Flow, Hassan et al. 2024).

Why: EDM starts every sample from an isotropic 30 A Gaussian, so most of its network
evaluations are spent at noise levels where the radius graph is empty and the molecule is a
cloud. The harmonic prior (EigenFold, Jing et al. 2023) already puts bonded atoms about one
bond length apart, so the network sees molecule-like inputs at every time; and aligning each
prior draw to its data conformer (Kabsch) makes the straight paths x_t = (1 - t) x0 + t x1
cross less, so fewer sampler steps are needed (20 Euler evaluations against EDM's 50).

Conventions as in ``conformer.diffusion.edm``: x [N_total, 3] Angstrom, molecules
concatenated, ``batch.batch`` [N_total] gives each atom's molecule, every quantity centred per
molecule (unweighted centroid). t in [0, 1]: 0 = prior, 1 = data.

Prior: per molecule, with L the bond-graph Laplacian (``batch.edge_index`` holds the bonds
only; the radius edges are built inside the denoiser) and L = V diag(lambda) V^T,
    x0 = V diag(s) V^T z,  z ~ N(0, I) [N, 3],  s_k = b / sqrt(3 (lambda_k + eps))
for lambda_k > 0, and s_k = 0 for the constant mode (centring). That is x0 ~ N(0, (alpha
(L + eps I))^+) on centred coordinates with alpha = 3 / b^2: in a tree the bond vector
x_i - x_j then has per-coordinate variance b^2 / 3, so E|x_i - x_j|^2 = b^2 (b =
``bond_length``, Angstrom; bonds in rings come out a little shorter). The symmetric square
root keeps the map z -> x0 rotation-equivariant, so the sampler may be handed the standard
normal starts ``conformer.generation`` draws per conformer. Separate fragments (zero modes
beyond the centroid) get the variance of the molecule's softest bonded mode.

Training: x0 from the prior, rotated onto the data conformer x1 by the proper rotation that
minimises their RMSD (Kabsch, per molecule; x1 itself is randomly rotated first), t from
``time_distribution``, x_t = (1 - t) x0 + t x1 (+ ``path_noise`` * centred Gaussian noise).
The network predicts the velocity v = x1 - x0 (Angstrom per unit time):
    v_hat = velocity_scale * F(x_t; c_noise = t),   loss = |v_hat - (x1 - x0)|^2
averaged over atoms and coordinates of each molecule then over molecules. Why the velocity and
not x1: its target has the same O(1 A) scale at every t, so the loss needs no time weighting
(an x1 loss turned into a velocity loss divides by (1 - t)^2, which explodes near the data);
and the implied clean estimate x1_hat = x_t + (1 - t) v_hat is EDM's skip connection: near
t = 1 the network only corrects its input, which is where bond lengths are decided.

Sampling: Euler (``steps`` evaluations) or Heun (2 steps - 1) from t = 0 to 1 on a uniform
grid. Every step goes through the clean estimate x1_hat, so ``guidance(x1_hat, sigma)``
(``conformer.diffusion.guidance.StereoGuidance``) can steer it exactly as in EDM, with
sigma = ``guidance_sigma_scale`` * (1 - t) / t: the noise level of x_t / t read as
x1 + noise in EDM's terms (infinite at t = 0, 0 at t = 1). The last Euler step lands exactly
on x1_hat. The ODE is deterministic: ``noise_generators`` is accepted for the sampler
interface and unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from conformer.data.batching import with_positions
from conformer.diffusion.edm import center, random_rotations


@dataclass(frozen=True)
class FlowSettings:
    """Flow matching with a harmonic prior; the ``diffusion`` section of a config with
    ``kind: flow``.

    prior: ``harmonic`` (bond-graph Laplacian) or ``gaussian`` (isotropic, ``gaussian_std``
    Angstrom per coordinate; for ablations). bond_length: Angstrom, the RMS bonded distance of
    prior draws on trees. harmonic_eps: added to the Laplacian's eigenvalues (1 / Angstrom^0:
    the Laplacian is dimensionless); bounds the softest modes of long chains.
    align: Kabsch-align each prior draw to its data conformer during training.
    time_distribution: ``uniform`` or ``logit_normal`` (``t = sigmoid(N(time_mean,
    time_std))``). path_noise: std (Angstrom) of centred Gaussian noise added to x_t in
    training (0 = off). velocity_scale: the network output's scale (Angstrom).
    sample_steps, solver (``euler`` or ``heun``): the default sampler.
    guidance_sigma_scale: Angstrom, converts t into the sigma stereo guidance reads.
    """

    kind: str = "flow"
    prior: str = "harmonic"
    bond_length: float = 1.25
    harmonic_eps: float = 1e-3
    gaussian_std: float = 2.0
    align: bool = True
    time_distribution: str = "uniform"
    time_mean: float = 0.0
    time_std: float = 1.0
    path_noise: float = 0.0
    velocity_scale: float = 1.0
    sample_steps: int = 20
    solver: str = "euler"
    guidance_sigma_scale: float = 2.0

    def __post_init__(self) -> None:
        if self.kind != "flow":
            raise ValueError(f"FlowSettings has kind 'flow', not {self.kind!r}")
        if self.prior not in ("harmonic", "gaussian"):
            raise ValueError(f"unknown prior {self.prior!r}; choose harmonic or gaussian")
        if self.time_distribution not in ("uniform", "logit_normal"):
            raise ValueError(f"unknown time_distribution {self.time_distribution!r}; choose "
                             "uniform or logit_normal")
        if self.solver not in ("euler", "heun"):
            raise ValueError(f"unknown solver {self.solver!r}; choose euler or heun")
        if self.sample_steps < 1:
            raise ValueError("sample_steps must be at least 1")
        if min(self.bond_length, self.gaussian_std, self.velocity_scale,
               self.guidance_sigma_scale, self.time_std) <= 0:
            raise ValueError("bond_length, gaussian_std, velocity_scale, guidance_sigma_scale "
                             "and time_std must be > 0")
        if self.harmonic_eps < 0 or self.path_noise < 0:
            raise ValueError("harmonic_eps and path_noise must be >= 0")

    # The EDM sampler's stochastic options; generation reads them to decide whether to hand
    # the sampler per-conformer noise generators. The flow ODE has none.
    @property
    def churn(self) -> float:
        return 0.0

    @property
    def refine_steps(self) -> int:
        return 0


# the settings that define what the network learnt; a model file's sampler may change the rest
FLOW_TRAINING_KEYS = frozenset({"kind", "prior", "bond_length", "harmonic_eps", "gaussian_std",
                                "align", "time_distribution", "time_mean", "time_std",
                                "path_noise", "velocity_scale"})


def _padded(graph: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(counts [B], slot [N]: each atom's index within its molecule, the largest count)."""
    counts = torch.bincount(graph, minlength=num_graphs)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(graph.shape[0], device=graph.device) - starts[graph]
    return counts, slot, int(counts.max()) if num_graphs else 0


def harmonic_prior_sqrt(batch: Batch, bond_length: float, eps: float,
                        dtype=torch.float64) -> torch.Tensor:
    """The prior's symmetric square-root covariances, padded: [B, M, M] (M = largest molecule).

    Entry [b, i, j] couples atoms i and j of molecule b (atoms in batch order); rows and
    columns past the molecule's size are zero. x0 = S z for z ~ N(0, I) gives centred draws
    with E|x_i - x_j|^2 = bond_length^2 for the bonds of a tree (Angstrom^2). One batched
    ``eigh`` over the padded Laplacians; padding sits on eigenvalue -1, apart from every real
    eigenvalue (>= 0), so no eigenvector mixes padding and atoms.
    """
    graph, num_graphs = batch.batch, batch.num_graphs
    device = graph.device
    counts, slot, size = _padded(graph, num_graphs)
    adjacency = torch.zeros(num_graphs, size, size, dtype=dtype, device=device)
    source, target = batch.edge_index
    adjacency[graph[source], slot[source], slot[target]] = 1.0
    adjacency = torch.maximum(adjacency, adjacency.transpose(1, 2))
    adjacency.diagonal(dim1=1, dim2=2).zero_()
    laplacian = torch.diag_embed(adjacency.sum(2)) - adjacency
    present = torch.arange(size, device=device).unsqueeze(0) < counts.unsqueeze(1)  # [B, M]
    laplacian = laplacian - torch.diag_embed((~present).to(dtype))  # padding: eigenvalue -1
    eigenvalues, eigenvectors = torch.linalg.eigh(laplacian)
    real = eigenvalues > -0.5
    # the constant mode (one per molecule, the smallest real eigenvalue): removed by centring.
    # Further zero modes (separate fragments) take the softest bonded mode's eigenvalue.
    first_real = real.to(torch.int64).argmax(dim=1)
    ordinal = torch.arange(size, device=device).unsqueeze(0) - first_real.unsqueeze(1)
    zero = real & (eigenvalues < 1e-8) & (ordinal > 0)
    bonded = real & (eigenvalues >= 1e-8)
    softest = torch.where(bonded, eigenvalues, torch.full_like(eigenvalues, math.inf)).amin(1)
    softest = torch.where(torch.isfinite(softest), softest, torch.ones_like(softest))
    eigenvalues = torch.where(zero, softest.unsqueeze(1).expand_as(eigenvalues), eigenvalues)
    keep = real & (ordinal > 0)
    scale = torch.where(keep, bond_length / (3 * (eigenvalues.clamp(min=0) + eps)).sqrt(),
                        torch.zeros_like(eigenvalues))
    return eigenvectors @ torch.diag_embed(scale) @ eigenvectors.transpose(1, 2)


def apply_padded(matrix: torch.Tensor, z: torch.Tensor, graph: torch.Tensor,
                 num_graphs: int) -> torch.Tensor:
    """Per molecule ``matrix[b] @ z_b``: matrix [B, M, M], z [N, 3] -> [N, 3]."""
    _, slot, size = _padded(graph, num_graphs)
    padded = torch.zeros(num_graphs, size, 3, dtype=matrix.dtype, device=z.device)
    padded[graph, slot] = z.to(matrix.dtype)
    return (matrix @ padded)[graph, slot].to(z.dtype)


def kabsch_rotations(mobile: torch.Tensor, target: torch.Tensor, graph: torch.Tensor,
                     num_graphs: int) -> torch.Tensor:
    """Per molecule, the proper rotation R [B, 3, 3] (det +1) minimising |R mobile - target|
    over its atoms; both [N, 3] centred. Reflections are never used: they would mirror the
    molecule."""
    covariance = scatter(mobile.unsqueeze(2) * target.unsqueeze(1), graph, 0, num_graphs,
                         reduce="sum").to(torch.float64)  # sum_i m_i t_i^T [B, 3, 3]
    u, _, vh = torch.linalg.svd(covariance)
    sign = torch.sign(torch.linalg.det(vh.transpose(1, 2) @ u.transpose(1, 2)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    fix = torch.diag_embed(torch.stack([torch.ones_like(sign), torch.ones_like(sign), sign], 1))
    return (vh.transpose(1, 2) @ fix @ u.transpose(1, 2)).to(mobile.dtype)


def rotate(x: torch.Tensor, rotations: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
    """Each atom's coordinates [N, 3] turned by its molecule's rotation [B, 3, 3]."""
    return torch.einsum("nij,nj->ni", rotations[graph], x)


class FlowMatching:
    """Training loss and sampler around ``net(batch, noise_conditioning [B]) -> [N, 3]``,
    with the interface of ``EDMDiffusion``. Holds no parameters."""

    def __init__(self, settings: FlowSettings | None = None):
        self.settings = settings or FlowSettings()

    # -- prior -------------------------------------------------------------------------------
    def prior_from_normal(self, batch: Batch, z: torch.Tensor) -> torch.Tensor:
        """Prior draws [N, 3] (Angstrom, centred) from standard normal ``z`` [N, 3]; the map is
        linear per molecule and commutes with rotations."""
        s = self.settings
        graph, num_graphs = batch.batch, batch.num_graphs
        if s.prior == "gaussian":
            return center(z, graph, num_graphs) * s.gaussian_std
        sqrt_cov = harmonic_prior_sqrt(batch, s.bond_length, s.harmonic_eps)
        return apply_padded(sqrt_cov, z, graph, num_graphs)

    def sample_prior(self, batch: Batch, generator: torch.Generator | None = None,
                     dtype=torch.float32) -> torch.Tensor:
        z = torch.randn(batch.batch.shape[0], 3, generator=generator, dtype=dtype)
        return self.prior_from_normal(batch, z.to(batch.batch.device))

    # -- the network -------------------------------------------------------------------------
    def velocity(self, net, batch: Batch, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v_hat [N, 3] (Angstrom per unit time) at x_t [N, 3] (centred) and t [B]."""
        graph, num_graphs = batch.batch, batch.num_graphs
        out = net(with_positions(batch, x_t), t.to(x_t.dtype))
        return center(out, graph, num_graphs) * self.settings.velocity_scale

    def denoise(self, net, batch: Batch, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean estimate x1_hat = x_t + (1 - t) v_hat [N, 3]; t [B] in [0, 1]."""
        v = self.velocity(net, batch, x_t, t)
        return x_t + (1 - t.to(x_t.dtype))[batch.batch].unsqueeze(1) * v

    def sigma_of(self, t: float) -> float:
        """The EDM-like noise level (Angstrom) stereo guidance reads at time t."""
        return math.inf if t <= 0 else self.settings.guidance_sigma_scale * (1 - t) / t

    # -- training ----------------------------------------------------------------------------
    def sample_time(self, num: int, generator=None) -> torch.Tensor:
        s = self.settings
        if s.time_distribution == "uniform":
            return torch.rand(num, generator=generator, dtype=torch.float64)
        normal = torch.randn(num, generator=generator, dtype=torch.float64)
        return torch.sigmoid(s.time_mean + s.time_std * normal)

    def loss(self, net, batch: Batch, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, rotate_data: bool = True) -> torch.Tensor:
        """The flow-matching loss (scalar, Angstrom^2), per molecule then over molecules.

        batch.pos [N, 3]: one clean conformer per molecule (Angstrom). ``generator`` (CPU)
        makes rotations, prior draws, times and noise reproducible (validation).
        """
        s = self.settings
        graph, num_graphs = batch.batch, batch.num_graphs
        x1 = center(batch.pos, graph, num_graphs)
        device, dtype = x1.device, x1.dtype
        if rotate_data:
            x1 = rotate(x1, random_rotations(num_graphs, generator, dtype=dtype).to(device), graph)
        x0 = self.sample_prior(batch, generator, dtype=dtype).to(dtype)
        if s.align:
            x0 = rotate(x0, kabsch_rotations(x0, x1, graph, num_graphs), graph)
        if t is None:
            t = self.sample_time(num_graphs, generator)
        t = t.to(device=device, dtype=dtype)
        t_atom = t[graph].unsqueeze(1)
        x_t = (1 - t_atom) * x0 + t_atom * x1
        if s.path_noise > 0:
            noise = torch.randn(x1.shape, generator=generator, dtype=dtype).to(device)
            x_t = x_t + s.path_noise * center(noise, graph, num_graphs)
        v_hat = self.velocity(net, batch, x_t, t)
        per_atom = ((v_hat - (x1 - x0)) ** 2).mean(dim=1)
        return scatter(per_atom, graph, 0, num_graphs, reduce="mean").mean()

    # -- sampling ----------------------------------------------------------------------------
    def num_evaluations(self, steps: int | None = None, solver: str | None = None) -> int:
        """Network evaluations per sample."""
        steps = steps or self.settings.sample_steps
        solver = solver or self.settings.solver
        return 2 * steps - 1 if solver == "heun" else steps

    @torch.no_grad()
    def sample(self, net, batch: Batch, steps: int | None = None,
               generator: torch.Generator | None = None, solver: str | None = None,
               x_init: torch.Tensor | None = None, guidance=None,
               noise_generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """One conformer per molecule of ``batch``: [N, 3] Angstrom, centred.

        x_init [N, 3]: standard normal draws, turned into prior draws here (None: drawn from
        ``generator``). ``guidance(x1_hat [N, 3], sigma: float) -> [N, 3]`` adjusts every
        clean estimate (see the module docstring for sigma). batch.pos is ignored.
        """
        del noise_generators  # the flow ODE is deterministic
        s = self.settings
        steps = steps or s.sample_steps
        solver = solver or s.solver
        graph, num_graphs = batch.batch, batch.num_graphs
        device = graph.device
        dtype = next((p.dtype for p in net.parameters()), torch.float32)
        if x_init is None:
            x_init = torch.randn(graph.shape[0], 3, generator=generator, dtype=dtype)
        x = self.prior_from_normal(batch, x_init.to(device=device, dtype=dtype))
        ones = torch.ones(num_graphs, dtype=dtype, device=device)
        times = torch.linspace(0, 1, steps + 1, dtype=torch.float64).tolist()

        def drift(x_t, t):
            estimate = self.denoise(net, batch, x_t, ones * t)
            if guidance is not None:
                estimate = guidance(estimate, self.sigma_of(t))
            return (estimate - x_t) / (1 - t)

        for t, t_next in zip(times[:-1], times[1:], strict=True):
            d = drift(x, t)
            x_next = x + (t_next - t) * d
            if solver == "heun" and t_next < 1:
                x_next = x + (t_next - t) * 0.5 * (d + drift(x_next, t_next))
            x = x_next
        return center(x, graph, num_graphs)


__all__ = ["FLOW_TRAINING_KEYS", "FlowMatching", "FlowSettings", "apply_padded",
           "harmonic_prior_sqrt", "kabsch_rotations", "rotate"]
