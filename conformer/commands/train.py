"""``conformer train --config configs/experiment/NAME.yaml [key.sub=value ...]``."""

from __future__ import annotations

import json

HELP = "train a diffusion model from a YAML config (Lightning; one GPU or many nodes)"


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True,
                        help="experiment YAML, e.g. configs/experiment/drugs_recm.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied after the file, e.g. optim.lr=3e-4 "
                             "trainer.max_steps=100 data.cache_dir=cache/prepared")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run from RUN_DIR/NAME/checkpoints/last.ckpt")
    parser.add_argument("--export-to", metavar="MODEL.pt", default=None,
                        help="after training, write the exported EMA model (for `conformer "
                             "generate --ckpt`) to this file")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as JSON and exit without training")


def run(args) -> int:
    from conformer.config import load_config

    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    from conformer.train.run import train

    result = train(config, resume=args.resume)
    print(json.dumps(result, indent=2))
    if args.export_to:
        from conformer.model_io import export_checkpoint

        meta = export_checkpoint(result["last_checkpoint"], args.export_to)
        print(f"exported EMA model of step {meta['training']['global_step']} to {args.export_to}")
    return 0
