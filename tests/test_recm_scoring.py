"""RECM's b scored on each branch's output support and on held-out molecules (issue 11,
fixes 1 and 2): float64, CPU, seeded."""

import pytest
import torch
from e3nn import o3
from torch import nn

from conformer.experiments.nbody import NBodyNet, NBodyPreset, equivariance_error, simulate
from conformer.recm import RECMConfig, RECMController, export
from conformer.recm.haar import random_orthogonal, wigner_d
from conformer.recm.layer import (
    ModulatedLayer,
    ReflectionBranch,
    SignalSummary,
    per_molecule_b,
    reflection_support,
)
from conformer.recm.modes import cluster_mean_and_standard_error
from tests.equivariance import single_thread

one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def test_reflection_support_is_derived_from_the_irreps():
    # 0e in -> 0o out, 1o in -> 1e out; nothing reaches 0e, 1o
    mask = reflection_support("2x0e+1x1o", "3x0e+2x0o+1x1e+1x1o")
    assert mask.tolist() == [False] * 3 + [True] * 2 + [True] * 3 + [False] * 3


def aligned_layer(score_on_support: bool, reflection_score: str = "support"):
    """A layer whose reflection branch can write only its 2 0o channels (of 34), and a
    gradient that is exactly -r on them and large on the 32 0e channels."""
    torch.manual_seed(0)
    config = RECMConfig(mode="recm", score_on_support=score_on_support,
                        reflection_score=reflection_score)
    layer = ModulatedLayer(o3.Linear("4x0e", "32x0e+2x0o"), "4x0e", "32x0e+2x0o", config)
    RECMController([layer], config)
    layer = layer.double().train()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    residual = layer.reflection_residual(x).detach()
    assert residual[:, :32].abs().max() == 0 and residual[:, 32:].abs().min() > 0
    grad = torch.randn(10, 34, generator=generator, dtype=torch.float64) * 5
    grad[:, 32:] = -residual[:, 32:]
    y = layer(x, graph=torch.zeros(10, dtype=torch.long))
    (y * grad).sum().backward()  # dL/dy = grad
    (b,) = layer.reflection_state.pending_b
    return float(b)


def test_support_restricted_b_of_a_perfectly_aligned_reflection_branch_is_one():
    assert aligned_layer(score_on_support=True) == pytest.approx(1.0, abs=1e-9)
    # over every channel it is diluted to ~ |r| / |grad| (the bug this fixes)
    assert aligned_layer(score_on_support=False) < 0.2
    # the span score needs no channel mask: the span lies on the support
    assert aligned_layer(False, "span") == pytest.approx(1.0, abs=1e-9)


def test_support_restricted_b_is_odd_under_the_mirror_image():
    """The null: mirroring a molecule (input and gradient) flips the sign of its b exactly,
    so E[b] = 0 when a molecule and its mirror image are equally likely."""
    generator = torch.Generator().manual_seed(0)
    irreps_in, irreps_out = o3.Irreps("3x0e+2x1o+1x0o"), o3.Irreps("4x0e+2x0o+3x1o+1x1e")
    torch.manual_seed(0)
    config = RECMConfig(mode="recm")
    layer = ModulatedLayer(o3.Linear(irreps_in, irreps_out), irreps_in, irreps_out, config)
    layer = layer.double()
    support = layer._reflection_support
    assert 0 < int(support.sum()) < irreps_out.dim
    x = torch.randn(12, irreps_in.dim, generator=generator, dtype=torch.float64)
    grad = torch.randn(12, irreps_out.dim, generator=generator, dtype=torch.float64)
    graph = torch.arange(3).repeat_interleave(4)
    mirror = -torch.eye(3, dtype=torch.float64) @ random_orthogonal(generator,
                                                                    reflections=False)
    d_in, d_out = wigner_d(irreps_in, mirror), wigner_d(irreps_out, mirror)
    b, _ = per_molecule_b(grad, layer.reflection_residual(x), graph, channels=support)
    b_mirror, _ = per_molecule_b(grad @ d_out.T, layer.reflection_residual(x @ d_in.T), graph,
                                 channels=support)
    assert b.abs().min() > 1e-3
    assert torch.allclose(b_mirror, -b, atol=1e-12)


