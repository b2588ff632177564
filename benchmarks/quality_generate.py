"""Generation quality on GEOM-Drugs test SMILES: failures, bond lengths against MMFF94, stereo.

Generates ``--num-confs`` conformers for the first ``--molecules`` rows of
data/geom/drugs/test_smiles_corrected.csv (from ``corrected_smiles``) with ``conformer
generate``'s code path, then scores every conformer with ``conformer.evaluate.validity``
(bonds within 0.1 A of the same conformer after MMFF94 minimisation; CIP stereo from 3D).

    python benchmarks/quality_generate.py --ckpt MODEL.pt [--molecules 50] [--num-confs 10]
        [--out runs/quality] [--method model]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from conformer.evaluate.validity import validity_report
from conformer.generate import GenerateOptions, generate_file
from conformer.sdf_io import read_conformer_groups
from conformer.versions import environment_info

ROOT = Path(__file__).resolve().parent.parent


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
    sdf = out / f"{args.method}.sdf"
    for stale in (sdf, sdf.with_name(sdf.stem + ".failures.csv")):
        stale.unlink(missing_ok=True)
    summary = generate_file(subset, sdf, GenerateOptions(
        method=args.method, ckpt=args.ckpt, num_confs=args.num_confs, steps=args.steps,
        seed=1, progress=False))
    bonds, stereo = [], []
    for mols in read_conformer_groups(sdf, key="input_line").values():
        ensemble = mols[0].__class__(mols[0])
        ensemble.RemoveAllConformers()
        for m in mols:
            ensemble.AddConformer(m.GetConformer(), assignId=True)
        report = validity_report(ensemble, mols[0].GetProp("smiles"))
        for entry in report["per_conformer"]:
            if entry["bonds_ok_fraction"] is not None:
                bonds.append(entry["bonds_ok_fraction"])
            if entry["stereo_ok"] is not None:
                stereo.append(entry["stereo_ok"])
    result = {
        "generate": summary.as_dict(),
        "bonds_within_0.1A_of_mmff_mean": float(np.mean(bonds)) if bonds else None,
        "conformers_scored_for_bonds": len(bonds),
        "validity_stereo_ok_fraction_after_correction": float(np.mean(stereo)) if stereo else None,
        "settings": vars(args), "environment": environment_info(),
    }
    (out / f"{args.method}_quality.json").write_text(json.dumps(result, indent=2))
    print(summary.text())
    print(f"bonds within 0.1 A of MMFF94-minimised: {100 * result['bonds_within_0.1A_of_mmff_mean']:.1f}%"
          f" (mean over {len(bonds)} conformers)")
    if stereo:
        print(f"stereo correct by the evaluator's CIP check (after correction): "
              f"{100 * result['validity_stereo_ok_fraction_after_correction']:.1f}%")


if __name__ == "__main__":
    main()
