"""Training-step cost per molecule: every atom diffused (``data.hydrogens: explicit``) vs heavy
atoms only (``implicit``), same network, same molecules, one thread, this process.

A step is what training does per batch: EDM loss + RECM regularisation, backward, AdamW step,
RECM controller update. Both batches hold the same ~32 drug-like molecules
(``bench_denoiser.DRUG_SMILES``); the implicit one is ``heavy_atom_graph`` of each graph, as
``ConformerDataset(hydrogens="implicit")`` builds it. Prints ms per step and per molecule, the
atoms and bond edges of each batch, and the explicit / implicit cost ratio.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_heavy_atoms.py \
        [--config configs/bundled/small_recm.yaml] [--repeats 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rdkit import Chem
from rdkit.Chem import AllChem

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_denoiser import DRUG_SMILES  # noqa: E402

from conformer.config import load_config  # noqa: E402
from conformer.data.batching import collate_molecules  # noqa: E402
from conformer.data.features import featurize_mol  # noqa: E402
from conformer.data.records import heavy_atom_graph, molecule_graph  # noqa: E402
from conformer.diffusion import EDMDiffusion  # noqa: E402
from conformer.train.run import build_network  # noqa: E402


def graphs(smiles=DRUG_SMILES):
    """One RDKit-embedded conformer (explicit H) per molecule, as MoleculeGraphs."""
    out = []
    for index, text in enumerate(smiles):
        mol = Chem.AddHs(Chem.MolFromSmiles(text))
        if AllChem.EmbedMolecule(mol, randomSeed=1 + index) != 0:
            raise RuntimeError(f"embedding failed for {text}")
        pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
        out.append(molecule_graph(featurize_mol(mol), pos=pos))
    return out


def time_training_steps(config, batch, repeats: int) -> float:
    """Median seconds of one training step of a fresh network (seeded) on ``batch``."""
    torch.manual_seed(0)
    net = build_network(config)
    diffusion = EDMDiffusion(config.diffusion)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.optim.lr)
    times = []
    for _ in range(repeats + 1):  # the first step builds e3nn's code paths
        started = time.perf_counter()
        loss = diffusion.loss(net, batch) + net.recm.regularization_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
        optimizer.step()
        net.recm.after_optimizer_step(0.5)
        times.append(time.perf_counter() - started)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bundled/small_recm.yaml",
                        help="training config whose network is timed (default: the bundled "
                        "recipe)")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per setting")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(args.config)
    items = graphs()
    results = {}
    for name, batch in (("explicit", collate_molecules(items)),
                        ("implicit", collate_molecules([heavy_atom_graph(g) for g in items]))):
        seconds = time_training_steps(config, batch, args.repeats)
        results[name] = seconds
        print(f"{name:8s}: {batch.num_nodes:5d} atoms, {batch.edge_index.shape[1]:5d} bond "
              f"edges, {1000 * seconds:8.1f} ms/step, "
              f"{1000 * seconds / batch.num_graphs:6.2f} ms/molecule ({batch.num_graphs} "
              "molecules)")
    print(f"cost per molecule, explicit / implicit: "
          f"{results['explicit'] / results['implicit']:.2f}x")


if __name__ == "__main__":
    main()
