"""RECM: modulated layers, Haar projection, recurrent update, absorbing zero, modes, state."""

import io
import threading

import pytest
import torch
from e3nn import o3
from torch import nn

from conformer.recm import (
    MODES,
    RECMConfig,
    RECMController,
    RECMState,
    controller_of,
    export,
    mode_policy,
)
from conformer.recm.haar import random_orthogonal, wigner_d
from conformer.recm.layer import ModulatedLayer
from tests.equivariance import max_equivariance_error, single_thread

IRREPS_IN = o3.Irreps("3x0e+1x0o+2x1o+1x1e")
IRREPS_OUT = o3.Irreps("2x0e+2x1o+1x1e")


one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


class Toy(nn.Module):
    """One modulated e3nn linear layer and a controller: [N, 3] vectors -> [N, 3] vectors."""

    def __init__(self, config: RECMConfig):
        super().__init__()
        self.layer = ModulatedLayer(o3.Linear("1x1o", "1x1o"), "1x1o", "1x1o", config)
        self.recm = RECMController([self.layer], config)

    def forward(self, x):
        return self.layer(x)


def modulated_linear(mode: str, **overrides) -> ModulatedLayer:
    torch.manual_seed(0)
    config = RECMConfig(mode=mode, **overrides)
    layer = ModulatedLayer(o3.Linear(IRREPS_IN, IRREPS_OUT), IRREPS_IN, IRREPS_OUT, config)
    RECMController([layer], config)
    return layer.double()


def features(n=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, IRREPS_IN.dim, generator=generator, dtype=torch.float64)


def test_wigner_d_is_a_representation_matching_e3nn():
    generator = torch.Generator().manual_seed(0)
    irreps = o3.Irreps("0e+0o+1o+1e+2e+2o")
    a, b = (random_orthogonal(generator) for _ in range(2))
    assert torch.allclose(wigner_d(irreps, a @ b), wigner_d(irreps, a) @ wigner_d(irreps, b),
                          atol=1e-13)
    for rotation in (a, -a):
        assert torch.allclose(wigner_d(irreps, rotation), irreps.D_from_matrix(rotation),
                              atol=1e-5)


def test_random_orthogonal_draws_reflections():
    generator = torch.Generator().manual_seed(1)
    dets = [float(torch.det(random_orthogonal(generator))) for _ in range(40)]
    assert all(abs(abs(d) - 1) < 1e-12 for d in dets)
    assert min(dets) < 0 < max(dets)


@pytest.mark.parametrize("mode", ["equivariant", "recm", "scheduled", "ace"])
def test_layer_equivariant_when_branch_is_off(mode):
    layer = modulated_linear(mode)
    if mode != "equivariant":
        layer.state.gamma.zero_()
        layer = export(layer)
    assert layer.free is None
    inputs = {"x": (features(), IRREPS_IN)}
    assert max_equivariance_error(layer, inputs, IRREPS_OUT, translate=False) < 1e-12


def test_unconstrained_layer_is_not_equivariant():
    layer = modulated_linear("unconstrained")
    inputs = {"x": (features(), IRREPS_IN)}
    assert max_equivariance_error(layer, inputs, IRREPS_OUT, translate=False) > 1e-3


def test_free_branch_is_rescaled_to_the_equivariant_output():
    layer = modulated_linear("unconstrained")
    x = features()
    y_eq = layer.layer(x)
    branch = layer(x) - y_eq  # gamma = 1: the branch alone, after n(.)
    assert torch.allclose(branch.pow(2).mean().sqrt(), y_eq.pow(2).mean().sqrt())


def test_haar_projection_leaves_no_residual_for_an_equivariant_branch():
    layer = modulated_linear("recm")
    layer.free = o3.Linear(IRREPS_IN, IRREPS_OUT).double()  # an equivariant "free" map
    x = features()
    assert torch.allclose(layer.projected(x), layer.free(x), atol=1e-12)
    layer.free = nn.Linear(IRREPS_IN.dim, IRREPS_OUT.dim).double()
    assert (layer.projected(x) - layer.free(x)).abs().max() > 1e-2


def test_scheduled_branch_is_dropped_at_test_time_and_penalised_in_training():
    layer = modulated_linear("scheduled")
    layer.state.gamma.fill_(0.7)
    x = features()
    layer.eval()
    assert torch.equal(layer(x), layer.layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer.layer(x))
    controller = RECMController([layer], layer.config)
    assert float(controller.regularization_loss().detach()) > 0
    controller.after_optimizer_step(0.25)
    assert controller.gammas() == [0.5]  # triangular 0 -> 1 -> 0


