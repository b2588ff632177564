"""``conformer evaluate``: COV/MAT of generated conformers against reference conformers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "COV/MAT of generated conformers against reference conformers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", type=Path, required=True,
                        help="SDF written by `conformer generate` (one record per conformer, "
                             "properties name and smiles)")
    parser.add_argument("--references", type=Path, required=True,
                        help="reference conformers: a multi-record SDF (.sdf/.sdf.gz) grouped by "
                             "--ref-key, a GEOM rdkit_folder (with --test-csv), or a "
                             "test_mols.pkl-style dict SMILES -> molecules (a pickle: trusted files only)")
    parser.add_argument("--out", type=Path, required=True,
                        help="output folder: results.json, table.md, coverage.png, rmsd.npz")
    parser.add_argument("--ref-key", default=None,
                        help="SDF property that groups reference records (default: the first of "
                             "'molecule' (GEOM, Hutchison) and 'name' (`conformer generate` "
                             "output) the records have, else their title line)")
    parser.add_argument("--dataset", choices=("drugs", "qm9"), default="drugs",
                        help="sets the default threshold (drugs 0.75 A, qm9 0.5 A) and the GEOM "
                             "summary file to read (default drugs)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="COV threshold delta in Angstrom, strict < (default from --dataset)")
    parser.add_argument("--test-csv", type=Path, default=None,
                        help="test molecules (smiles,n_conformers) when --references is a GEOM "
                             "rdkit_folder")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes for the RMSD matrices (forked; default 1)")
    parser.add_argument("--max-matches", type=int, default=1_000_000,
                        help="cap on symmetry matches per molecule, as GetBestRMS's maxMatches "
                             "(default 1000000, GetBestRMS's default)")
    parser.add_argument("--no-symmetrize-terminal-groups", action="store_true",
                        help="do not treat the O/N of conjugated terminal groups (carboxylate, "
                             "nitro) as interchangeable (GetBestRMS does by default)")
    parser.add_argument("--validity-confs", type=int, default=4,
                        help="generated conformers per molecule checked for validity (MMFF "
                             "bonds/angles, clashes, stereo); 0 skips (default 4)")
    parser.add_argument("--only-generated", action="store_true",
                        help="evaluate only reference molecules that have generated records "
                             "(partial runs); recorded in the settings")
    parser.add_argument("--posebusters", action="store_true",
                        help="also run PoseBusters' molecule checks on every generated record "
                             "(OUT/posebusters.csv and the pass rate), beside the project's own "
                             "validity checks; needs the optional posebusters package "
                             "(pip install 'conformer[posebusters]')")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from conformer.errors import UserInputError
    from conformer.evaluate.evaluator import (
        EvaluationSettings,
        detect_group_key,
        evaluate,
        load_references,
    )
    from conformer.evaluate.metrics import THRESHOLDS, format_table

    if not args.generated.is_file():
        raise UserInputError(f"--generated {args.generated}: file not found")
    if args.posebusters:  # before any work: a missing package is one clear line
        from conformer.evaluate.validity import require_posebusters

        require_posebusters()
    threshold = THRESHOLDS[args.dataset] if args.threshold is None else args.threshold
    if not threshold > 0:
        raise UserInputError(f"--threshold {threshold}: must be > 0")
    if args.workers < 1:
        raise UserInputError(f"--workers {args.workers}: must be >= 1")
    if args.max_matches < 1:
        raise UserInputError(f"--max-matches {args.max_matches}: must be >= 1")
    ref_key = args.ref_key
    if ref_key is None and args.references.is_file() and \
            args.references.name.endswith((".sdf", ".sdf.gz")):
        ref_key = detect_group_key(args.references, "--references")
    settings = EvaluationSettings(
        threshold=threshold, dataset=args.dataset, ref_key=ref_key or "molecule",
        max_matches=args.max_matches,
        symmetrize_conjugated_terminal_groups=not args.no_symmetrize_terminal_groups,
        only_generated=args.only_generated, validity_confs_per_molecule=args.validity_confs)
    references = load_references(args.references, ref_key, args.test_csv, args.dataset)
    if not references:
        raise UserInputError(f"--references {args.references}: no reference conformers found")
    document = evaluate(args.generated, references, args.out, settings, workers=args.workers,
                        progress=not args.no_progress,
                        extra_settings={"references": str(args.references),
                                        "test_csv": str(args.test_csv) if args.test_csv else None})
    for warning in document["warnings"]:
        print(f"conformer evaluate: warning: {warning}", file=sys.stderr)
    print(format_table(document["metrics"]))
    if args.posebusters:
        from conformer.evaluate.validity import posebusters_report

        report = posebusters_report(args.generated, args.out / "posebusters.csv")
        passed = report["all_checks_passed"]
        print(f"PoseBusters: {report['conformers']} conformers, "
              f"{'n/a' if passed is None else f'{100 * passed:.1f}%'} pass every check "
              f"(per check: {args.out / 'posebusters.csv'})")
    print(f"failures: {document['n_failures']} (listed in {args.out / 'results.json'})")
    return 0
