"""``conformer prepare``: GEOM rdkit_folder -> filtered, featurised NPZ records + manifest."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "filter and featurise a GEOM rdkit_folder into cached, versioned array records"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("geom_dir", type=Path,
                        help="GEOM rdkit_folder (holds summary_<dataset>.json and <dataset>/)")
    parser.add_argument("--split", type=Path, required=True,
                        help="GEOM split file (object array of train/val/test index arrays into "
                             "the sorted pickle list), e.g. data/geom/drugs/split0.npy; read with "
                             "an unpickler that builds numpy arrays only, so it never runs code "
                             "from the file (a pickle asking for anything else is refused)")
    parser.add_argument("--out", type=Path, default=None,
                        help="cache folder (default: $CONFORMER_CACHE); records go to "
                             "<out>/<dataset>-<parameter hash>/<split>/")
    parser.add_argument("--dataset", default="drugs",
                        help="dataset folder name inside geom_dir: drugs or qm9 (default drugs)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--shard", default="0/1",
                        help="process only shard i of n (0-based, 'i/n'); the merged manifest "
                             "appears when every shard has finished (default 0/1)")
    parser.add_argument("--max-confs", type=int, default=30,
                        help="keep at most this many conformers per molecule, highest "
                             "Boltzmann weight first (default 30)")
    parser.add_argument("--min-heavy-atoms", type=int, default=4,
                        help="drop molecules with fewer heavy atoms (default 4)")
    parser.add_argument("--allow-split-subset", action="store_true",
                        help="accept a split that indexes fewer molecules than there are pickles")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    from conformer.data.prepare import PrepareSettings, parse_shard, prepare
    from conformer.errors import UserInputError

    if args.max_confs < 1:
        raise UserInputError(f"--max-confs {args.max_confs}: must be >= 1")
    settings = PrepareSettings(dataset=args.dataset, max_confs=args.max_confs,
                               min_heavy_atoms=args.min_heavy_atoms)
    prepare(args.geom_dir, args.split, args.out, settings, workers=args.workers,
            shard=parse_shard(args.shard), allow_split_subset=args.allow_split_subset,
            progress=not args.no_progress)
    return 0