def feed(controller, values, key="b", progress=0.5):
    """One optimiser step per value, each recording it as every layer's b (or dJ/dgamma)."""
    for value in values:
        signal = torch.tensor(float(value), dtype=torch.float64)
        for state in controller.states:
            if key == "b":
                state.pending_b.append(signal)
            else:
                state.pending_dgamma.append(signal)
        controller.after_optimizer_step(progress)


def feed_molecules(controller, steps, mean, spread, molecules=16, seed=0):
    """``steps`` optimiser steps, each recording ``molecules`` per-molecule b values drawn
    from N(mean, spread^2) as every branch's b."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        values = mean + spread * torch.randn(molecules, generator=generator, dtype=torch.float64)
        for _, _, state in controller.branch_states():
            state.pending_b.append(values)
        controller.after_optimizer_step(0.5)


def test_recm_update_tracks_fixed_point_and_absorbs_zero():
    config = RECMConfig(mode="recm")
    controller = Toy(config).recm
    state = controller.states[0]
    # exact symmetry: b has mean 0 -> never absorbed before `absorb_after_steps` ...
    feed_molecules(controller, config.absorb_after_steps - 1, 0.0, 0.3)
    assert not bool(state.dropped) and int(state.b_count) == 16 * (config.absorb_after_steps - 1)
    # ... then the test finds no gap, the layer is absorbed and stays at 0
    feed_molecules(controller, 3 * config.patience, 0.0, 0.3, seed=1)
    assert bool(state.dropped) and controller.gammas() == [0.0]
    feed(controller, [0.9] * 50)  # an absorbed layer never comes back
    assert controller.gammas() == [0.0]
    # a useful non-equivariant direction: gamma goes to gamma_max * E[b], no absorption
    controller = Toy(config).recm
    feed(controller, (0.2 + 0.05 * torch.randn(2500, generator=torch.Generator().manual_seed(0)
                                               )).tolist())
    assert not bool(controller.states[0].dropped)
    assert abs(controller.gammas()[0] - config.gamma_max * 0.2) < 0.05


@pytest.mark.parametrize("gap, kept", [(0.026, True), (0.004, False)])
def test_a_gap_significantly_above_the_margin_is_kept_and_one_below_it_absorbed(gap, kept):
    """+0.026: a perfect handedness direction on chiral molecules; its fixed point
    gamma_max * 0.026 is positive and the test keeps it. +0.004 (finite-sample bias size,
    under the margin) ends absorbed, gamma exactly 0."""
    config = RECMConfig(mode="recm")
    controller = Toy(config).recm
    feed_molecules(controller, config.absorb_after_steps + 5 * config.patience, gap, 0.3)
    state = controller.states[0]
    assert bool(state.dropped) != kept
    assert (float(state.gamma) > 0) == kept


def test_significance_level_sets_the_one_sided_quantile():
    assert RECMConfig(significance_level=0.01).significance_z == pytest.approx(2.326, abs=1e-3)
    assert RECMConfig(significance_level=0.05).significance_z == pytest.approx(1.645, abs=1e-3)
    with pytest.raises(ValueError, match="significance_level"):
        RECMConfig(significance_level=0.7)


def test_ace_primal_dual_update():
    config = RECMConfig(mode="ace")
    controller = Toy(config).recm
    feed(controller, [0.0] * 20, key="dgamma")
    state = controller.states[0]
    assert 0 < float(state.gamma) < 1 and float(state.dual) > 0  # the dual pushes gamma to 0


def train_toy(model, steps, eps, start=0, optimizer=None):
    """Fit y = 2 x + eps * e_z on random vectors; returns the optimizer."""
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(step)
        x = torch.randn(64, 3, generator=generator)
        target = 2 * x + eps * torch.tensor([0.0, 0.0, 1.0])
        loss = (model(x) - target).pow(2).mean() + model.recm.regularization_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.recm.after_optimizer_step((step + 1) / 400)
    return optimizer


def test_gamma_grows_only_with_a_symmetry_gap():
    gammas = {}
    for eps in (0.0, 1.0):
        torch.manual_seed(0)
        model = Toy(RECMConfig(mode="recm", beta=0.05))
        train_toy(model, 300, eps)
        gammas[eps] = model.recm.gammas()[0]
    assert gammas[0.0] < 0.05 < gammas[1.0]


def test_state_round_trips_and_resumed_run_continues_the_same_trajectory():
    config = RECMConfig(mode="recm", beta=0.05)
    torch.manual_seed(0)
    straight = Toy(config)
    train_toy(straight, 60, 1.0)

    torch.manual_seed(0)
    first = Toy(config)
    optimizer = train_toy(first, 35, 1.0)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    assert "layer.state.gamma" in checkpoint["model"]

    torch.manual_seed(123)  # a fresh process: different initial weights before loading
    resumed = Toy(config)
    resumed.load_state_dict(checkpoint["model"])
    for name, value in first.layer.state.state_dict().items():
        assert torch.equal(resumed.layer.state.state_dict()[name], value), name
    optimizer = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    optimizer.load_state_dict(checkpoint["optimizer"])
    train_toy(resumed, 25, 1.0, start=35, optimizer=optimizer)
    assert resumed.recm.gammas() == straight.recm.gammas()
    assert int(resumed.recm.states[0].step) == 60


def test_controller_log_dict_and_regularizer_shapes():
    model = Toy(RECMConfig(mode="recm", reg_weight=0.1))
    model.recm.states[0].gamma.fill_(0.5)  # the penalty scales with gamma^2
    x = torch.randn(8, 3)
    model(x).pow(2).sum().backward()
    penalty = model.recm.regularization_loss()
    assert penalty.shape == () and float(penalty) > 0
    logs = model.recm.log_dict()
    assert set(logs) >= {"recm/gamma_0", "recm/dropped_0", "recm/b_mean_0"}


def test_export_after_a_training_step_with_a_penalty():
    model = Toy(RECMConfig(mode="scheduled"))
    train_toy(model, 2, 1.0)
    assert export(model).layer.free is None


def test_outputs_do_not_depend_on_the_rest_of_the_batch():
    layer = modulated_linear("unconstrained")
    layer.train()
    for seed in range(3):  # a few training forwards set the running normalisation
        layer(features(seed=seed))
    layer.eval()
    x = features(n=16, seed=7)
    with torch.no_grad():
        alone = layer(x[:4])
        together = layer(torch.cat([x[:4], 10 * x[4:]]))[:4]
    assert torch.allclose(alone, together, atol=1e-12)


def test_recm_trunk_gradient_is_the_true_gradient_of_the_output():
    """The branch's surrogate gradient (as if gamma = 1) must not reach the layers below:
    what flows into the input is gamma times the branch's gradient."""
    x = features().requires_grad_(True)
    target = torch.randn(16, IRREPS_OUT.dim, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(3))
    layer = modulated_linear("recm")
    layer.train()
    layer.state.gamma.fill_(0.25)
    (layer(x) - target).pow(2).sum().backward()
    surrogate = x.grad.clone()
    # the same value computed plainly, with the branch's normalisation frozen
    x.grad = None
    scale = layer.free_scale.clone()
    layer.eval()
    y = layer.layer(x) + 0.25 * layer.free(x) * scale
    (y - target).pow(2).sum().backward()
    assert torch.allclose(surrogate, x.grad, atol=1e-10)
    # and the branch's own parameters still learn at gamma = 0
    layer.train()
    layer.state.gamma.zero_()
    layer.zero_grad()
    (layer(x) - target).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.free.parameters())


