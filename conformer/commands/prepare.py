"""``conformer prepare``: GEOM rdkit_folder -> filtered, featurised NPZ records + manifest.

Options, defaults and help come from :class:`PrepareCommandSettings` (inputs, outputs,
processes) and :class:`~conformer.data.prepare.PrepareSettings` (what the records depend on).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from conformer.cli_settings import add_settings_arguments, option, pick_settings
from conformer.data.prepare import CACHE_ENV, PrepareSettings

HELP = "filter and featurise a GEOM rdkit_folder into cached, versioned array records"


@dataclasses.dataclass
class PrepareCommandSettings:
    """How ``conformer prepare`` runs: what to read, where to write, how many processes. The
    settings the records depend on are :class:`~conformer.data.prepare.PrepareSettings`."""

    geom_dir: Path = option(positional=True, help="GEOM rdkit_folder (holds "
                                                  "summary_<dataset>.json and <dataset>/)")
    split: Path = option(help="GEOM split file (object array of train/val/test index arrays "
                              "into the sorted pickle list), e.g. data/geom/drugs/split0.npy; "
                              "read with an unpickler that builds numpy arrays only, so it "
                              "never runs code from the file (a pickle asking for anything "
                              "else is refused)")
    out: Path | None = option(None, help="cache folder; records go to "
                                         "<out>/<dataset>-<parameter hash>/<split>/",
                              default_text=f"${CACHE_ENV}")
    workers: int = option(1, help="worker processes")
    shard: str = option("0/1", help="process only shard i of n (0-based, 'i/n'); the merged "
                                    "manifest appears when every shard has finished")
    allow_split_subset: bool = option(False, help="accept a split that indexes fewer molecules "
                                                  "than there are pickles")
    progress: bool = option(True, flag="--no-progress", help="hide the progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser, PrepareCommandSettings)
    add_settings_arguments(parser.add_argument_group(
        "record settings (in the cache folder's parameter hash)"), PrepareSettings)


def run(args: argparse.Namespace) -> int:
    from conformer.data.prepare import parse_shard, prepare
    from conformer.errors import UserInputError

    command = pick_settings(PrepareCommandSettings, args)
    settings = pick_settings(PrepareSettings, args)
    if settings.max_confs < 1:
        raise UserInputError(f"--max-confs {settings.max_confs}: must be >= 1")
    prepare(command.geom_dir, command.split, command.out, settings, workers=command.workers,
            shard=parse_shard(command.shard), allow_split_subset=command.allow_split_subset,
            progress=command.progress)
    return 0
