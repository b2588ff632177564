"""Generation quality on GEOM-Drugs test SMILES: failures, bond lengths against MMFF94, stereo.

Generates ``--num-confs`` conformers for the first ``--molecules`` rows of
data/geom/drugs/test_smiles_corrected.csv (from ``corrected_smiles``) with ``conformer
generate``'s code path, then scores every conformer with ``conformer.evaluate.validity``
(bonds within 0.1 A of the same conformer after MMFF94 minimisation; CIP stereo from 3D).

For the model, ``--guidance both`` (default) runs the same molecules and seeds twice, without
and with stereo guidance, so the three stereo rates are all measured, none inferred:
raw (unguided samples, before any correction), guided before correction (after guidance,
before reflection/resampling) and after correction; with bond accuracy and speed of each run.

    python benchmarks/quality_generate.py --ckpt MODEL.pt [--molecules 50] [--num-confs 10]
        [--out runs/quality] [--method model] [--guidance both|on|off]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
from rdkit import Chem

from conformer.evaluate.validity import validity_report
from conformer.generation import GenerateOptions, generate_file
from conformer.sdf_io import read_conformer_groups
from conformer.versions import environment_info

ROOT = Path(__file__).resolve().parent.parent


def score(sdf: Path) -> dict:
    """Bond accuracy and the evaluator's stereo check over every conformer of ``sdf``; each
    conformer is scored alone, so one that MMFF cannot minimise is counted, not fatal."""
    bonds, bonds_stereo_molecules, stereo, unscored = [], [], [], 0
    for mols in read_conformer_groups(sdf, key="input_line").values():
        has_stereo = mols[0].HasProp("stereo_wrong_conformers")
        for m in mols:
            single = Chem.Mol(m)
            try:
                report = validity_report(single, m.GetProp("smiles"))
            except (RuntimeError, ValueError):
                unscored += 1
                continue
            entry = report["per_conformer"][0]
            if entry["bonds_ok_fraction"] is not None:
                bonds.append(entry["bonds_ok_fraction"])
                if has_stereo:
                    bonds_stereo_molecules.append(entry["bonds_ok_fraction"])
            if entry["stereo_ok"] is not None:
                stereo.append(entry["stereo_ok"])

    def mean(values):
        return float(np.mean(values)) if values else None

    return {"bonds_within_0.1A_of_mmff_mean": mean(bonds), "conformers_scored_for_bonds": len(bonds),
            "bonds_within_0.1A_of_mmff_mean_stereo_molecules": mean(bonds_stereo_molecules),
            "validity_stereo_ok_fraction_after_correction": mean(stereo),
            "conformers_not_scored_mmff_error": unscored}


def run_once(args, subset: Path, out: Path, label: str, guidance: bool) -> dict:
    sdf = out / f"{label}.sdf"
    for stale in (sdf, sdf.with_name(sdf.stem + ".failures.csv")):
        stale.unlink(missing_ok=True)
    summary = generate_file(subset, sdf, GenerateOptions(
        method=args.method, ckpt=args.ckpt, num_confs=args.num_confs, steps=args.steps,
        seed=1, stereo_guidance=guidance, progress=False, mmff=args.mmff,
        # generate sets torch's threads from workers (before session 10 --threads was
        # overridden to one thread there)
        workers=args.threads))
    result = {"generate": summary.as_dict(), **score(sdf)}
    print(f"== {label}")
    print(summary.text())
    bonds = result["bonds_within_0.1A_of_mmff_mean"]
    print(f"bonds within 0.1 A of MMFF94-minimised: {100 * bonds:.1f}% (mean over "
          f"{result['conformers_scored_for_bonds']} conformers; on molecules with stereo: "
          f"{100 * (result['bonds_within_0.1A_of_mmff_mean_stereo_molecules'] or 0):.1f}%)")
    if result["conformers_not_scored_mmff_error"]:
        print(f"conformers MMFF could not minimise (not scored): "
              f"{result['conformers_not_scored_mmff_error']}")
    if result["validity_stereo_ok_fraction_after_correction"] is not None:
        print(f"stereo correct by the evaluator's CIP check (after correction): "
              f"{100 * result['validity_stereo_ok_fraction_after_correction']:.1f}%")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="model file (default: bundled model)")
    parser.add_argument("--method", default="model", help="model, etkdg or etkdg-mmff")
    parser.add_argument("--csv", default=str(ROOT / "data/geom/drugs/test_smiles_corrected.csv"),
                        help="test CSV (smiles, n_conformers, corrected_smiles)")
    parser.add_argument("--molecules", type=int, default=50, help="first N rows of the CSV")
    parser.add_argument("--num-confs", type=int, default=10, help="conformers per molecule")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--guidance", choices=["both", "on", "off"], default="both",
                        help="model: run without and with stereo guidance (both, default), or "
                        "one of them")
    parser.add_argument("--no-mmff", dest="mmff", action="store_false",
                        help="model: score the samples as drawn, without generate's MMFF94 "
                             "polish (with it, bonds are MMFF94's own by construction)")
    parser.add_argument("--out", default="runs/quality", help="output folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    subset = out / "input.csv"
    with open(args.csv, newline="") as handle:
        rows = list(csv.reader(handle))
    with open(subset, "w", newline="") as handle:
        csv.writer(handle).writerows(rows[: args.molecules + 1])
    runs = {}
    if args.method != "model":
        runs[args.method] = run_once(args, subset, out, args.method, False)
    else:
        if args.guidance in ("both", "off"):
            runs["model_unguided"] = run_once(args, subset, out, "model_unguided", False)
        if args.guidance in ("both", "on"):
            runs["model_guided"] = run_once(args, subset, out, "model_guided", True)
    result = {"runs": runs, "settings": vars(args), "environment": environment_info()}
    if len(runs) == 2:
        off, on = runs["model_unguided"], runs["model_guided"]

        def pct(value):
            return "n/a" if value is None else f"{100 * value:.1f}%"

        speed = (off["generate"]["conformers_per_second"], on["generate"]["conformers_per_second"])
        result["stereo_rates"] = {
            "raw_unguided_before_correction": off["generate"]["stereo_correct_before"],
            "guided_before_correction": on["generate"]["stereo_correct_before"],
            "guided_after_correction": on["generate"]["stereo_correct_after"],
            "unguided_after_correction": off["generate"]["stereo_correct_after"]}
        result["guided_over_unguided_time"] = (speed[0] / speed[1]) if all(speed) else None
        print("== stereo-correct rates (conformers of molecules with specified stereo)")
        print(f"raw model, no guidance, before correction: "
              f"{pct(off['generate']['stereo_correct_before'])}")
        print(f"with guidance, before correction:           "
              f"{pct(on['generate']['stereo_correct_before'])}")
        print(f"with guidance, after correction:            "
              f"{pct(on['generate']['stereo_correct_after'])}")
        print(f"(no guidance, after correction:             "
              f"{pct(off['generate']['stereo_correct_after'])})")
        print(f"bonds within 0.1 A of MMFF: unguided {pct(off['bonds_within_0.1A_of_mmff_mean'])}"
              f", guided {pct(on['bonds_within_0.1A_of_mmff_mean'])}")
        if result["guided_over_unguided_time"]:
            print(f"time per conformer, guided / unguided (whole runs, resampling included): "
                  f"{result['guided_over_unguided_time']:.2f}")
    name = f"{args.method}_quality.json"
    (out / name).write_text(json.dumps(result, indent=2))
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
