"""The ``conformer`` console script: one verb per subcommand.

Each verb lives in ``conformer/commands/<verb>.py`` and exposes ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported only for the verb that
runs, so ``conformer --help`` stays fast and a heavy import never slows an unrelated verb.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from conformer import __version__
from conformer.errors import UserInputError

# verb -> module under conformer.commands; the order is the order shown in --help.
VERBS = {
    "build-geom": "build_geom",
    "prepare": "prepare",
    "train": "train",
    "generate": "generate",
    "evaluate": "evaluate",
    "reproduce": "reproduce",
}

# One line per verb for the top-level help, kept here so `--help` imports no verb module.
VERB_HELP = {
    "build-geom": "build a GEOM-layout rdkit_folder from a SMILES file with RDKit",
    "prepare": "filter and featurise a GEOM rdkit_folder into cached, versioned array records",
    "train": "train a diffusion model from a YAML config (Lightning; one GPU or many nodes)",
    "generate": "generate conformers for a SMILES/CSV file and write an SDF",
    "evaluate": "COV/MAT of generated conformers against reference conformers",
    "reproduce": "re-run a benchmark experiment (nbody property run, drugs table)",
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``verb``'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="conformer",
        description="Generate, train and evaluate 3D molecular conformers (E(3) diffusion + RECM).",
    )
    parser.add_argument("--version", action="version", version=f"conformer {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, module_name in VERBS.items():
        verb_parser = sub.add_parser(name, help=VERB_HELP[name], description=VERB_HELP[name])
        if name == verb:
            module = importlib.import_module(f"conformer.commands.{module_name}")
            module.add_arguments(verb_parser)
            verb_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(verb if verb in VERBS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if verb is None else 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except UserInputError as error:
        print(f"conformer {verb}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
