"""Write the golden RMSD / COV-MAT set used by tests/test_rmsd.py (the regeneration switch).

Ten Hutchison molecules (chosen to include carboxylic acids, whose terminal O atoms GetBestRMS
symmetrises, and molecules with hundreds of symmetry matches), three reference conformers each,
and four ETKDGv3 conformers per molecule generated from the isomeric SMILES (fixed seeds). The
generated coordinates are stored, so the golden matrix does not depend on ETKDG's version; the
matrix is computed pair by pair with ``rdMolAlign.GetBestRMS(ref, gen)`` on heavy-atom copies.

Regenerate (after an intended change of RDKit or the evaluator), then review the diff:

    PYTHONPATH=. .venv/bin/python scripts/make_golden_rmsd.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rdkit import Chem, rdBase

from conformer.baselines import generate_rdkit
from conformer.evaluate.metrics import aggregate, molecule_scores
from conformer.evaluate.rmsd import get_best_rms_reference
from conformer.sdf_io import ConformerSDFWriter, read_conformer_groups

MOLECULES = ("astex_1g9v", "astex_1gm8", "astex_1jje", "astex_1l7f", "omegapdb_2fm0",
             "omegapdb_2h03", "omegacsd_ABSBPP", "astex_1t9b", "omegacsd_JUVPAR",
             "omegapdb_1hyo")
N_REF, N_GEN, THRESHOLD = 3, 4, 0.75
GOLDEN = Path("tests/golden")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--references", type=Path,
                        default=Path("data/hutchison/hutchison_conformers.sdf.gz"),
                        help="Hutchison SDF (default data/hutchison/hutchison_conformers.sdf.gz)")
    parser.add_argument("--out", type=Path, default=GOLDEN, help="golden folder")
    args = parser.parse_args(argv)
    groups = read_conformer_groups(args.references, key="molecule")
    args.out.mkdir(parents=True, exist_ok=True)
    ref_writer = Chem.SDWriter(str(args.out / "rmsd_refs.sdf"))
    with ConformerSDFWriter(args.out / "rmsd_gens.sdf") as gen_writer:
        for line, name in enumerate(MOLECULES, start=1):
            refs = groups[name][:N_REF]
            for ref in refs:
                ref_writer.write(ref)
            smiles = Chem.MolToSmiles(refs[0])
            gen = generate_rdkit(Chem.MolFromSmiles(smiles), N_GEN, seed=1000 + line)
            gen_writer.write_molecule(gen, name, smiles, line)
    ref_writer.close()
    # The matrix is computed from the files as written (SDF keeps 4 decimals), not from memory.
    stored_refs = read_conformer_groups(args.out / "rmsd_refs.sdf", key="molecule")
    stored_gens = read_conformer_groups(args.out / "rmsd_gens.sdf", key="name")
    matrices, scores = {}, []
    for name in MOLECULES:
        matrix = np.array([[get_best_rms_reference(ref, gen) for gen in stored_gens[name]]
                           for ref in stored_refs[name]])
        matrices[name] = matrix.tolist()
        scores.append(molecule_scores(name, matrix, THRESHOLD))
    document = {
        "description": "GetBestRMS(ref, gen) on heavy atoms; rows: refs (rmsd_refs.sdf order "
                       "within molecule), columns: generated conformers (rmsd_gens.sdf)",
        "rdkit": rdBase.rdkitVersion, "threshold": THRESHOLD,
        "rmsd": matrices,
        "per_molecule": [s.as_dict() for s in scores],
        "metrics": aggregate(scores, THRESHOLD),
    }
    (args.out / "rmsd_golden.json").write_text(json.dumps(document, indent=1))
    print(f"wrote {args.out}/rmsd_refs.sdf, rmsd_gens.sdf, rmsd_golden.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