# -- per-mode behaviour in one place -------------------------------------------------------
def test_every_mode_is_one_policy_and_an_unknown_mode_is_named():
    assert MODES == ("equivariant", "unconstrained", "scheduled", "ace", "recm")
    for mode in MODES:
        assert RECMConfig(mode=mode).policy is mode_policy(mode)
        assert mode_policy(mode).name == mode
    with pytest.raises(ValueError, match="'magic'.*equivariant, unconstrained"):
        RECMConfig(mode="magic")


@pytest.mark.parametrize("mode, initial_gamma, has_branch, active_in_eval, kept_at_half", [
    ("equivariant", 0.0, False, False, False),
    ("unconstrained", 1.0, True, True, True),
    ("scheduled", 0.0, True, False, False),
    ("ace", 1.0, True, True, True),
    ("recm", 0.0, True, True, True),
])
def test_mode_table(mode, initial_gamma, has_branch, active_in_eval, kept_at_half):
    layer = modulated_linear(mode)
    assert float(layer.state.gamma) == initial_gamma
    assert (layer.free is not None) == has_branch
    layer.eval()
    assert layer.branch_active() == active_in_eval
    layer.state.gamma.fill_(0.5)
    assert (export(layer).free is not None) == kept_at_half


# -- state registered on its layer ---------------------------------------------------------
def test_state_is_in_the_layers_own_state_dict_and_moves_with_it():
    layer = modulated_linear("recm")  # built in float32, then .double()
    assert {f"state.{name}" for name in RECMState.BUFFERS} <= set(layer.state_dict())
    assert layer.state.gamma.dtype == torch.float64
    assert layer.to("meta").state.gamma.device.type == "meta"
    assert not any(key.startswith("recm.") for key in Toy(RECMConfig()).state_dict())


