"""Pick drug-sized validation SMILES for recipe ablations from the MOSES test set.

Why: the ablation's first validation molecules came from the training list's own val split,
whose molecules are small and rigid (median 16 heavy atoms), while the benchmark molecules are
larger and more flexible, and the bundled model's coverage falls with size (Hutchison: COV-R
about 55% at 15-20 heavy atoms, 9% at 25-30). A recipe that helps on small molecules need not
help where the model fails, so ablations are also scored on molecules of benchmark size.

Source: ``moses/dataset/data/test.csv.gz`` of the ``molsets`` wheel (MOSES, Polykovskiy et al.
2020, MIT licence; ZINC clean leads, MW 250-350, at most 7 rotatable bonds). Filters, in order:
parses; one fragment; ``--min-heavy``..``--max-heavy`` heavy atoms; ``--min-rotatable``..7
rotatable bonds; elements in {H,C,N,O,F,S,Cl,Br,P,I}; InChIKey skeleton (first block) not among
``data/train_smiles/excluded_inchikeys.txt`` (GEOM-Drugs test and Hutchison molecules) nor
among the training list's skeletons. Then ``--count`` molecules drawn at random with ``--seed``.

Usage:
    pip download molsets --no-deps -d /tmp/molsets
    unzip -j /tmp/molsets/molsets-*.whl 'moses/dataset/data/test.csv.gz' -d /tmp/molsets
    python scripts/select_validation_smiles.py --moses-csv /tmp/molsets/test.csv.gz \
        --out data/validation/val_druglike.smi
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rdkit import RDLogger
from select_training_smiles import REPO, draw, first_blocks, moses_candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moses-csv", type=Path, required=True,
                        help="MOSES test.csv.gz (one SMILES column with a header)")
    parser.add_argument("--out", type=Path, default=REPO / "data/validation/val_druglike.smi",
                        help="output SMILES file (one SMILES and a name per line)")
    parser.add_argument("--count", type=int, default=40, help="molecules to draw")
    parser.add_argument("--min-heavy", type=int, default=21, help="fewest heavy atoms")
    parser.add_argument("--max-heavy", type=int, default=40, help="most heavy atoms")
    parser.add_argument("--min-rotatable", type=int, default=4,
                        help="fewest rotatable bonds (RDKit CalcNumRotatableBonds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draw")
    args = parser.parse_args()
    RDLogger.DisableLog("rdApp.*")
    excluded = {k.split("-")[0] for k in
                (REPO / "data/train_smiles/excluded_inchikeys.txt").read_text().split()}
    excluded |= first_blocks(REPO / "data/train_smiles/train_druglike.smi")
    candidates, counts = moses_candidates(
        args.moses_csv, excluded, min_heavy=args.min_heavy, max_heavy=args.max_heavy,
        # no upper limit: MOSES keeps <= 7 rotatable bonds by its own count, RDKit's finds 4
        # molecules with more, which the committed draw (seed 0) was made with
        min_rotatable=args.min_rotatable, max_rotatable=10**6)
    picks = draw(args.count, len(candidates), args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as handle:
        for index in picks:
            handle.write(f"{candidates[index]} moses_test_{index}\n")
    print(f"{len(candidates)} candidates; wrote {len(picks)} to {args.out}")
    for reason, count in counts.items():
        print(f"  {reason}: {count}")


if __name__ == "__main__":
    main()
