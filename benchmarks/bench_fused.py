"""One sampling-time network evaluation: e3nn's interaction blocks against their fused form
(``conformer.nn.inference.FusedInteraction``), the same model in the same process.

For each of the first ``--molecules`` GEOM-Drugs test SMILES: ``--conformers`` copies of the
molecule (heavy atoms, as the bundled model samples them) at noise level ``--sigma``
(Angstrom), one ``EDMDiffusion.denoise`` per timed call, e3nn and fused calls interleaved,
best of ``--repeats``. Prints ms per evaluation for both, the ratio e3nn / fused, and the
largest difference of the two outputs (float32, and float64: the network made float64, then
fused).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fused.py [--ckpt MODEL.pt] [--threads 1]
        [--molecules 5] [--conformers 10] [--sigma 3.0] [--repeats 10]
"""

from __future__ import annotations

import argparse
import copy
import csv
import time
from pathlib import Path

import torch
from rdkit import Chem

from conformer.data.batching import copies_batch
from conformer.generation.sampler import ConformerModel, ModelSampler
from conformer.nn.inference import fuse_for_inference

ROOT = Path(__file__).resolve().parent.parent
TEST_CSV = ROOT / "data/geom/drugs/test_smiles_corrected.csv"


def _batches(model: ConformerModel, count: int, conformers: int) -> list:
    from conformer.generation.hydrogens import HeavyAtomPlan

    sampler = ModelSampler(model, None, conformers)
    with open(TEST_CSV, newline="") as handle:
        smiles = [row["corrected_smiles"] for row in csv.DictReader(handle)][:count]
    batches = []
    for text in smiles:
        mol = Chem.AddHs(Chem.MolFromSmiles(text))
        features = sampler.featurize(mol)
        if sampler.heavy_atoms_only:
            features = HeavyAtomPlan(mol, features).features
        batches.append(copies_batch(features, conformers, model.device))
    return batches


def _time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--molecules", type=int, default=5, help="GEOM test molecules")
    parser.add_argument("--conformers", type=int, default=10, help="copies per batch")
    parser.add_argument("--sigma", type=float, default=3.0, help="noise level, Angstrom")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    plain = ConformerModel.load(args.ckpt, "cpu", fused=False)
    fused_net = copy.deepcopy(plain.net)
    fused = fuse_for_inference(fused_net)
    diffusion = plain.diffusion
    batches = _batches(plain, args.molecules, args.conformers)
    generator = torch.Generator().manual_seed(0)
    totals = {"e3nn": 0.0, "fused": 0.0}
    worst = {"float32": 0.0, "float64": 0.0}
    with torch.no_grad():
        for batch in batches:
            x = torch.randn(batch.batch.shape[0], 3, generator=generator) * args.sigma
            sigma = torch.full((batch.num_graphs,), args.sigma)
            calls = {"e3nn": lambda b=batch, x=x, s=sigma: diffusion.denoise(plain.net, b, x, s),
                     "fused": lambda b=batch, x=x, s=sigma: diffusion.denoise(fused_net, b, x, s)}
            for call in calls.values():  # warm-up
                call()
            for name in ("e3nn", "fused"):
                totals[name] += _time(calls[name], args.repeats)
            worst["float32"] = max(worst["float32"],
                                   float((calls["e3nn"]() - calls["fused"]()).abs().max()))
        # fused from the float64 network: the folded constants are then float64 too
        plain64 = copy.deepcopy(plain.net).double()
        fused64 = copy.deepcopy(plain64)
        fuse_for_inference(fused64)
        for batch in batches:
            x = torch.randn(batch.batch.shape[0], 3, generator=generator,
                            dtype=torch.float64) * args.sigma
            sigma = torch.full((batch.num_graphs,), args.sigma, dtype=torch.float64)
            difference = diffusion.denoise(plain64, batch, x, sigma) \
                - diffusion.denoise(fused64, batch, x, sigma)
            worst["float64"] = max(worst["float64"], float(difference.abs().max()))
    per_call = {name: 1000 * total / len(batches) for name, total in totals.items()}
    print(f"{len(batches)} molecules x {args.conformers} conformers, sigma {args.sigma} A, "
          f"{args.threads} thread(s), {fused} blocks fused")
    print(f"e3nn  {per_call['e3nn']:8.2f} ms per evaluation")
    print(f"fused {per_call['fused']:8.2f} ms per evaluation")
    print(f"ratio e3nn / fused: {per_call['e3nn'] / per_call['fused']:.2f}; max |difference| "
          f"{worst['float32']:.1e} A (float32), {worst['float64']:.1e} A (float64)")


if __name__ == "__main__":
    main()
