"""Build ``tests/fixtures/geom_mini``: a small GEOM-layout folder the tests run on.

Twelve real drug-like molecules from ``data/train_smiles/train_druglike.smi`` (every 400th
line), plus ethanol (too small for the prepare filter) and a two-fragment salt, built with
``conformer.data.build`` (6 ETKDG embeddings each). Then one conformer whose graph differs from
its molecule's SMILES is inserted into the first drug-like molecule's pickle, as GEOM has
conformers that reacted during CREST: a copy of its lowest-energy conformer with one ring bond
broken, given the highest Boltzmann weight so only the graph filter can remove it.

Usage: PYTHONPATH=. python scripts/make_fixture.py [--out tests/fixtures/geom_mini]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from rdkit import Chem

from conformer.data import geom
from conformer.data.build import BuildSettings, build_geom_folder, summary_entry

REPO = Path(__file__).resolve().parent.parent
EXTRA = ["CCO", "C[NH3+].[Cl-]"]
REACTED_GEOM_ID = 999_999_999


def break_ring_bond(mol: Chem.Mol) -> Chem.Mol:
    """A copy of ``mol`` (same atoms and coordinates) with its first ring C-C bond removed."""
    editable = Chem.RWMol(mol)
    for bond in mol.GetBonds():
        a, b = bond.GetBeginAtom(), bond.GetEndAtom()
        if bond.IsInRing() and not bond.GetIsAromatic() and a.GetSymbol() == "C" == b.GetSymbol():
            editable.RemoveBond(a.GetIdx(), b.GetIdx())
            out = editable.GetMol()
            Chem.SanitizeMol(out)
            return out
    raise ValueError("no non-aromatic ring C-C bond to break")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "tests/fixtures/geom_mini",
                        help="fixture folder (replaced)")
    args = parser.parse_args()
    lines = (REPO / "data/train_smiles/train_druglike.smi").read_text().split()
    chosen = lines[::400][:12]
    readme = (args.out / "README.md").read_text() if (args.out / "README.md").exists() else None
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    if readme:
        (args.out / "README.md").write_text(readme)
    smiles_file = args.out / "input.smi"
    smiles_file.write_text("# geom_mini fixture input (see scripts/make_fixture.py)\n"
                           + "\n".join(chosen + EXTRA) + "\n")
    settings = BuildSettings(n_confs=6, seed=7, name="drugs")
    build_geom_folder(smiles_file, args.out, settings, progress=False)

    summary = geom.read_summary(args.out, "drugs")
    for key in sorted(summary):  # first drug-like molecule with a breakable ring bond
        path = args.out / summary[key]["pickle_path"]
        molecule = geom.read_molecule_pickle(path)
        try:
            reacted = break_ring_bond(molecule["conformers"][0]["rd_mol"])
        except ValueError:
            continue
        top = max(c["boltzmannweight"] for c in molecule["conformers"])
        molecule["conformers"].append({**molecule["conformers"][0], "rd_mol": reacted,
                                       "geom_id": REACTED_GEOM_ID, "boltzmannweight": top + 0.1})
        geom.write_molecule_pickle(path, molecule)
        summary[key] = summary_entry(molecule, "drugs")
        print(f"inserted reacted conformer {REACTED_GEOM_ID} into {key}")
        break
    else:
        raise SystemExit("no molecule with a breakable ring bond")
    geom.atomic_write_json(args.out / "summary_drugs.json", summary)
    (args.out / "build_settings.json").unlink()  # holds an absolute input path
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
