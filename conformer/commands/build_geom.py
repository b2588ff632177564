"""``conformer build-geom``: a GEOM-layout rdkit_folder from a SMILES file (RDKit, optional xTB).

Options, defaults and help come from :class:`BuildCommandSettings` (input, output, processes,
split) and :class:`~conformer.data.build.BuildSettings` (what the conformers depend on).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from conformer.cli_settings import add_settings_arguments, option, pick_settings
from conformer.data.build import DEFAULT_SPLIT_FRACTIONS, BuildSettings

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


@dataclasses.dataclass
class BuildCommandSettings:
    """How ``conformer build-geom`` runs: input, output, processes, split. The settings the
    conformers depend on are :class:`~conformer.data.build.BuildSettings`."""

    smiles_file: Path = option(positional=True,
                               help="text file, one SMILES (optionally followed by a name) per "
                                    "line; blank lines and lines starting with '#' are skipped")
    out: Path = option(help="output rdkit_folder (created; rerun the same command to resume)")
    workers: int = option(1, help="worker processes")
    split_fractions: tuple[float, float, float] = option(
        DEFAULT_SPLIT_FRACTIONS, parse=_fractions,
        help="train,val,test fractions for split.npy",
        default_text=",".join(str(f) for f in DEFAULT_SPLIT_FRACTIONS))
    progress: bool = option(True, flag="--no-progress", help="hide the progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, BuildCommandSettings)
    add_settings_arguments(parser.add_argument_group(
        "build settings (recorded in OUT/build_settings.json)"), BuildSettings)


def run(args: argparse.Namespace) -> int:
    from conformer.data.build import build_geom_folder

    command = pick_settings(BuildCommandSettings, args)
    settings = pick_settings(BuildSettings, args)
    report = build_geom_folder(command.smiles_file, command.out, settings,
                               workers=command.workers, split_fractions=command.split_fractions,
                               progress=command.progress)
    print(f"build-geom: built {report.built}, already present {report.skipped_existing}, "
          f"failed {report.failed} (see {command.out / 'failures.csv'}); "
          f"{report.molecules_in_folder} molecules in {command.out / settings.name}")
    return 0
