"""``conformer evaluate``: COV/MAT of generated conformers against reference conformers.

Options, defaults and help come from :class:`EvaluateCommandSettings` (inputs, outputs,
processes, extra reports) and :class:`~conformer.evaluate.evaluator.EvaluationSettings` (every
choice the numbers depend on, recorded in results.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from conformer.cli_settings import add_settings_arguments, option, pick_settings
from conformer.evaluate.evaluator import EvaluationSettings

HELP = "COV/MAT of generated conformers against reference conformers"


@dataclasses.dataclass
class EvaluateCommandSettings:
    """How ``conformer evaluate`` runs: what it reads and writes, processes, extra reports."""

    generated: Path = option(help="SDF written by `conformer generate` (one record per "
                                  "conformer, properties name and smiles)")
    references: Path = option(help="reference conformers: a multi-record SDF (.sdf/.sdf.gz) "
                                   "grouped by --ref-key, a GEOM rdkit_folder (with --test-csv), "
                                   "or a test_mols.pkl-style dict SMILES -> molecules (a pickle: "
                                   "trusted files only)")
    out: Path = option(help="output folder: results.json, table.md, rmsd.npz and the coverage "
                            "plot (see --plot)")
    test_csv: Path | None = option(None, help="test molecules (smiles,n_conformers) when "
                                              "--references is a GEOM rdkit_folder")
    workers: int = option(1, help="worker processes for the RMSD matrices (forked)")
    posebusters: bool = option(
        False, help="also run PoseBusters' molecule checks on every generated record "
                    "(OUT/posebusters.csv and the pass rate), beside the project's own validity "
                    "checks; needs the optional posebusters package "
                    "(pip install 'conformer[posebusters]')")
    plot: str = option("svg", choices=("svg", "png", "none"),
                       help="coverage plot: svg writes OUT/coverage.svg directly (about a "
                            "millisecond), png OUT/coverage.png with matplotlib (about half a "
                            "second more, its import and drawing), none skips it")
    progress: bool = option(True, flag="--no-progress", help="hide the progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, EvaluateCommandSettings)
    add_settings_arguments(parser.add_argument_group(
        "evaluation settings (recorded in results.json)"), EvaluationSettings)


def run(args: argparse.Namespace) -> int:
    from conformer.errors import UserInputError
    from conformer.evaluate.evaluator import detect_group_key, evaluate, load_references
    from conformer.evaluate.metrics import format_table

    command = pick_settings(EvaluateCommandSettings, args)
    if not command.generated.is_file():
        raise UserInputError(f"--generated {command.generated}: file not found")
    if command.posebusters:  # before any work: a missing package is one clear line
        from conformer.evaluate.validity import require_posebusters

        require_posebusters()
    settings = pick_settings(EvaluationSettings, args)  # the threshold follows the dataset
    if not settings.threshold > 0:
        raise UserInputError(f"--threshold {settings.threshold}: must be > 0")
    if command.workers < 1:
        raise UserInputError(f"--workers {command.workers}: must be >= 1")
    if settings.max_matches < 1:
        raise UserInputError(f"--max-matches {settings.max_matches}: must be >= 1")
    ref_key = getattr(args, "ref_key", None)  # not given: detected from an SDF's records
    if ref_key is None and command.references.is_file() and \
            command.references.name.endswith((".sdf", ".sdf.gz")):
        ref_key = detect_group_key(command.references, "--references")
    settings = dataclasses.replace(settings, ref_key=ref_key or EvaluationSettings.ref_key)
    references = load_references(command.references, ref_key, command.test_csv,
                                 settings.dataset)
    if not references:
        raise UserInputError(f"--references {command.references}: no reference conformers "
                             "found")
    document = evaluate(command.generated, references, command.out, settings,
                        workers=command.workers, progress=command.progress, plot=command.plot,
                        extra_settings={"references": str(command.references),
                                        "test_csv": str(command.test_csv)
                                        if command.test_csv else None})
    for warning in document["warnings"]:
        print(f"conformer evaluate: warning: {warning}", file=sys.stderr)
    print(format_table(document["metrics"]))
    if command.posebusters:
        from conformer.evaluate.validity import posebusters_report

        report = posebusters_report(command.generated, command.out / "posebusters.csv")
        passed = report["all_checks_passed"]
        print(f"PoseBusters: {report['conformers']} conformers, "
              f"{'n/a' if passed is None else f'{100 * passed:.1f}%'} pass every check "
              f"(per check: {command.out / 'posebusters.csv'})")
    print(f"failures: {document['n_failures']} (listed in {command.out / 'results.json'})")
    return 0
