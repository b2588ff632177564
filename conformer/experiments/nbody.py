"""Synthetic N-body property run for RECM (docs/design/recm.md section 4, properties 1, 2, 5, 6).

Task: 4 charged particles (charges +-1) in 3D with softened Coulomb forces and a constant
external field of strength ``eps`` along z; predict each particle's displacement after time
``horizon`` from positions, velocities and charges. With eps = 0 the map is exactly
O(3)-equivariant (and translation invariant); eps > 0 breaks rotations and reflections.
Every mode of the same network is trained with the same budget, for every eps and seed.
"""

from __future__ import annotations

import functools
import json
import math
import time
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from e3nn import o3
from torch import nn
from torch_geometric.utils import scatter

from conformer.equivariance import POSITION, max_equivariance_error
from conformer.errors import UserInputError
from conformer.experiments.common import ExperimentSettings, atomic_json, option
from conformer.nn.graph import intra_graph_pairs
from conformer.nn.layers import GaussianRadialBasis, InteractionBlock
from conformer.parallel import parallel_map
from conformer.progress import progress as show_progress
from conformer.recm import MODES, ModulatedLayer, RECMConfig, RECMController, export
from conformer.versions import environment_info, stable_hash

NUM_PARTICLES = 4


@dataclass(frozen=True)
class NBodyPreset:
    """Data, network and training budget of one property run."""

    num_train: int = 3000
    num_test: int = 1000
    horizon: float = 1.0
    integration_steps: int = 100
    softening: float = 0.1
    hidden_irreps: str = "16x0e+4x0o+8x1o+8x1e"
    num_layers: int = 1
    num_radial: int = 8
    radial_hidden: int = 16
    cutoff: float = 6.0
    # > RECMConfig.absorb_after_steps (2000) + patience: a zero gap can only be absorbed
    # after 2000 steps (was 600 with the v1 rule, which absorbed after ~300)
    steps: int = 2500
    batch_size: int = 100
    learning_rate: float = 3e-3


PRESETS = {
    "tiny": NBodyPreset(),
    "small": NBodyPreset(num_train=10000, hidden_irreps="32x0e+8x0o+16x1o+16x1e",
                         num_layers=2, radial_hidden=32, steps=3000),
}


@dataclass
class NBodySettings(ExperimentSettings):
    """The options of ``conformer reproduce nbody`` (defaults and help come from here)."""

    preset: str = option("tiny", help="size preset: " + ", ".join(PRESETS))
    seeds: int = option(2, help="number of seeds per (mode, eps)")
    eps: str = option("0,0.1,0.3,1.0", help="comma-separated symmetry-breaking strengths "
                      "(external field along z)")
    steps: int | None = option(None, help="optimiser steps per run", default_text=(
        "the preset's: " + ", ".join(f"{n} {p.steps}" for n, p in PRESETS.items())))


def simulate(num_systems: int, eps: float, preset: NBodyPreset, generator: torch.Generator):
    """Sample systems and integrate them (leapfrog, float64).

    Returns positions [S, P, 3], velocities [S, P, 3], charges [S, P], displacement [S, P, 3].
    """
    pos = torch.randn(num_systems, NUM_PARTICLES, 3, generator=generator, dtype=torch.float64)
    vel = 0.5 * torch.randn(num_systems, NUM_PARTICLES, 3, generator=generator,
                            dtype=torch.float64)
    charge = torch.randint(0, 2, (num_systems, NUM_PARTICLES), generator=generator).double()
    charge = 2 * charge - 1
    return pos, vel, charge, integrate(pos, vel, charge, eps, preset)


def integrate(pos, vel, charge, eps: float, preset: NBodyPreset) -> torch.Tensor:
    """Displacement [S, P, 3] after ``preset.horizon`` (leapfrog) from pos, vel [S, P, 3],
    charge [S, P]: softened Coulomb forces plus ``eps * charge`` along z (unit masses)."""
    field = torch.tensor([0.0, 0.0, eps], dtype=pos.dtype)

    def acceleration(x):
        diff = x.unsqueeze(2) - x.unsqueeze(1)  # [S, P, P, 3], x_i - x_j
        inv = (diff.pow(2).sum(-1) + preset.softening ** 2).pow(-1.5)
        coulomb = (charge.unsqueeze(2) * charge.unsqueeze(1) * inv).unsqueeze(-1) * diff
        return coulomb.sum(2) + charge.unsqueeze(-1) * field

    dt = preset.horizon / preset.integration_steps
    x, v = pos.clone(), vel.clone()
    a = acceleration(x)
    for _ in range(preset.integration_steps):
        v = v + 0.5 * dt * a
        x = x + dt * v
        a = acceleration(x)
        v = v + 0.5 * dt * a
    return x - pos


