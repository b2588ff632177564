"""Forward + backward time of the ``small`` denoiser on ~32 drug-like molecules (~1,500 atoms).

Prints ms/step for ``recm`` mode and for the same network in ``equivariant`` mode, and their
ratio (the RECM overhead), both measured in this process on one thread.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_denoiser.py [--preset small] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from conformer.data import keys
from conformer.data.batching import collate_molecules
from conformer.data.features import featurize_mol
from conformer.data.records import molecule_graph
from conformer.nn import build_denoiser

# well-known drugs (public names), a spread of sizes, rings, charges and stereocentres
DRUG_SMILES = (
    "CC(=O)Oc1ccccc1C(=O)O", "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O", "CC(=O)Nc1ccc(O)cc1",
    "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CN[C@@H](C)[C@@H](O)c1ccccc1",
    "COc1ccc2[nH]cc(CCNC(C)=O)c2c1", "CC(C)NCC(O)COc1cccc2ccccc12",
    "CN1CCC[C@H]1c1cccnc1", "O=C(O)C[C@@H](N)C(=O)O",
    "CC1=C(C(=O)OCC)C(c2ccccc2[N+](=O)[O-])C(C(=O)OC)=C1C",
    "Clc1ccc2c(c1)C(=NCC(=O)N2)c1ccccc1", "CN(C)CCCN1c2ccccc2CCc2ccccc21",
    "OC(=O)c1ccccc1Nc1cccc(c1)C(F)(F)F", "CC(C)(C)NC[C@H](O)c1ccc(O)c(CO)c1",
    "C[C@]12CC[C@H]3[C@@H](CCc4cc(O)ccc34)[C@@H]1CC[C@@H]2O",
    "COc1ccc(cc1)[C@@H]1Sc2ccccc2N(CCN(C)C)C(=O)[C@@H]1OC(C)=O",
    "Cc1ccc(cc1)S(=O)(=O)NC(=O)NN1CCCCCC1", "NC(=O)N1c2ccccc2C=Cc2ccccc21",
    "CCOC(=O)C1=C(COCCN)NC(C)=C(C(=O)OC)C1c1ccccc1Cl",
    "CC(C)(C)c1ccc(cc1)C(O)CCCN1CCC(CC1)C(O)(c1ccccc1)c1ccccc1",
    "Cn1c(=O)c2c(ncn2C)n(C)c1=O", "OC(=O)CCCc1ccc(N(CCCl)CCCl)cc1",
    "CC(=O)N[C@@H]1[C@@H](N)C=C(C[C@H]1OC(CC)CC)C(=O)OCC",
    "Fc1ccc(cc1)C(=O)CCCN1CCC(O)(CC1)c1ccc(Cl)cc1", "CS(=O)(=O)c1ccc(cc1)C1=C(C(=O)OC1)c1ccccc1",
    "Nc1nc(=O)c2ncn(COCCO)c2[nH]1", "CC12CCC(=O)C=C1CCC1C2CCC2(C)C(O)CCC12",
    "O=C1N(C2CCC(=O)NC2=O)C(=O)c2ccccc12", "CCN(CC)CC(=O)Nc1c(C)cccc1C",
    "OC[C@H]1O[C@@H](n2cnc3c(N)ncnc32)[C@H](O)[C@@H]1O", "Clc1ccccc1C1(NC)CCCCC1=O",
    "COc1cc2c(cc1OC)C(=O)C(CC1CCN(Cc3ccccc3)CC1)C2",
)


def molecule_batch(smiles=DRUG_SMILES):
    """RDKit-embedded molecules (explicit H) as a float32 PyG batch (the training builder)."""
    graphs = []
    for index, text in enumerate(smiles):
        mol = Chem.AddHs(Chem.MolFromSmiles(text))
        if AllChem.EmbedMolecule(mol, randomSeed=1 + index) != 0:
            raise RuntimeError(f"embedding failed for {text}")
        pos = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float32)
        graphs.append(molecule_graph(featurize_mol(mol), pos=pos))
    return collate_molecules(graphs)


def time_steps(net, batch, noise, repeats: int) -> float:
    """Median seconds of forward + backward + controller update."""
    times = []
    for _ in range(repeats + 1):  # the first call builds e3nn's code paths
        started = time.perf_counter()
        out = net(batch, noise)
        (out.pow(2).mean() + net.recm.regularization_loss()).backward()
        net.recm.after_optimizer_step(0.5)
        times.append(time.perf_counter() - started)
        net.zero_grad(set_to_none=True)
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="denoiser preset (default: small)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per mode")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    batch = molecule_batch()
    noise = torch.rand(batch[keys.NUM_GRAPHS])
    results = {}
    for mode in ("equivariant", "recm"):
        net = build_denoiser(args.preset, mode)
        net.train()
        if mode == "recm":  # measure with every branch in use
            for state in net.recm.states:
                state.gamma.fill_(0.5)
        results[mode] = time_steps(net, batch, noise, args.repeats)
    source, _, _, _ = build_denoiser(args.preset, "equivariant").edges(batch)
    print(f"preset {args.preset}: {batch[keys.POS].shape[0]} atoms, "
          f"{batch[keys.NUM_GRAPHS]} molecules, {source.numel()} edges, 1 thread")
    for mode, seconds in results.items():
        print(f"  {mode:12s} {1000 * seconds:8.1f} ms/step (forward + backward)")
    print(f"  RECM overhead ratio recm/equivariant: {results['recm'] / results['equivariant']:.2f}")


if __name__ == "__main__":
    main()
