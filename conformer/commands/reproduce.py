"""``conformer reproduce``: re-run a benchmark experiment with one command.

Targets: ``nbody`` (the RECM property run on a synthetic N-body task, every mode x eps x seed)
and ``drugs`` (the GEOM-Drugs table, provided by ``conformer.experiments.drugs``).
"""

from __future__ import annotations

import importlib

from conformer.errors import UserInputError
from conformer.recm import MODES

HELP = "re-run a benchmark experiment (nbody property run, drugs table)"
TARGETS = ("nbody", "drugs")


def add_arguments(parser) -> None:
    parser.add_argument("target", choices=TARGETS,
                        help="experiment: nbody (RECM properties, synthetic) or drugs (GEOM)")
    parser.add_argument("--out", required=True,
                        help="output directory (results.json, table.md, gamma.png); rerunning "
                             "with the same settings resumes, skipping finished runs")
    parser.add_argument("--preset", default="tiny",
                        help="size preset: tiny (minutes on a CPU) or small; drugs also has "
                             "micro (a smoke run) and paper (GEOM-Drugs, needs --geom-dir) "
                             "(default: tiny)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of seeds per (mode, eps) for nbody, per method for drugs "
                             "(default: 2 for nbody; drugs: the preset's, 2 for tiny)")
    parser.add_argument("--eps", default="0,0.1,0.3,1.0",
                        help="comma-separated symmetry-breaking strengths (external field "
                             "along z) (default: 0,0.1,0.3,1.0)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated modes to compare (default: {','.join(MODES)}); "
                             "drugs always adds the RDKit rows etkdg and etkdg-mmff unless "
                             "--no-baselines")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimiser steps per run (default: the preset's)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs trained in parallel processes; drugs also builds and "
                             "prepares its data with this many processes (default: 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (default: 1)")
    parser.add_argument("--geom-dir", default=None,
                        help="drugs --preset paper: the GEOM-Drugs rdkit_folder (holds "
                             "summary_drugs.json and drugs/); other presets build their own data")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="drugs: skip the RDKit ETKDG and ETKDG+MMFF rows")


def run(args) -> int:
    if args.target == "drugs":
        try:
            module = importlib.import_module("conformer.experiments.drugs")
        except ModuleNotFoundError as error:
            if error.name != "conformer.experiments.drugs":
                raise
            raise UserInputError(
                "reproduce drugs: not available yet in this version "
                "(conformer.experiments.drugs is missing)") from None
        return int(module.run(args) or 0)
    from conformer.experiments import nbody

    if args.seeds is None:
        args.seeds = 2
    return nbody.run(args)
