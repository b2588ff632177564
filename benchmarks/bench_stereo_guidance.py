"""Sampling time with and without stereo guidance, same molecules, seeds and process.

Times only ``ModelSampler.sample`` (no stereo checks, no resampling) for the first
``--molecules`` rows of the GEOM-Drugs test CSV that specify stereo, ``--num-confs`` each, and
prints the guided / unguided time ratio.

    python benchmarks/bench_stereo_guidance.py [--ckpt MODEL.pt] [--molecules 10] [--num-confs 10]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
from rdkit import RDLogger

from conformer.generation import (
    ConformerModel,
    InputLine,
    ModelSampler,
    MoleculeError,
    prepare_molecule,
)
from conformer.stereo import StereoChecker

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="model file (default: bundled model)")
    parser.add_argument("--csv", default=str(ROOT / "data/geom/drugs/test_smiles_corrected.csv"))
    parser.add_argument("--molecules", type=int, default=10, help="molecules with stereo")
    parser.add_argument("--num-confs", type=int, default=10, help="conformers per molecule")
    parser.add_argument("--repeats", type=int, default=2, help="alternating timing rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    RDLogger.DisableLog("rdApp.*")
    sampler = ModelSampler(ConformerModel.load(args.ckpt, "cpu"), None, 64)
    jobs = []
    with open(args.csv, newline="") as handle:
        for number, row in enumerate(csv.DictReader(handle), start=2):
            smiles = row.get("corrected_smiles") or row["smiles"]
            try:
                mol = prepare_molecule(InputLine(number, smiles, smiles, "", smiles), 400)
                features = sampler.featurize(mol)
            except MoleculeError:
                continue
            checker = StereoChecker(mol)
            if checker.has_stereo:
                jobs.append((number, features, checker.targets()))
            if len(jobs) == args.molecules:
                break
    seconds = {"unguided": 0.0, "guided": 0.0}
    for _ in range(args.repeats):
        for number, features, targets in jobs:
            for label in seconds:  # alternate per molecule, so background load hits both alike
                generator = torch.Generator().manual_seed(number)
                start = time.perf_counter()
                sampler.sample(features, args.num_confs, generator,
                               targets if label == "guided" else None)
                seconds[label] += time.perf_counter() - start
    count = args.repeats * len(jobs) * args.num_confs
    for label, total in seconds.items():
        print(f"{label:9s}: {count / total:.2f} conformers/s ({total:.1f} s, {count} conformers)")
    print(f"guided / unguided time: {seconds['guided'] / seconds['unguided']:.3f}")


if __name__ == "__main__":
    main()