class NBodyNet(nn.Module):
    """Message passing over all pairs of a system; every layer (and the head) modulated.

    forward(pos [S, P, 3], vel [S, P, 3], charge [S, P]) -> displacement [S, P, 3].
    """

    def __init__(self, preset: NBodyPreset, recm: RECMConfig):
        super().__init__()
        self.preset = preset
        hidden = o3.Irreps(preset.hidden_irreps)
        self.irreps_sh = o3.Irreps.spherical_harmonics(1)
        self.irreps_input = o3.Irreps("1x0e+1x1o")  # charge, velocity
        self.embed = o3.Linear(self.irreps_input, hidden)
        self.radial_basis = GaussianRadialBasis(preset.cutoff, preset.num_radial)
        edge_dim = preset.num_radial + 1  # + product of charges
        layers, irreps = [], hidden
        for index in range(preset.num_layers):
            block = InteractionBlock(irreps, hidden, self.irreps_sh, edge_dim,
                                     preset.radial_hidden, NUM_PARTICLES - 1)
            layers.append(ModulatedLayer(block, irreps, block.irreps_out, recm,
                                         irreps_free_in=irreps + o3.Irreps("1x1o"),
                                         layer_index=index))
            irreps = block.irreps_out
        self.interactions = nn.ModuleList(layers)
        self.head = ModulatedLayer(o3.Linear(irreps, "1x1o"), irreps, "1x1o", recm,
                                   irreps_free_in=irreps + o3.Irreps("1x1o"),
                                   layer_index=len(layers))
        self.recm = RECMController([*layers, self.head], recm)

    def forward(self, pos, vel, charge):
        systems, particles, _ = pos.shape
        graph = torch.arange(systems, device=pos.device).repeat_interleave(particles)
        x = pos.reshape(-1, 3)
        q = charge.reshape(-1, 1).to(pos.dtype)
        source, target = intra_graph_pairs(graph, systems)
        vectors = x[source] - x[target]
        edge_scalars = torch.cat([self.radial_basis(vectors.norm(dim=-1)),
                                  q[source] * q[target]], dim=-1)
        edge_sh = o3.spherical_harmonics(self.irreps_sh, vectors, normalize=True,
                                         normalization="component")
        centred = x - scatter(x, graph, 0, systems, reduce="mean")[graph]
        h = self.embed(torch.cat([q, vel.reshape(-1, 3)], dim=-1))
        for layer in self.interactions:
            h = layer(h, source, target, edge_sh, edge_scalars,
                      free_input=torch.cat([h, centred], dim=-1), graph=graph)
        out = self.head(h, free_input=torch.cat([h, centred], dim=-1), graph=graph)
        return out.reshape(systems, particles, 3)


def equivariance_error(net: nn.Module, pos, vel, charge, seed: int = 0, trials: int = 3) -> float:
    """Max |net(g x + t, g v) - g net(x, v)| in float64 over random O(3) elements (one
    reflection at least) and translations, on the given systems (pos, vel [S, P, 3])."""
    net = net.double().eval()
    inputs = {"pos": (pos.double(), POSITION), "vel": (vel.double(), o3.Irreps("1x1o")),
              "charge": (charge, None)}
    with torch.no_grad():
        return max_equivariance_error(net, inputs, "1x1o", trials=trials, seed=seed)