def old_layout(state_dict: dict, layer_names: list[str], prefix: str = "") -> dict:
    """``state_dict`` as written before the states moved onto their layers: layer i's
    ``<name>.state.<buffer>`` stored as ``recm.states.<i>.<buffer>``."""
    out = {}
    for key, value in state_dict.items():
        for index, name in enumerate(layer_names):
            layer_prefix = f"{prefix}{name}.state."
            if key.startswith(layer_prefix):
                out[f"{prefix}recm.states.{index}.{key[len(layer_prefix):]}"] = value
                break
        else:
            out[key] = value
    return out


def test_a_file_in_the_old_layout_loads_its_state():
    torch.manual_seed(0)
    trained = Toy(RECMConfig(mode="recm", beta=0.05))
    train_toy(trained, 20, 1.0)  # step, b statistics ...
    trained.layer.state.gamma.fill_(0.3)  # ... and gamma away from their initial values
    old = old_layout(trained.state_dict(), ["layer"])
    assert "recm.states.0.gamma" in old and "layer.state.gamma" not in old
    fresh = Toy(RECMConfig(mode="recm", beta=0.05))
    fresh.load_state_dict(old)  # strict: nothing missing, nothing unexpected
    for name in RECMState.BUFFERS:
        assert torch.equal(getattr(fresh.layer.state, name),
                           getattr(trained.layer.state, name)), name
    # under a prefix, as in a Lightning checkpoint (``net.recm.states.<i>.*``)
    wrapper, source = nn.Module(), nn.Module()
    wrapper.net, source.net = Toy(RECMConfig(mode="recm")), trained
    wrapper.load_state_dict(old_layout(source.state_dict(), ["layer"], prefix="net."))
    assert wrapper.net.recm.gammas() == trained.recm.gammas()
    # a layer the network does not have is reported, not silently dropped
    with pytest.raises(RuntimeError, match=r"recm\.states\.3\.gamma"):
        Toy(RECMConfig()).load_state_dict({**old, "recm.states.3.gamma": torch.tensor(1.0)})


# -- free branches seeded by layer index ---------------------------------------------------
def free_branch_weights(layer_index: int, seed: int = 12345) -> list[torch.Tensor]:
    config = RECMConfig(mode="recm", seed=seed)
    layer = ModulatedLayer(o3.Linear(IRREPS_IN, IRREPS_OUT), IRREPS_IN, IRREPS_OUT, config,
                           layer_index=layer_index)
    return [p.detach().clone() for p in layer.free.parameters()]


def test_free_branches_are_seeded_by_layer_index_deterministically():
    torch.manual_seed(0)
    first = free_branch_weights(1)
    torch.manual_seed(99)  # the global stream does not matter
    assert all(torch.equal(a, b) for a, b in zip(first, free_branch_weights(1), strict=True))
    assert not torch.equal(first[0], free_branch_weights(2)[0])  # same irreps, other layer
    assert not torch.equal(first[0], free_branch_weights(1, seed=7)[0])


def test_controller_rejects_layers_built_without_their_index():
    config = RECMConfig()
    layers = [ModulatedLayer(o3.Linear("1x1o", "1x1o"), "1x1o", "1x1o", config)
              for _ in range(2)]
    with pytest.raises(ValueError, match="layer 1 was built with layer_index=0"):
        RECMController(layers, config)


# -- the controller is the one interface ---------------------------------------------------
class SimulatedProcessGroup:
    """``all_reduce`` (in-place sum) over ``size`` threads, each playing one rank."""

    def __init__(self, size: int):
        self.barrier = threading.Barrier(size)
        self.tensors: list[torch.Tensor] = []

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self.tensors.append(tensor.clone())
        self.barrier.wait(timeout=30)
        tensor.copy_(sum(self.tensors))


