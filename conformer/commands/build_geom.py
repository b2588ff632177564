"""``conformer build-geom``: a GEOM-layout rdkit_folder from a SMILES file (RDKit, optional xTB)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build a GEOM-layout rdkit_folder from a SMILES file with RDKit"


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers like 0.8,0.1,0.1"
                                         ) from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected exactly three fractions")
    return values  # type: ignore[return-value]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("smiles_file", type=Path,
                        help="text file, one SMILES (optionally followed by a name) per line; "
                             "blank lines and lines starting with '#' are skipped")
    parser.add_argument("--out", type=Path, required=True,
                        help="output rdkit_folder (created; rerun the same command to resume)")
    parser.add_argument("--confs", type=int, default=30,
                        help="ETKDGv3 embeddings per molecule before the energy window and "
                             "de-duplication (default 30)")
    parser.add_argument("--seed", type=int, default=1,
                        help="run seed; per-molecule non-zero ETKDG seeds and the split derive "
                             "from it (default 1)")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (default 1)")
    parser.add_argument("--energy-window", type=float, default=6.0,
                        help="keep conformers within this many kcal/mol of the lowest (default 6)")
    parser.add_argument("--rmsd-threshold", type=float, default=0.5,
                        help="heavy-atom RMSD in Angstrom below which two conformers are "
                             "duplicates (default 0.5)")
    parser.add_argument("--xtb", action="store_true",
                        help="refine geometries and energies with GFN2-xTB (needs tblite)")
    parser.add_argument("--name", default="drugs",
                        help="dataset name: writes summary_<name>.json and <name>/ (default drugs)")
    parser.add_argument("--split-fractions", type=_fractions, default=(0.8, 0.1, 0.1),
                        help="train,val,test fractions for split.npy (default 0.8,0.1,0.1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from conformer.data.build import BuildSettings, build_geom_folder

    settings = BuildSettings(n_confs=args.confs, seed=args.seed,
                             energy_window=args.energy_window,
                             rmsd_threshold=args.rmsd_threshold, xtb=args.xtb, name=args.name)
    report = build_geom_folder(args.smiles_file, args.out, settings, workers=args.workers,
                               split_fractions=args.split_fractions,
                               progress=not args.no_progress)
    print(f"build-geom: built {report.built}, already present {report.skipped_existing}, "
          f"failed {report.failed} (see {args.out / 'failures.csv'}); "
          f"{report.molecules_in_folder} molecules in {args.out / args.name}")
    return 0
