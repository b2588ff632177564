"""The outputs of ``conformer reproduce drugs``: table.md and the recm gamma plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conformer.experiments.drugs.settings import (
    METHOD_LABELS,
    METRIC_KEYS,
    RDKIT_METHODS,
    job_name,
)
from conformer.recm import MODES


# -- table and plot -----------------------------------------------------------------------------
def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _fmt_params(count: float | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.1f}k"


def write_table(document: dict, path: Path) -> None:
    """docs/design/protocol.md section 5 layout, one row per method (mean over seeds), plus context."""
    runs, settings = document["runs"], document["settings"]
    preset = settings["preset"]
    methods = [m for m in (*MODES, *RDKIT_METHODS) if any(r["method"] == m for r in runs)]
    seeds = sorted({r["seed"] for r in runs})
    data = document["data"]
    n_test = len(data["test_molecules"])
    n_refs = sum(int(m["n_conformers"]) for m in data["test_molecules"])
    if preset["data"] == "self-built":
        header = [
            f"# GEOM-Drugs protocol, preset `{preset['name']}`: self-built references, "
            "NOT GEOM-Drugs",
            "",
            f"Test set: {n_test} real GEOM-Drugs test molecules (seeded sample of "
            f"`data/geom/drugs/test_smiles_corrected.csv` rows with <= "
            f"{preset['test_max_heavy_atoms']} heavy atoms and <= "
            f"{preset['test_max_rotatable_bonds']} rotatable bonds), but their {n_refs} reference "
            "conformers were built here with `conformer build-geom` (ETKDGv3 + MMFF94 minima, "
            f"6 kcal/mol window, 0.5 A de-duplication; at most {preset['max_references']} per "
            "molecule, lowest energy first), not GEOM's CREST/GFN2-xTB ensembles. "
            "**The numbers are not comparable to the published GEOM-Drugs table.** "
            "The references are made by ETKDG + MMFF94, so the `RDKit ETKDG + MMFF` row "
            "re-runs the reference procedure with other seeds: a ceiling for this reference "
            "set, not a fair baseline.",
            "",
            f"Training: {data['prepared'].get('split_sizes', {}).get('train', '?')} molecules "
            f"(seeded sample of `data/train_smiles/train_druglike.smi`, build-geom with "
            f"{preset['train_confs']} embeddings, none in the GEOM test or Hutchison sets), "
            f"{settings['steps_resolved']} optimiser steps per mode, denoiser preset "
            f"`{settings['denoiser_preset']}`, same data, budget and seeds for every mode.",
        ]
    else:
        header = [
            "# GEOM-Drugs (rdkit_folder, GeoMol split), 1000 test molecules",
            "",
            f"Training: {settings['steps_resolved']} optimiser steps per mode, denoiser preset "
            f"`{settings['denoiser_preset']}`.",
        ]
    guidance = sorted({str(r["generation"].get("options", {}).get("stereo_guidance", "?"))
                       for r in runs if r["kind"] == "model"})
    header += [
        "",
        "Model rows: `conformer generate` defaults (stereo guidance in the sampler: "
        f"{'/'.join(guidance) or '-'}); 'stereo correct before correction' is measured on the "
        "sampler's output, before the per-conformer reflection/resampling fix.",
        "",
        f"2K conformers per molecule (K = reference count), delta = {preset['threshold']} A "
        f"(strict <); mean over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}) of the "
        "per-seed mean/median over molecules. params: parameters of the exported model "
        "(dropped RECM branches removed); steps: network evaluations per conformer "
        + (f"({settings['sample_steps_resolved']} Heun steps = "
           f"{2 * int(settings['sample_steps_resolved']) - 1} evaluations, plus the "
           "sampler's refinement steps)." if "evaluations_resolved" in settings else
           "(Heun, 2 x steps - 1 network evaluations)."),
        "",
        "| method | params | steps | COV-R mean/med % | MAT-R mean/med A | COV-P mean/med % "
        "| MAT-P mean/med A |",
        "|---|---|---|---|---|---|---|",
    ]
    extra = ["", "| method | molecules evaluated | empty (COV 0) | failures listed | "
             "stereo correct before / after correction % | bonds within 0.1 A of MMFF % | "
             "train loss (end) | val loss (end) | final gamma per layer | free branches "
             "dropped at export |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    def ang(x):
        return "-" if x is None else f"{x:.3f}"

    def num(x):
        return "-" if x is None else f"{x:.4g}"

    for method in methods:
        rows = [r for r in runs if r["method"] == method]
        m = {k: _mean([r["metrics"][k] for r in rows]) for k in METRIC_KEYS}
        label = METHOD_LABELS.get(method, method)
        if rows[0]["kind"] == "model":
            params = _fmt_params(_mean([r["training"]["params_exported"] for r in rows]))
            steps = str(settings.get("evaluations_resolved", settings["sample_steps_resolved"]))
        else:
            params, steps = "-", "-"
        cells = [f"{pct(m['cov_r_mean'])} / {pct(m['cov_r_median'])}",
                 f"{ang(m['mat_r_mean'])} / {ang(m['mat_r_median'])}",
                 f"{pct(m['cov_p_mean'])} / {pct(m['cov_p_median'])}",
                 f"{ang(m['mat_p_mean'])} / {ang(m['mat_p_median'])}"]
        header.append(f"| {label} | {params} | {steps} | " + " | ".join(cells) + " |")
        training = [r.get("training", {}) for r in rows]
        gammas = [t.get("gamma_final") for t in training if t.get("gamma_final")]
        gamma = "-" if not gammas or method == "equivariant" else ", ".join(
            f"{g:.3f}" for g in np.mean(np.array(gammas), axis=0))
        flags = [t["dropped"] for t in training if t.get("dropped") is not None]
        dropped_text = "-" if not flags or method == "equivariant" else " / ".join(
            f"{sum(f)}/{len(f)}" for f in flags)
        extra.append(
            f"| {label} | {_mean([r['metrics']['n_molecules'] for r in rows]):g} | "
            f"{_mean([r['metrics']['n_empty_generation'] for r in rows]):g} | "
            f"{_mean([r['n_failures'] for r in rows]):g} | "
            f"{pct(_mean([r['generation'].get('stereo_correct_before') for r in rows]))} / "
            f"{pct(_mean([r['generation'].get('stereo_correct_after') for r in rows]))} | "
            f"{pct(_mean([r['validity'].get('bonds_ok_fraction_mean') for r in rows]))} | "
            f"{num(_mean([t.get('train_loss_final') for t in training]))} | "
            f"{num(_mean([t.get('val_loss_final') for t in training]))} | {gamma} | "
            f"{dropped_text} |")
    dropped = data.get("test_dropped", [])
    footer = ["", f"Test molecules dropped before evaluation (no reference built): {len(dropped)}"
              + (" (" + "; ".join(f"{d['name']}: {d['reason']}" for d in dropped) + ")"
                 if dropped else ""),
              "Final gamma: the training state at the last step, mean over seeds; a dropped "
              "branch is removed at export whatever its gamma (ACE truncates at the end, RECM "
              "absorbs zero, scheduled drops its branch), so those models run equivariant. "
              "Dropped counts are per seed.",
              "Per-molecule numbers, failures, loss curves and settings: results.json."]
    path.write_text("\n".join(header + extra + footer) + "\n")


def plot_gamma(document: dict, path: Path) -> bool:
    """The recm run's per-layer gamma over training (first seed), as training drew it."""
    from conformer.train.callbacks import plot_gammas

    runs = sorted((r for r in document["runs"] if r["method"] == "recm"), key=lambda r: r["seed"])
    for run in runs:
        csv_path = Path(document["out"]) / "runs" / job_name("recm", run["seed"]) / "gammas.csv"
        if csv_path.exists():
            plot_gammas(csv_path, path)
            return True
    return False