def synchronize_on_threads(ranks) -> None:
    """Each model's ``synchronize_signals`` on its own thread, as ranks of one group."""
    group = SimulatedProcessGroup(len(ranks))
    threads = [threading.Thread(target=m.recm.synchronize_signals, args=(group.all_reduce,))
               for m in ranks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_synchronize_signals_pools_b_over_every_ranks_molecules():
    ranks = [Toy(RECMConfig(mode="recm")) for _ in range(2)]
    signals = [([0.1, 0.3], [1.0]), ([0.6], [])]  # (b, dJ/dgamma) recorded on each rank
    for model, (b_values, dgamma_values) in zip(ranks, signals, strict=True):
        state = model.recm.states[0]
        state.pending_b.extend(torch.tensor(v, dtype=torch.float64) for v in b_values)
        state.pending_dgamma.extend(torch.tensor(v, dtype=torch.float64)
                                    for v in dgamma_values)
    model = ranks[0]
    model.recm.synchronize_signals()  # torch.distributed not initialised: nothing to do
    assert len(model.recm.states[0].pending_b) == 2
    synchronize_on_threads(ranks)
    for model in ranks:
        state = model.recm.states[0]
        assert state.pending_summary.count == 3  # every molecule of both ranks
        assert state.pending_summary.mean == pytest.approx((0.1 + 0.3 + 0.6) / 3)
        assert state.pending_summary.sq_mean == pytest.approx((0.01 + 0.09 + 0.36) / 3)
        assert state.pending_dgamma_mean == pytest.approx(1.0)  # one rank
        model.recm.after_optimizer_step(0.5)
    assert ranks[0].recm.gammas() == ranks[1].recm.gammas() != [0.0]


def test_synchronize_signals_pools_tested_molecules_of_a_rank_with_no_training_molecule():
    """heldout_point equivariant: a rank whose batch held out every molecule sends only
    absorbing-test evidence; the pooled summary keeps both kinds, the same on every rank."""
    ranks = [Toy(RECMConfig(mode="recm")) for _ in range(2)]
    recorded = [([0.2], [(0.4, 1)]), ([], [(0.1, 1), (-0.3, 5)])]  # (update b, (test b, cluster))
    for model, (update, tested) in zip(ranks, recorded, strict=True):
        state = model.recm.states[0]
        state.record_signals(torch.tensor(update, dtype=torch.float64),
                             torch.tensor(0.0, dtype=torch.float64),
                             tested=(torch.tensor([b for b, _ in tested], dtype=torch.float64),
                                     torch.tensor([c for _, c in tested]), None))
    synchronize_on_threads(ranks)
    for model in ranks:
        summary = model.recm.states[0].pending_summary
        assert summary.count == 1 and summary.mean == pytest.approx(0.2)
        assert summary.cluster_sums[1] == pytest.approx(0.5)
        assert summary.cluster_sums[5] == pytest.approx(-0.3)
        assert summary.cluster_counts.sum() == pytest.approx(3.0)


def test_a_network_without_modulated_layers_gets_a_no_op_controller():
    model = Toy(RECMConfig())
    assert controller_of(model) is model.recm
    controller = controller_of(nn.Linear(3, 3))
    assert len(controller) == 0
    controller.synchronize_signals()
    controller.after_optimizer_step(0.5)
    assert controller.gammas() == [] and controller.log_dict() == {}
    assert float(controller.regularization_loss()) == 0.0


# -- the subgroup split (recm): rotation branch + reflection branch ------------------------
def test_reflection_branch_is_rotation_equivariant_and_reflection_odd():
    layer = modulated_linear("recm")
    assert layer.split_subgroups and layer.reflection is not None
    branch = layer.reflection.double()
    inputs = {"x": (features(), IRREPS_IN)}
    assert max_equivariance_error(branch, inputs, IRREPS_OUT, translate=False,
                                  reflections=False) < 1e-12
    x = features()
    inversion = -torch.eye(3, dtype=torch.float64)
    mirrored = branch(x @ wigner_d(IRREPS_IN, inversion).T)
    assert torch.allclose(mirrored, -branch(x) @ wigner_d(IRREPS_OUT, inversion).T, atol=1e-12)
    # so its exact residual is the whole branch; an O(3)-equivariant map has none
    assert torch.allclose(layer.reflection_residual(x), branch(x), atol=1e-12)
    layer.reflection.linear = o3.Linear(IRREPS_IN, IRREPS_OUT).double()
    assert layer.reflection_residual(x).abs().max() < 1e-12


def test_rotation_branch_is_projected_over_proper_rotations_only_with_the_split():
    vector = slice(2, 5)  # the first 1o block of IRREPS_OUT: det -1 for a reflection
    for mode, proper_only in (("recm", True), ("ace", False)):
        layer = modulated_linear(mode)
        dets = []
        for step in range(20):
            layer.state.step.fill_(step)
            dets += [float(torch.det(d_out[vector, vector]))
                     for _, d_out in layer._group_samples(torch.float64, "cpu")]
        assert all(d > 0 for d in dets) == proper_only, mode


def test_each_branch_has_its_own_gamma_and_per_molecule_b():
    layer = modulated_linear("recm")
    controller = RECMController([layer], layer.config)
    layer.train()
    x = features(n=12)
    graph = torch.arange(12) // 4  # three molecules
    layer(x, graph=graph).pow(2).sum().backward()
    for _, branch, state in controller.branch_states():
        assert [v.shape for v in state.pending_b] == [(3,)], branch
    assert [name for _, name, _ in controller.branch_states()] == ["rotation", "reflection"]
    controller.after_optimizer_step(0.5)
    assert int(layer.reflection_state.b_count) == 3 and int(layer.state.b_count) == 3
    layer.reflection_state.gamma.fill_(0.5)
    assert controller.branch_gammas() == {"rotation": [controller.gammas()[0]],
                                          "reflection": [0.5]}
    assert "recm/reflection_gamma_0" in controller.log_dict()


def test_export_keeping_only_the_reflection_branch_is_rotation_but_not_reflection_equivariant():
    layer = modulated_linear("recm")
    layer.train()
    layer(features())  # sets the running normalisation
    layer.state.gamma.zero_()
    layer.reflection_state.gamma.fill_(0.8)
    exported = export(layer).eval()
    assert exported.free is None and exported.reflection is not None
    inputs = {"x": (features(seed=3), IRREPS_IN)}
    assert max_equivariance_error(exported, inputs, IRREPS_OUT, translate=False,
                                  reflections=False) < 1e-12
    assert max_equivariance_error(exported, inputs, IRREPS_OUT, translate=False) > 1e-3
    layer.reflection_state.gamma.zero_()
    assert export(layer).reflection is None


def test_a_file_with_one_branch_per_layer_loads_and_computes_the_same():
    """Files written before the reflection branch existed have no ``reflection.*`` keys:
    the branch is dropped on load and the layer is what it was."""
    from conformer.recm.export import align_dropped_branches

    trained = modulated_linear("recm")
    trained.train()
    trained(features())
    trained.state.gamma.fill_(0.4)
    old = {k: v for k, v in trained.state_dict().items()
           if not k.startswith(("reflection.", "reflection_state."))}
    fresh = modulated_linear("recm")
    assert align_dropped_branches(fresh, old) == 1
    fresh.load_state_dict(old)
    assert fresh.reflection is None and bool(fresh.reflection_state.dropped)
    trained.reflection_state.gamma.zero_()  # the old layer: rotation branch only
    x = features(seed=5)
    assert torch.equal(fresh.eval()(x), trained.eval()(x))


def test_export_gives_a_kept_branch_its_running_mean_gamma():
    """recm mode: gamma scatters step to step; the export takes its mean over the last
    ``stats_window`` steps, and keeps a branch whose last gamma was clipped to 0."""
    from types import SimpleNamespace

    from conformer.recm.modes import RECM

    layer = modulated_linear("recm")
    layer.train()
    layer(features())
    config = RECMConfig(stats_window=4)
    state = layer.reflection_state
    gammas = []
    for step, signal in enumerate([0.5, -2.0, 3.0, 0.0, 1.0, -5.0], start=1):
        state.step.fill_(step)
        RECM._follow(state, config, SimpleNamespace(mean=signal, weight=None, sq_mean=0.0,
                                                    count=1))
        gammas.append(float(state.gamma))
    assert gammas[-1] == 0.0 and max(gammas) > 0  # clipped at the last step
    expected = gammas[0]
    for n, gamma in enumerate(gammas[1:], start=2):  # exact mean, then a 4-step window
        weight = 1.0 / min(n, 4)
        expected = (1 - weight) * expected + weight * gamma
    assert int(state.gamma_average_steps) == 6
    assert float(state.gamma_average) == pytest.approx(expected, rel=1e-12)
    exported = export(layer)
    assert exported.reflection is not None
    assert float(exported.reflection_state.gamma) == pytest.approx(expected, rel=1e-12)
    assert float(layer.reflection_state.gamma) == 0.0  # the training network is untouched
    # without an average (other modes, older files) the last gamma decides, as before
    state.gamma_average_steps.zero_()
    assert export(layer).reflection is None
