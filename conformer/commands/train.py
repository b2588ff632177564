"""``conformer train --config configs/experiment/NAME.yaml [key.sub=value ...]``.

Options, defaults and help come from ``conformer.config.TrainCommandSettings``; ``--help`` ends
with every config key and its default (``conformer.config.config_keys_help``).
"""

from __future__ import annotations

import argparse
import json

from conformer.cli_settings import add_settings_arguments, settings_from_args

HELP = "train a diffusion model from a YAML config (Lightning; one GPU or many nodes)"


def add_arguments(parser) -> None:
    from conformer.config import TrainCommandSettings, config_keys_help

    add_settings_arguments(parser, TrainCommandSettings)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied after the file, e.g. optim.lr=3e-4 "
                             "trainer.max_steps=100 data.cache_dir=cache/prepared (keys below)")
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the key list's lines
    parser.epilog = config_keys_help()


def run(args) -> int:
    from conformer.config import TrainCommandSettings, load_config

    settings = settings_from_args(TrainCommandSettings, args, ignore=("verb",),
                                  command="train")
    config = load_config(settings.config, settings.overrides)
    if settings.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    from conformer.train.run import train

    result = train(config, resume=settings.resume)
    print(json.dumps(result, indent=2))
    if settings.export_to:
        from conformer.model_io import export_checkpoint

        meta = export_checkpoint(result["last_checkpoint"], settings.export_to)
        print(f"exported EMA model of step {meta['training']['global_step']} "
              f"to {settings.export_to}")
    return 0
