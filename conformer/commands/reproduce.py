"""``conformer reproduce``: re-run a benchmark experiment with one command.

Targets: ``nbody`` (the RECM property run on a synthetic N-body task, every mode x eps x seed),
``drugs`` (the GEOM-Drugs table) and ``chirality`` (RECM vs the stereo label's parity on
self-built chiral molecules, issue 11). Each target's options, defaults and help come from its
settings dataclass (:class:`~conformer.experiments.nbody.NBodySettings`,
:class:`~conformer.experiments.drugs.DrugsSettings`); the experiment function takes it.
"""

from __future__ import annotations

from conformer.cli_settings import add_settings_arguments, settings_from_args

HELP = "re-run a benchmark experiment (nbody property run, drugs table, chirality)"
TARGETS = ("nbody", "drugs", "chirality")


def _settings_classes() -> dict:
    from conformer.experiments.chirality import ChiralitySettings
    from conformer.experiments.drugs.settings import DrugsSettings
    from conformer.experiments.nbody import NBodySettings

    return {"nbody": NBodySettings, "drugs": DrugsSettings, "chirality": ChiralitySettings}


def add_arguments(parser) -> None:
    parser.add_argument("target", choices=TARGETS,
                        help="experiment: nbody (RECM properties, synthetic), drugs (GEOM) or "
                             "chirality (stereo label parity x RECM, self-built molecules)")
    classes = _settings_classes()
    add_settings_arguments(parser, *classes.values(), labels=tuple(classes))


def run(args) -> int:
    settings = settings_from_args(_settings_classes()[args.target], args,
                                  ignore=("verb", "target"),
                                  command=f"reproduce {args.target}")
    if args.target == "chirality":
        from conformer.experiments import chirality

        return int(chirality.run(settings) or 0)
    if args.target == "drugs":
        from conformer.experiments import drugs

        return int(drugs.run(settings) or 0)
    from conformer.experiments import nbody

    return int(nbody.run(settings) or 0)