# -- held-out scoring on an exactly O(3)-symmetric target ----------------------------------
SYMMETRIC = NBodyPreset(num_train=48, num_test=16, integration_steps=20,
                        hidden_irreps="8x0e+2x0o+4x1o+4x1e", batch_size=24, learning_rate=3e-3)
SHORT = dict(absorb_after_steps=200, stats_window=200, patience=20, min_samples=50,
             beta=0.05)


def train_nbody(steps: int, **recm) -> tuple[NBodyNet, tuple]:
    """N-body at eps = 0 on a small training set the branches can over-fit (float64)."""
    generator = torch.Generator().manual_seed(0)
    train = simulate(SYMMETRIC.num_train, 0.0, SYMMETRIC, generator)
    test = simulate(SYMMETRIC.num_test, 0.0, SYMMETRIC, generator)
    torch.manual_seed(0)
    net = NBodyNet(SYMMETRIC, RECMConfig(mode="recm", seed=0, **{**SHORT, **recm})).double()
    optimizer = torch.optim.Adam(net.parameters(), lr=SYMMETRIC.learning_rate)
    batches = torch.Generator().manual_seed(1)
    net.train()
    for step in range(steps):
        index = torch.randint(0, SYMMETRIC.num_train, (SYMMETRIC.batch_size,),
                              generator=batches)
        pos, vel, charge, target = (t[index] for t in train)
        net.recm.hold_out(index)
        loss = (net(pos, vel, charge) - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        net.recm.after_optimizer_step((step + 1) / steps)
    return net, test


@pytest.mark.parametrize("heldout_every", [4, 0])
def test_held_out_b_is_unbiased_under_exact_symmetry_and_every_branch_is_absorbed(
        heldout_every):
    """Held-out b: no positive bias (mean at most 3 standard errors above 0), every branch
    absorbed with margin 0, export O(3)-equivariant. The control (b on the molecules the
    branches fit, margin 0) keeps a branch: that is the bias held-out scoring removes.

    Magnitude-weighted b is the derivative of the loss along the branch at the current
    gamma, so under exact symmetry it is 0 at gamma = 0 and negative at gamma > 0 (the
    branch's own curvature term): it may sit well below 0, never above."""
    # the control with per-molecule b (sessions 6-11): magnitude-weighted b on fitted
    # molecules also carries the curvature term, which can hide the bias this test shows
    control = {} if heldout_every else dict(b_weighting="molecule", reflection_score="support")
    net, test = train_nbody(400, heldout_every=heldout_every, gap_margin=0.0, **control)
    dropped = net.recm.branch_dropped()
    absorbed = all(dropped["rotation"]) and all(dropped["reflection"])
    if heldout_every == 0:
        assert not absorbed
        return
    for _, _, state in net.recm.branch_states():
        mean, stderr = cluster_mean_and_standard_error(state)
        assert mean <= 3 * stderr, (mean, stderr)  # 0 = 0 for a branch nothing reads
    assert absorbed
    assert equivariance_error(export(net), *test[:3]) < 1e-6


# -- a reflection-breaking target: a handed displacement from an even label ------------------
class HandedToy(nn.Module):
    """Layer 0 (modulated): even node scalars -> ``128x0e+1x0o``; only its reflection branch
    can write the 0o channel (1 of 129, as at the denoiser's layer 0). Head (equivariant):
    that output times (u, w = u x v) -> 1o. The target ``0.3 label w + 0.5 u`` (label even,
    w a pseudovector) is rotation-equivariant but reflection-breaking: it needs a
    pseudoscalar made from the even label."""

    HIDDEN = o3.Irreps("128x0e+1x0o")

    def __init__(self, config: RECMConfig):
        super().__init__()
        self.layer = ModulatedLayer(o3.Linear("4x0e", self.HIDDEN), "4x0e", self.HIDDEN,
                                    config, irreps_free_in="4x0e+1x1o")
        self.head = o3.FullyConnectedTensorProduct(self.HIDDEN, "1x1o+1x1e", "1x1o")
        self.recm = RECMController([self.layer], config)

    def forward(self, scalars, u, w, graph):
        h = self.layer(scalars, free_input=torch.cat([scalars, u], -1), graph=graph)
        return self.head(h, torch.cat([u, w], -1))


def handed_data(molecules: int, atoms: int, generator):
    label = torch.randint(0, 2, (molecules,), generator=generator).double() * 2 - 1
    u = torch.randn(molecules * atoms, 3, generator=generator, dtype=torch.float64)
    v = torch.randn(molecules * atoms, 3, generator=generator, dtype=torch.float64)
    w = torch.cross(u, v, dim=-1)
    graph = torch.arange(molecules).repeat_interleave(atoms)
    target = 0.3 * label[graph, None] * w + 0.5 * u
    return label, u, w, graph, target


def train_handed(steps: int, **recm) -> HandedToy:
    """Noisy targets (fresh noise of sd 2 per step, as diffusion training has) make the
    gradient large on every channel, so b over every channel is diluted under 0.01."""
    molecules, atoms, batch, noise = 1024, 3, 16, 2.0
    generator = torch.Generator().manual_seed(0)
    label, u, w, graph, target = handed_data(molecules, atoms, generator)
    torch.manual_seed(0)
    settings = dict(absorb_after_steps=1100, stats_window=400, patience=20, min_samples=50,
                    beta=0.05)
    net = HandedToy(RECMConfig(mode="recm", seed=0, **{**settings, **recm})).double().train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(steps):
        picks = torch.randint(0, molecules, (batch,), generator=generator)
        rows = torch.cat([torch.arange(m * atoms, (m + 1) * atoms) for m in picks.tolist()])
        rotation = random_orthogonal(generator, reflections=False)  # augmentation
        local_graph = torch.arange(batch).repeat_interleave(atoms)
        scalars = torch.stack([label[graph[rows]], torch.ones(rows.numel(), dtype=torch.float64),
                               u[rows].norm(dim=-1), w[rows].norm(dim=-1)], -1)
        net.recm.hold_out(picks)
        prediction = net(scalars, u[rows] @ rotation.T, w[rows] @ rotation.T, local_graph)
        noisy = target[rows] + noise * torch.randn(rows.numel(), 3, generator=generator,
                                                   dtype=torch.float64)
        loss = (prediction - noisy @ rotation.T).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        net.recm.after_optimizer_step((step + 1) / steps)
    return net


@pytest.mark.parametrize("new_scoring", [True, False])
def test_a_handed_target_keeps_the_reflection_branch_and_absorbs_the_rotation_branch(
        new_scoring):
    """With b on the support and on held-out molecules (margin 0) the reflection branch is
    kept (gamma > 0) and the rotation branch absorbed; the old scoring (every channel,
    training molecules, margin 0.01) absorbs both."""
    old = dict(score_on_support=False, heldout_every=0, reflection_score="support",
               b_weighting="molecule")
    net = train_handed(1300, **({} if new_scoring else old))
    dropped = net.recm.branch_dropped()
    gammas = net.recm.branch_gammas()
    assert dropped["rotation"] == [True]
    if new_scoring:
        assert dropped["reflection"] == [False] and gammas["reflection"][0] > 0
    else:
        assert dropped["reflection"] == [True]


@pytest.mark.parametrize("point", ["equivariant", "current"])
def test_held_out_molecules_train_no_branch_and_probes_see_none(point):
    """Held-out molecules pass no gradient into a branch. ``equivariant``: every other one is
    a probe that sees no branch (its output is the trunk's) and is the absorbing test's
    molecule, the others drive the update at the current gamma; ``current``: every held-out
    molecule sees the branches and drives both."""
    torch.manual_seed(0)
    config = RECMConfig(mode="recm", heldout_every=2, heldout_point=point)
    irreps = o3.Irreps("2x0e+1x1o")
    layer = ModulatedLayer(o3.Linear(irreps, "2x0e+1x0o+1x1o"), irreps, "2x0e+1x0o+1x1o",
                           config)
    controller = RECMController([layer], config)
    layer = layer.double().train()
    for state in (layer.state, layer.reflection_state):
        state.gamma.fill_(0.5)
    x = torch.randn(9, irreps.dim, dtype=torch.float64)
    graph = torch.arange(3).repeat_interleave(3)
    # keys 4 (4 // 2 even: the probe), 6 (held out, 6 // 2 odd), 7 (trains the branches)
    keys = torch.tensor([4, 6, 7])
    trunk = layer.layer(x).detach()
    for molecule, trains_branches in ((0, False), (1, False), (2, True)):
        rows = graph == molecule
        layer.zero_grad()
        controller.hold_out(keys)
        y = layer(x, graph=graph)
        sees_branches = [not torch.allclose(y[graph == m], trunk[graph == m], atol=1e-12)
                         for m in range(3)]
        assert sees_branches == [point == "current", True, True]
        y[rows].pow(2).sum().backward()
        grads = [p.grad for p in [*layer.free.parameters(), *layer.reflection.parameters()]]
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == trains_branches
        summary, _ = layer.state.take_summary()
        assert summary.heldout
        # clusters with evidence (a molecule with no gradient this backward weighs 0)
        others = torch.ones(summary.cluster_counts.numel(), dtype=torch.bool)
        if point == "equivariant":  # the update's b is molecule 1's, the test's molecule 0's
            assert summary.count == 1
            others[2] = False
        else:  # molecules 0 and 1 both (clusters 4 // 2 and 6 // 2)
            assert summary.count == 2
            others[2:4] = False
            assert summary.mean == pytest.approx(
                float(summary.cluster_sums.sum() / summary.cluster_counts.sum()))
        assert summary.cluster_counts[others].abs().sum() == 0
        layer.reflection_state.take_summary()
        controller.after_optimizer_step(0.5)
    with pytest.raises(ValueError, match="integer"):
        controller.hold_out(torch.tensor([0.5, 1.0]))


def test_a_step_with_only_tested_molecules_still_feeds_the_absorbing_test():
    summary = SignalSummary.of([torch.zeros(0, dtype=torch.float64)], [None], [None],
                               tested=[(torch.tensor([0.5, -0.1], dtype=torch.float64),
                                        torch.tensor([3, 4]), None)])
    assert summary.count == 0 and summary.heldout
    assert summary.cluster_sums[3] == pytest.approx(0.5)
    assert summary.cluster_counts.sum() == pytest.approx(2.0)
    config = RECMConfig(mode="recm")
    layer = ModulatedLayer(o3.Linear("2x0e", "2x0e"), "2x0e", "2x0e", config)
    layer.state.step.fill_(1)
    config.policy.update(layer.state, config, 0.5, summary, None)
    assert float(layer.state.gamma) == 0.0 and int(layer.state.b_count) == 0
    assert float(layer.state.b_cluster_sum[3]) == pytest.approx(0.5)


def test_reflection_branch_can_read_the_pseudo_inputs_only():
    """reflection_inputs='pseudo': the branch ignores the even inputs (its residual is zero
    on rows without pseudo input), stays rotation-equivariant and reflection-odd, and its
    support is what those inputs can reach."""
    from conformer.recm.layer import branch_inputs

    irreps_in, irreps_out = "3x0e+1x0o+1x1o+1x1e", "2x0e+2x0o+2x1o+2x1e"
    read, columns = branch_inputs(irreps_in, "pseudo")
    assert str(read) == "1x0o+1x1e" and columns.tolist() == [3, 7, 8, 9]
    torch.manual_seed(0)
    config = RECMConfig(mode="recm", reflection_inputs="pseudo", support_atoms=True)
    layer = ModulatedLayer(o3.Linear(irreps_in, irreps_out), irreps_in, irreps_out, config)
    layer = layer.double()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(6, o3.Irreps(irreps_in).dim, generator=generator, dtype=torch.float64)
    x[3:, columns] = 0.0  # rows 3-5 carry even and 1o inputs only
    residual = layer.reflection_residual(x)
    assert residual[3:].abs().max() == 0 and residual[:3].abs().max() > 1e-3
    assert layer._reflection_support.tolist() == reflection_support(read, irreps_out).tolist()
    for rotation in (random_orthogonal(generator, torch.float64, reflections=False),
                     -torch.eye(3, dtype=torch.float64)):
        moved = layer.reflection(x @ wigner_d(irreps_in, rotation).T)
        sign = float(torch.det(rotation))  # odd under the reflection
        expected = sign * layer.reflection(x) @ wigner_d(irreps_out, rotation).T
        assert torch.allclose(moved, expected, atol=1e-12)
    with pytest.raises(ValueError, match="reflection_inputs"):
        RECMConfig(reflection_inputs="odd")


# -- the span score and magnitude weighting (session 12) ------------------------------------
SPAN_IN, SPAN_OUT = o3.Irreps("8x0e+1x0o+1x1e"), o3.Irreps("2x0o+8x0e+4x1o+4x1e")


def span_branch():
    torch.manual_seed(0)
    return ReflectionBranch(SPAN_IN, SPAN_OUT).double()


def test_followable_norm_is_the_projection_onto_everything_the_branch_can_write():
    """|P grad|^2 per molecule equals the least-squares projection of grad onto the columns
    of the branch's Jacobian in its weights (the branch is linear in them)."""
    branch = span_branch()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(30, SPAN_IN.dim, generator=generator, dtype=torch.float64)
    grad = torch.randn(30, SPAN_OUT.dim, generator=generator, dtype=torch.float64)
    graph = torch.tensor([0] * 12 + [1] * 18)
    followable = branch.followable_sq(x, grad, graph, 2)
    weights = branch.linear.weight.detach().clone()
    for molecule in range(2):
        rows = graph == molecule
        jacobian = torch.autograd.functional.jacobian(
            lambda w, rows=rows: torch.func.functional_call(
                branch, {"linear.weight": w}, (x,))[rows].reshape(-1), weights)
        solution = torch.linalg.lstsq(jacobian, grad[rows].reshape(-1, 1)).solution
        projected = jacobian @ solution
        assert float(followable[molecule]) == pytest.approx(float(projected.pow(2).sum()),
                                                            rel=1e-9)
        assert float(followable[molecule]) < float(grad[rows].pow(2).sum())
    # a molecule none of whose rows carries an input the branch reads has nothing to follow
    assert float(branch.followable_sq(torch.zeros_like(x), grad, graph, 2).abs().max()) == 0


def test_span_b_is_one_for_a_branch_pointing_where_the_loss_wants_despite_noise():
    """grad = -r plus noise the branch cannot write (here: every even channel and the
    parts of the odd ones outside the span): the span score is 1, the support cosine
    diluted."""
    branch = span_branch()
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(20, SPAN_IN.dim, generator=generator, dtype=torch.float64)
    graph = torch.zeros(20, dtype=torch.long)
    residual = branch(x).detach()
    noise = torch.randn(20, SPAN_OUT.dim, generator=generator, dtype=torch.float64) * 3
    # remove the part of the noise the branch could follow (least squares on its Jacobian)
    weights = branch.linear.weight.detach().clone()
    jacobian = torch.autograd.functional.jacobian(
        lambda w: torch.func.functional_call(branch, {"linear.weight": w}, (x,)).reshape(-1),
        weights)
    followable = jacobian @ torch.linalg.lstsq(jacobian, noise.reshape(-1, 1)).solution
    grad = -residual + noise - followable.reshape(noise.shape)
    span = branch.followable_sq(x, grad, graph, 1)
    b_span, _ = per_molecule_b(grad, residual, graph, grad_norm_sq=span)
    b_support, _ = per_molecule_b(grad, residual, graph,
                                  channels=reflection_support(SPAN_IN, SPAN_OUT))
    assert float(b_span) == pytest.approx(1.0, abs=1e-9)
    assert float(b_support) < 0.5


def test_span_b_flips_and_its_weight_stays_under_the_mirror_image():
    """The null: a molecule and its mirror image have opposite span b and equal weights
    (so the magnitude-weighted mean is 0 when both are equally likely); a proper rotation
    changes neither."""
    branch = span_branch()
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(15, SPAN_IN.dim, generator=generator, dtype=torch.float64)
    grad = torch.randn(15, SPAN_OUT.dim, generator=generator, dtype=torch.float64)
    graph = torch.arange(3).repeat_interleave(5)

    def scored(matrix):
        d_in, d_out = wigner_d(SPAN_IN, matrix), wigner_d(SPAN_OUT, matrix)
        moved_x, moved_grad = x @ d_in.T, grad @ d_out.T
        span = branch.followable_sq(moved_x, moved_grad, graph, 3)
        return per_molecule_b(moved_grad, branch(moved_x).detach(), graph,
                              grad_norm_sq=span, with_norms=True)

    b, _, weight = scored(torch.eye(3, dtype=torch.float64))
    rotation = random_orthogonal(generator, reflections=False)
    b_rotated, _, weight_rotated = scored(rotation)
    b_mirror, _, weight_mirror = scored(-rotation)
    assert b.abs().min() > 1e-3
    assert torch.allclose(b_rotated, b, atol=1e-10)
    assert torch.allclose(b_mirror, -b, atol=1e-10)
    assert torch.allclose(weight_mirror, weight, rtol=1e-10)
    assert torch.allclose(weight_rotated, weight, rtol=1e-10)


def test_magnitude_weighted_summary_is_the_ratio_of_sums():
    """Many small negative cosines and one large positive one: per molecule the mean is
    negative, weighted by magnitude it is the sign of the summed inner products."""
    b = torch.tensor([-0.2, -0.2, -0.2, 0.5], dtype=torch.float64)
    weights = torch.tensor([1.0, 1.0, 1.0, 10.0], dtype=torch.float64)
    clusters = torch.tensor([0, 1, 1, 2])
    plain = SignalSummary.of([b])
    weighted = SignalSummary.of([b], [clusters], [weights])
    assert plain.mean == pytest.approx(-0.025) and plain.weight is None
    assert weighted.mean == pytest.approx((-0.6 + 5.0) / 13.0)
    assert weighted.total_weight == pytest.approx(13.0) and weighted.count == 4
    assert weighted.cluster_sums[:3].tolist() == pytest.approx([-0.2, -0.4, 5.0])
    assert weighted.cluster_counts[:3].tolist() == pytest.approx([1.0, 2.0, 10.0])
    # nothing to follow anywhere: b = 0 counted alike (evidence of no gap), not dropped
    empty = SignalSummary.of([torch.zeros(3, dtype=torch.float64)], None,
                             [torch.zeros(3, dtype=torch.float64)])
    assert empty is not None and empty.mean == 0 and empty.weight is None


def test_gamma_update_weighs_each_step_by_its_weight():
    """Two steps, b = +0.5 with weight 3 then -0.5 with weight 1. The signal of a step is
    its b times its weight over the running mean step weight: 0.5 (the first step is its
    own mean), then -0.5 * 1 / 2 = -0.25, so the light step moves gamma half as far as an
    unweighted mean would (whose two signals cancel)."""
    config = RECMConfig(mode="recm", beta=1.0, gamma_max=4.0)
    layer = ModulatedLayer(o3.Linear("2x0e", "2x0e"), "2x0e", "2x0e", config)
    controller = RECMController([layer], config)
    state = layer.state
    signals = []
    for value, weight in ((0.5, 3.0), (-0.5, 1.0)):
        state.record_signals(torch.tensor([value], dtype=torch.float64),
                             torch.tensor(0.0, dtype=torch.float64), None,
                             torch.tensor([weight], dtype=torch.float64))
        controller.after_optimizer_step(0.5)
        signals.append(float(layer.state.gamma) / config.gamma_max)  # beta 1: gamma = 4 s
    # step 1: running step weight 3, signal 0.5; step 2: running weight (3 + 1) / 2 = 2,
    # signal -0.5 * 1 / 2 = -0.25; the running mean of the signals is (0.5 - 0.25) / 2
    assert signals[0] == pytest.approx(0.5)
    assert signals[1] == pytest.approx(0.0)  # clipped at 0: -0.25 * 4 < 0
    assert float(state.b_mean) == pytest.approx((0.5 - 0.25) / 2)


def test_reflection_score_and_weighting_are_checked():
    with pytest.raises(ValueError, match="reflection_score"):
        RECMConfig(reflection_score="cosine")
    with pytest.raises(ValueError, match="b_weighting"):
        RECMConfig(b_weighting="atoms")


@pytest.mark.parametrize("mean,stderr,not_significant,shown_small", [
    (0.05, 0.01, False, False),   # a clear gap: both keep it
    (0.01, 0.02, True, False),    # uncertain: the default absorbs, shown-small keeps
    (-0.01, 0.002, True, True),   # shown to be small: both absorb
])
def test_absorb_rules_on_held_out_statistics(mean, stderr, not_significant, shown_small):
    """The two absorbing rules on a state whose cluster-robust mean and standard error are
    set by hand (two clusters of equal weight: m = (a + b) / 2, stderr = |a - b| / 2)."""
    from conformer.recm.layer import RECMState
    from conformer.recm.modes import absorbing_test_passes

    for rule, expected in (("not-significant", not_significant), ("shown-small", shown_small)):
        config = RECMConfig(mode="recm", absorb_rule=rule, absorb_after_steps=0, min_samples=1)
        state = RECMState(config)
        state.step.fill_(10)
        state.b_count.fill_(100)
        state.b_cluster_weight[:2] = 1.0
        state.b_cluster_sum[0] = mean + stderr
        state.b_cluster_sum[1] = mean - stderr
        assert cluster_mean_and_standard_error(state) == pytest.approx((mean, stderr))
        assert absorbing_test_passes(state, config) == expected, rule


def test_absorb_rule_options_are_checked():
    with pytest.raises(ValueError, match="absorb_rule"):
        RECMConfig(absorb_rule="never")
    with pytest.raises(ValueError, match="equivalence_margin"):
        RECMConfig(equivalence_margin=0.0)


@pytest.mark.parametrize("gate", ["significant", "always"])
def test_gamma_follows_b_only_while_the_held_out_test_shows_a_gap(gate):
    """gamma_gate significant: the same positive update signal raises gamma only when the
    tested molecules' b shows a gap (t above the normal quantile); 'always' raises it either
    way."""
    config = RECMConfig(mode="recm", gamma_gate=gate, beta=0.1)
    policy = config.policy
    grown = {}
    for shown, tested_b in (("gap", 0.3), ("no gap", 0.0)):
        layer = ModulatedLayer(o3.Linear("2x0e", "2x0e"), "2x0e", "2x0e", config)
        state = layer.state
        generator = torch.Generator().manual_seed(0)
        for step in range(1, 21):
            state.step.fill_(step)
            tested = tested_b + 0.05 * torch.randn(32, generator=generator, dtype=torch.float64)
            summary = SignalSummary.of([torch.full((4,), 0.5, dtype=torch.float64)],
                                       tested=[(tested, torch.arange(32), None)])
            policy.update(state, config, step / 20, summary, None)
        grown[shown] = float(state.gamma)
    assert grown["gap"] > 0.5
    if gate == "significant":
        assert grown["no gap"] == 0.0
    else:
        assert grown["no gap"] == pytest.approx(grown["gap"])


def test_surrogate_branches_are_clipped_apart_from_the_trunk():
    """A branch's surrogate gradient (gamma = 1) is often far larger than the trunk's: one
    clip over both would shrink the trunk's step; apart, the trunk's small gradient stays."""
    torch.manual_seed(0)
    for mode, apart in (("recm", True), ("unconstrained", False)):
        config = RECMConfig(mode=mode)
        layer = ModulatedLayer(o3.Linear("2x0e+1x1o", "2x0e+1x0o+1x1o"), "2x0e+1x1o",
                               "2x0e+1x0o+1x1o", config)
        controller = RECMController([layer], config)
        branches = {id(p) for p in controller.surrogate_parameters()}
        assert bool(branches) == apart
        for parameter in layer.parameters():
            is_branch = any(parameter is p for p in layer.free.parameters())
            parameter.grad = torch.full_like(parameter, 100.0 if is_branch else 1e-3)
        trunk = [p for p in layer.layer.parameters()]
        before = [p.grad.clone() for p in trunk]
        controller.clip_grad_norm_(layer.parameters(), 1.0)
        unchanged = all(torch.equal(p.grad, g) for p, g in zip(trunk, before, strict=True))
        assert unchanged == apart
        free_norm = torch.norm(torch.stack([p.grad.norm() for p in layer.free.parameters()]))
        assert float(free_norm) <= 1.0 + 1e-6
