"""``conformer generate INPUT --out OUT.sdf``: conformers for every molecule of a SMILES, CSV
or SDF file.

Every option, its default and its help come from a dataclass: the generation settings from
:class:`~conformer.generation.options.GenerateOptions` (shared with ``conformer.generate``),
input, output and reporting from :class:`GenerateCommandSettings`.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from conformer.cli_settings import add_settings_arguments, option, pick_settings

HELP = "generate conformers for a SMILES/CSV file and write an SDF"


@dataclasses.dataclass
class GenerateCommandSettings:
    """The options of ``conformer generate`` that say where to read and write; the settings of
    the generation itself are :class:`~conformer.generation.options.GenerateOptions`."""

    input: str = option(
        positional=True,
        help="a .smi/.txt file (SMILES and optional name per line, separated by blanks or "
             "tabs), a .csv with a 'smiles' column (optional: name, n_conformers, "
             "corrected_smiles; corrected_smiles is generated from when present), or an "
             ".sdf/.sdf.gz/.mol file (one molecule per record, with its hydrogens, stereo and "
             "title as name; failures.csv then gives record numbers). A binary file, or SDF "
             "text in a SMILES/CSV file, is refused")
    out: str = option(help="output SDF; failures go to OUT.failures.csv, the run's settings to "
                           "OUT.settings.json; rerun the same command to resume an interrupted "
                           "run")
    overwrite: bool = option(
        False, help="start OUT afresh (deleting OUT, OUT.failures.csv and OUT.settings.json) "
                    "instead of resuming it. Without it, a rerun whose settings (method, model "
                    "file sha256, conformer counts, seed, sampler, guidance, output options) "
                    "differ from those in OUT.settings.json stops with an error")
    summary: bool = option(False, help="print molecules, conformers, failures, stereo-correct "
                                       "rates (before and after correction) and time")
    summary_json: str | None = option(None, help="also write the summary (with settings and "
                                                 "versions) to this JSON")


def add_arguments(parser) -> None:
    from conformer.generation.options import GenerateOptions

    add_settings_arguments(parser, GenerateCommandSettings)
    add_settings_arguments(parser.add_argument_group(
        "generation settings (also the keyword arguments of conformer.generate)"),
        GenerateOptions)


def run(args) -> int:
    from conformer.generation import GenerateOptions, failures_path, generate_file
    from conformer.versions import environment_info

    command = pick_settings(GenerateCommandSettings, args)
    options = pick_settings(GenerateOptions, args)
    summary = generate_file(command.input, command.out, options, overwrite=command.overwrite)
    if command.summary:
        print(summary.text())
        if summary.failures:
            print(f"failures listed in {failures_path(command.out)}")
    if command.summary_json:
        with open(command.summary_json, "w") as handle:
            json.dump({"summary": summary.as_dict(), "settings": dataclasses.asdict(options),
                       "input": command.input, "out": command.out,
                       "environment": environment_info()}, handle, indent=2, default=str)
    print(f"wrote {summary.conformers} conformers of {summary.molecules} molecules to "
          f"{command.out}", file=sys.stderr)
    return 0