def train_one(mode: str, eps: float, seed: int, preset: NBodyPreset, steps: int,
              recm_overrides: dict | None = None) -> dict:
    """Train one model; returns the result entry (metrics, gamma curve, timings)."""
    data_generator = torch.Generator().manual_seed(10_000 + seed)
    train = simulate(preset.num_train, eps, preset, data_generator)
    test = simulate(preset.num_test, eps, preset, data_generator)
    torch.manual_seed(seed)
    recm = RECMConfig(mode=mode, seed=seed, **(recm_overrides or {}))
    net = NBodyNet(preset, recm)
    optimizer = torch.optim.Adam(net.parameters(), lr=preset.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    batch_generator = torch.Generator().manual_seed(20_000 + seed)
    train32 = [t.float() for t in train]
    gamma_curve, started = [], time.perf_counter()
    net.train()
    for step in range(steps):
        index = torch.randint(0, preset.num_train, (preset.batch_size,),
                              generator=batch_generator)
        pos, vel, charge, target = (t[index] for t in train32)
        # stable ids of the systems: every k-th system of the training set is held out of
        # the branches and scores b (RECMConfig.heldout_every)
        net.recm.hold_out(index)
        loss = (net(pos, vel, charge) - target).pow(2).mean()
        loss = loss + net.recm.regularization_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        net.recm.after_optimizer_step((step + 1) / steps)
        gamma_curve.append(net.recm.gammas() + net.recm.branch_gammas()["reflection"])
    train_seconds = time.perf_counter() - started
    final = export(net).eval()
    # what the exported model uses: a kept branch's running-mean gamma, 0 for a dropped one
    export_gammas = final.recm.branch_gammas()
    pos, vel, charge, target = (t.float() for t in test)
    with torch.no_grad():
        test_mse = float((final(pos, vel, charge) - target).pow(2).mean())
    return {
        "mode": mode, "eps": eps, "seed": seed, "steps": steps,
        "test_mse": test_mse,
        "gamma_final": net.recm.gammas(),
        "dropped": [bool(s.dropped) for s in net.recm.states],
        "reflection_gamma_final": net.recm.branch_gammas()["reflection"],
        "reflection_dropped": net.recm.branch_dropped()["reflection"],
        "gamma_export": export_gammas["rotation"],
        "reflection_gamma_export": export_gammas["reflection"],
        "export_equivariance_error": equivariance_error(final, *test[:3]),
        "train_seconds": round(train_seconds, 2),
        "gamma_curve_every": 10,
        # per row: rotation (or only) branch gamma per layer, then reflection gamma per layer
        "gamma_curve": [[round(g, 5) for g in row] for row in gamma_curve[::10]],
    }


def _train_task(todo: tuple[str, float, int], preset: NBodyPreset, steps: int) -> dict:
    """:func:`train_one` of one ``(mode, eps, seed)`` (the form a worker pool hands out)."""
    mode, eps, seed = todo
    return train_one(mode, eps, seed, preset, steps)


def _parse_floats(text: str, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"{option} {text!r}: expected comma-separated numbers") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise UserInputError(f"{option} {text!r}: expected non-negative finite numbers")
    return values


def _per_layer(values: list[float] | None) -> str:
    return "-" if values is None else ", ".join(f"{g:.3f}" for g in values)


def write_table(results: list[dict], modes: list[str], eps_values: list[float], path: Path):
    def mean(values):
        return sum(values) / len(values) if values else float("nan")

    lines = ["Test MSE of the exported model (mean over seeds); N-body, 4 charged particles,",
             "external field of strength eps along z.", "",
             "| mode | " + " | ".join(f"eps={e:g}" for e in eps_values) + " |",
             "|---" * (len(eps_values) + 1) + "|"]
    for mode in modes:
        cells = [mean([r["test_mse"] for r in results if r["mode"] == mode and r["eps"] == e])
                 for e in eps_values]
        lines.append(f"| {mode} | " + " | ".join(f"{c:.4g}" for c in cells) + " |")
    lines += ["", "Per-layer gamma (recm; mean over seeds) at the last step and in the exported "
              "model (a kept branch's running mean, 0 when dropped), and max exported "
              "equivariance error (float64, over seeds):", "",
              "| eps | gamma per layer | gamma at export | dropped (all seeds) | reflection "
              "gamma per layer | reflection gamma at export | reflection dropped | export "
              "equivariance error |",
              "|---|---|---|---|---|---|---|---|"]
    for e in eps_values:
        runs = [r for r in results if r["mode"] == "recm" and r["eps"] == e]
        if not runs:
            continue
        layers = len(runs[0]["gamma_final"])
        gammas = [mean([r["gamma_final"][i] for r in runs]) for i in range(layers)]
        dropped = [all(r["dropped"][i] for r in runs) for i in range(layers)]
        reflection = [mean([r.get("reflection_gamma_final", [0.0] * layers)[i] for r in runs])
                      for i in range(layers)]
        # results written before session 15 have no export gammas
        exported = [mean([r["gamma_export"][i] for r in runs]) for i in range(layers)] \
            if all("gamma_export" in r for r in runs) else None
        reflection_exported = [mean([r["reflection_gamma_export"][i] for r in runs])
                               for i in range(layers)] \
            if all("reflection_gamma_export" in r for r in runs) else None
        reflection_dropped = [all(r.get("reflection_dropped", [True] * layers)[i] for r in runs)
                              for i in range(layers)]
        error = max(r["export_equivariance_error"] for r in runs)
        lines.append(f"| {e:g} | {', '.join(f'{g:.3f}' for g in gammas)} | "
                     f"{_per_layer(exported)} | "
                     f"{', '.join('yes' if d else 'no' for d in dropped)} | "
                     f"{', '.join(f'{g:.3f}' for g in reflection)} | "
                     f"{_per_layer(reflection_exported)} | "
                     f"{', '.join('yes' if d else 'no' for d in reflection_dropped)} | "
                     f"{error:.2e} |")
    path.write_text("\n".join(lines) + "\n")


def plot_gammas(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((r for r in results if r["mode"] == "recm"), key=lambda r: (r["eps"], r["seed"]))
    eps_values = sorted({r["eps"] for r in runs})
    if not eps_values:
        return
    fig, axes = plt.subplots(1, len(eps_values), figsize=(4 * len(eps_values), 3.2),
                             sharey=True, squeeze=False)
    for axis, e in zip(axes[0], eps_values, strict=True):
        for run in (r for r in runs if r["eps"] == e):
            curve = torch.tensor(run["gamma_curve"])
            steps = torch.arange(curve.shape[0]) * run["gamma_curve_every"]
            layers = len(run["gamma_final"])
            first = run["seed"] == runs[0]["seed"]
            for column in range(curve.shape[1]):
                layer, branch = column % layers, ("rotation", "reflection")[column // layers]
                axis.plot(steps, curve[:, column], color=f"C{layer}", alpha=0.8,
                          linestyle="-" if branch == "rotation" else ":",
                          linewidth=1.5 if first else 0.7,
                          label=f"layer {layer} {branch}" if first else None)
        axis.set_title(f"eps = {e:g}")
        axis.set_xlabel("optimiser step")
    axes[0][0].set_ylabel("gamma")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(options: NBodySettings) -> int:
    """``conformer reproduce nbody``: every mode x eps x seed; resumable (reruns skip done)."""
    modes = options.check_common(PRESETS, MODES)
    preset = PRESETS[options.preset]
    eps_values = _parse_floats(options.eps, "--eps")
    if options.seeds < 1:
        raise UserInputError(f"--seeds {options.seeds}: need at least 1")
    steps = options.steps or preset.steps
    if steps < 1:
        raise UserInputError(f"--steps {steps}: need at least 1")
    torch.set_num_threads(options.threads)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"preset_name": options.preset, "preset": asdict(preset), "steps": steps,
                "recm_defaults": RECMConfig().to_dict()}
    settings_hash = stable_hash(settings)
    results_path = out / "results.json"
    results: list[dict] = []
    if results_path.exists():
        previous = json.loads(results_path.read_text())
        if previous.get("settings_hash") == settings_hash:
            results = previous["runs"]
        else:
            print(f"{results_path}: different settings; starting a new table")
    done = {(r["mode"], r["eps"], r["seed"]) for r in results}
    todo = [(m, e, s) for e in eps_values for s in range(options.seeds) for m in modes
            if (m, e, s) not in done]

    def save() -> None:
        atomic_json(results_path, {"settings": settings, "settings_hash": settings_hash,
                                   "environment": environment_info(), "runs": results})

    progress = show_progress(total=len(todo), desc="nbody runs", unit="run")
    task = functools.partial(_train_task, preset=preset, steps=steps)
    try:  # each spawned worker runs with the run's torch threads
        with closing(parallel_map(task, todo, options.workers, ordered=False,
                                  initializer=torch.set_num_threads,
                                  initargs=(options.threads,))) as runs:
            for result in runs:
                results.append(result)
                save()
                progress.update()
    finally:
        progress.close()
    results.sort(key=lambda r: (r["eps"], r["seed"], MODES.index(r["mode"])))
    selected = [r for r in results if r["mode"] in modes and r["eps"] in eps_values
                and r["seed"] < options.seeds]
    write_table(selected, modes, eps_values, out / "table.md")
    plot_gammas(selected, out / "gamma.png")
    print((out / "table.md").read_text())
    print(f"wrote {results_path}, {out / 'table.md'}, {out / 'gamma.png'}")
    return 0
