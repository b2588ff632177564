"""``conformer reproduce drugs``: the GEOM-Drugs table (docs/design/protocol.md section 5), one command.

Every mode of the same denoiser (``equivariant``, ``unconstrained``, ``scheduled``, ``ace``,
``recm``) is trained with the same data, step budget and seeds; each model generates 2K
conformers per test molecule (K = its reference count); the RDKit rows (``etkdg``,
``etkdg-mmff``) run through the same generation and evaluation code on the same molecules.

Presets:

- ``micro``: a smoke run (a few molecules, a few steps) for tests; its numbers mean nothing.
- ``tiny``: minutes on a 2-core CPU. Data is self-built (docs/design/protocol.md section 6): a GEOM-layout
  folder from a seeded sample of ``data/train_smiles/train_druglike.smi`` with
  ``conformer build-geom`` (ETKDG + MMFF94), and references for a seeded sample of real
  GEOM-Drugs test molecules (``data/geom/drugs/test_smiles_corrected.csv``) built the same way,
  capped at ``max_references`` per molecule. The references are MMFF minima, not GEOM's
  CREST/GFN2-xTB ensembles: the numbers are not comparable to the published ones.
- ``small``: the same on more data and steps (a GPU or a long CPU run).
- ``paper``: the GEOM-Drugs configuration: the real ``rdkit_folder`` (``--geom-dir``), the
  GeoMol split ``data/geom/drugs/split0.npy``, ``configs/experiment/drugs_<mode>.yaml`` (base
  denoiser, 250k steps), the 1000 test molecules with GEOM's own reference conformers.

Output folder (rerunning the same command resumes: every finished stage is skipped):

    settings.json                       the settings (and their hash) the folder was made with
    data/train_input.smi, train_geom/   training SMILES and their GEOM-layout folder
    data/test_input.smi, test_geom/     test SMILES and their reference builds
    data/test_molecules.csv             name, smiles (generated from), n_conformers (K)
    data/references.sdf                 the reference conformers, grouped by ``molecule``
    cache/                              prepared training records
    runs/<mode>_s<seed>/                training run (checkpoints, csv, gammas.csv/png)
    models/<mode>_s<seed>.pt            exported EMA model
    generated/<method>_s<seed>.sdf      2K conformers per test molecule (+ .summary.json)
    eval/<method>_s<seed>/              ``conformer evaluate`` output
    results.json, table.md, gamma.png   the table of every method and the recm gamma curves

# -- entry point ---------------------------------------------------------------------------------
def _parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in (*MODES, *RDKIT_METHODS)]
    if unknown or not modes:
        raise UserInputError(f"--modes {text!r}: choose from {', '.join((*MODES, *RDKIT_METHODS))}")
    return modes


def run(args) -> int:
    """

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path

from conformer.errors import UserInputError
from conformer.experiments.common import atomic_json
from conformer.experiments.drugs.settings import (
    METHOD_LABELS,
    PRESETS,
    RDKIT_METHODS,
    DrugsPreset,
    DrugsSettings,
    Plan,
    check_settings,
    fingerprint,
    job_name,
    say,
)
from conformer.experiments.drugs.stages import (
    prepare_geom,
    prepare_self_built,
    require_geom_dir,
    run_job,
    run_job_task,
    sampler_evaluations,
    select_test_rows,
    select_train_smiles,
    train_config,
)
from conformer.experiments.drugs.tables import plot_gamma, write_table
from conformer.parallel import parallel_map
from conformer.progress import progress as show_progress
from conformer.recm import MODES
from conformer.versions import environment_info, stable_hash


def run(options: DrugsSettings) -> int:
    """``conformer reproduce drugs``: data, training, generation, evaluation, table; resumable."""
    methods = options.check_common(PRESETS, (*MODES, *RDKIT_METHODS))
    preset = PRESETS[options.preset]
    seeds = preset.seeds if options.seeds is None else options.seeds
    if seeds < 1:
        raise UserInputError(f"--seeds {seeds}: need at least 1")
    steps = options.steps if options.steps is not None else preset.steps
    if steps is not None and steps < 1:
        raise UserInputError(f"--steps {steps}: need at least 1")
    if options.baselines:
        methods += [m for m in RDKIT_METHODS if m not in methods]
    geom_dir = options.geom_dir
    if preset.data == "geom":
        require_geom_dir(geom_dir)
    root = Path(options.out)
    root.mkdir(parents=True, exist_ok=True)
    settings = fingerprint(preset, steps, geom_dir)
    check_settings(root, settings)
    plan = Plan(out=str(root), preset=preset, steps=steps, threads=options.threads,
                geom_dir=geom_dir)
    started = time.perf_counter()
    if preset.data == "self-built":
        data = prepare_self_built(plan, options.workers)
    else:
        data = prepare_geom(plan, options.workers)

    probe = train_config(plan, "recm", 0)
    resolved = settings | {"steps_resolved": probe.trainer.max_steps,
                           "denoiser_preset": probe.model.preset,
                           "sample_steps_resolved": preset.sample_steps
                           or probe.diffusion.sample_steps,
                           # network evaluations per conformer (ODE + refinement): the table's
                           # "steps" column, comparable with the published rows
                           "evaluations_resolved": sampler_evaluations(probe, preset),
                           "seeds": list(range(seeds)), "methods": methods}
    jobs = [(m, s) for s in range(seeds) for m in methods]
    say(f"stage 4/4: {len(jobs)} runs (train, generate 2K, evaluate) for "
         f"{', '.join(methods)} x {seeds} seed(s), {options.workers} worker(s)")

    entries = []
    progress = show_progress(total=len(jobs), desc="drugs runs", unit="run")

    def done(entry: dict) -> None:
        entries.append(entry)
        m = entry["metrics"]
        cov = "-" if m["cov_r_mean"] is None else f"{100 * m['cov_r_mean']:.1f}%"
        mat = "-" if m["mat_r_mean"] is None else f"{m['mat_r_mean']:.3f}"
        say(f"{job_name(entry['method'], entry['seed'])}: COV-R mean {cov}, "
             f"MAT-R mean {mat} A, {entry['seconds']} s")
        progress.update()

    tasks = [(plan, method, seed) for method, seed in jobs]
    try:
        with closing(parallel_map(run_job_task, tasks, options.workers, ordered=False)) as runs:
            for entry in runs:
                done(entry)
    finally:
        progress.close()
    order = {m: i for i, m in enumerate((*MODES, *RDKIT_METHODS))}
    entries.sort(key=lambda e: (order[e["method"]], e["seed"]))
    document = {"settings": resolved, "settings_hash": stable_hash(settings),
                "environment": environment_info(), "out": str(root),
                "data": data, "runs": entries,
                "wall_seconds_this_invocation": round(time.perf_counter() - started, 1)}
    atomic_json(root / "results.json", document)
    write_table(document, root / "table.md")
    if not plot_gamma(document, root / "gamma.png") and (root / "gamma.png").exists():
        (root / "gamma.png").unlink()
    print((root / "table.md").read_text())
    say(f"wrote {root / 'results.json'}, {root / 'table.md'}"
         + (f", {root / 'gamma.png'}" if (root / "gamma.png").exists() else "")
         + f" in {time.perf_counter() - started:.0f} s")
    return 0


__all__ = ["METHOD_LABELS", "PRESETS", "DrugsPreset", "DrugsSettings", "check_settings", "run",
           "run_job", "select_test_rows", "select_train_smiles", "write_table"]
