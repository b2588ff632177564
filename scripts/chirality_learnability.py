"""Is handedness learnable at all? Train the chirality experiment's network on a few labelled
molecules and their mirror images (R and S swapped), then ask whether it uses the label.

Training is ``reproduce chirality``'s (``conformer.experiments.chirality.fit``: EDM loss, Adam,
cosine learning rate, the preset's batch size), on the chosen training molecules of a built
``data.pt`` plus, by default, each one's enantiomer (``mirror_molecule``: conformers
reflected, R <-> S); the network is the preset's with the CIP neighbour ranks and the parity
read-out, the label as ``--parity``. Measured, with the true label and with it swapped:

- probe: the fraction of labelled centres whose signed volume in the denoised estimate
  D(x + sigma n; sigma) has the wanted sign, with the true label and with R and S swapped in
  the input (``denoised_sign_accuracy``), at each ``--probe-sigmas`` (Angstrom);
- stereo: unguided samples (no guidance, no correction; ``unguided_stereo``) whose centres are
  right, with the true label and with it swapped.

Both are measured on (at most ``--eval-train`` of) the training molecules and, with
``--eval-val N``, on the first N held-out molecules of ``--data`` as well (no mirrors there:
the swapped label is the test). A model that learnt handedness scores near 1 with the true
label and near 0 with the swapped one, in both. Writes one JSON to ``--out``. Example: build
the tiny preset's molecules once (``conformer reproduce chirality --preset tiny --out DIR``
writes ``DIR/data.pt``; ``--steps 1 --seeds 1 --modes equivariant/0o`` keeps that quick),
then train on one molecule, (S)-1-(4-fluorophenyl)ethanol (training molecule 23 of that data),
and its mirror with the configuration that learns it:

    python scripts/chirality_learnability.py --data DIR/data.pt --molecules 23 --steps 1000 \\
        --odd-gates --node-cross-products --cip-rank-out-edges --volume-loss 10 \\
        --out one.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from conformer.diffusion import EDMDiffusion, EDMSettings
from conformer.errors import UserInputError
from conformer.experiments import chirality
from conformer.experiments.common import override_value
from conformer.versions import environment_info


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data.pt of `conformer reproduce "
                        "chirality` (its 'train' molecules are used)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--molecules", default="23",
                       help="comma-separated indices of training molecules (default: 23)")
    which.add_argument("--first", type=int, help="the first N training molecules instead")
    parser.add_argument("--no-mirror", action="store_true",
                        help="train on the molecules only, not also on their mirror images")
    parser.add_argument("--mode", default="equivariant", help="RECM mode (default equivariant)")
    parser.add_argument("--parity", default="0o", choices=("0e", "0o"),
                        help="how the R/S label enters (default 0o)")
    parser.add_argument("--preset", default="tiny64", choices=sorted(chirality.PRESETS),
                        help="chirality preset: network, batch size, learning rate (default "
                        "tiny64, the preset of the documented learnability runs; its options "
                        "are this script's own)")
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps (default 1000)")
    parser.add_argument("--learning-rate", type=float, help="default: the preset's")
    parser.add_argument("--batch-size", type=int, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--odd-gates", action="store_true", help="DenoiserConfig.odd_gates")
    parser.add_argument("--node-cross-products", action="store_true",
                        help="DenoiserConfig.node_cross_products")
    parser.add_argument("--cip-rank-out-edges", action="store_true",
                        help="DenoiserConfig.cip_rank_out_edges (preset field of the same name)")
    parser.add_argument("--volume-loss", type=float, default=0.0,
                        help="weight of the signed-volume hinge (default 0: none)")
    parser.add_argument("--p-mean", type=float, default=EDMSettings.p_mean,
                        help="log-normal training sigma: mean of ln(sigma / sigma_data) "
                        f"(default {EDMSettings.p_mean}; sigma_data {EDMSettings.sigma_data} A)")
    parser.add_argument("--p-std", type=float, default=EDMSettings.p_std,
                        help=f"... and its standard deviation (default {EDMSettings.p_std})")
    parser.add_argument("--denoiser-override", action="append", default=[],
                        metavar="NAME=VALUE", help="a DenoiserConfig field, e.g. num_layers=3 "
                        "or scalar_channels=32 (integers, floats or true/false); repeatable")
    parser.add_argument("--samples", type=int, default=16,
                        help="unguided samples per molecule and label (default 16)")
    parser.add_argument("--sample-steps", help="Heun steps of the unguided samples, "
                        "comma-separated for several (default: the preset's)")
    parser.add_argument("--eval-train", type=int, help="measure on at most this many of the "
                        "training molecules (each with its mirror when mirrored; default all)")
    parser.add_argument("--eval-val", type=int, default=0, help="also measure on this many "
                        "held-out ('val') molecules of --data (default 0: none)")
    parser.add_argument("--save-model", help="also save the trained (exported) network here "
                        "(torch.save of the module)")
    parser.add_argument("--probe-sigmas", default="0.5,1,2,4",
                        help="noise levels of the probe, Angstrom (default 0.5,1,2,4)")
    parser.add_argument("--probe-repeats", type=int, default=8,
                        help="noise draws per conformer in the probe (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    return parser.parse_args(argv)




def select(args, train: list[dict]) -> list[int]:
    if args.first is not None:
        if not 1 <= args.first <= len(train):
            raise UserInputError(f"--first {args.first}: choose 1..{len(train)}")
        return list(range(args.first))
    try:
        indices = [int(part) for part in args.molecules.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"--molecules {args.molecules!r}: not comma-separated "
                             "integers") from None
    bad = [i for i in indices if not 0 <= i < len(train)]
    if bad or not indices:
        raise UserInputError(f"--molecules {args.molecules!r}: need indices in 0..{len(train) - 1}")
    return indices


def sample_step_counts(text: str | None, default: int) -> list[int]:
    if text is None:
        return [default]
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"--sample-steps {text!r}: not comma-separated integers") from None
    if not counts or min(counts) < 1:
        raise UserInputError(f"--sample-steps {text!r}: need step counts >= 1")
    return counts


def measure(net, diffusion: EDMDiffusion, molecules: list[dict], args,
            sample_steps: list[int]) -> dict:
    """Probe (sign accuracy of the denoised estimate per sigma) and unguided stereo per
    sampler step count on ``molecules``, each with the true label and with R and S swapped."""
    swapped = [chirality.with_swapped_labels(m) for m in molecules]
    probe = {}
    for sigma in (float(s) for s in args.probe_sigmas.split(",")):
        probe[f"{sigma:g}"] = {
            "true_label": chirality.denoised_sign_accuracy(net, diffusion, molecules, sigma,
                                                           args.probe_repeats),
            "swapped_label": chirality.denoised_sign_accuracy(net, diffusion, swapped, sigma,
                                                              args.probe_repeats)}
    centres = sum(len(chirality.labelled_centres(m)[1]) for m in molecules)
    stereo = {}
    for steps in sample_steps:
        stereo[str(steps)] = {
            "true_label": chirality.unguided_stereo(net, diffusion, molecules, args.samples,
                                                    steps, args.seed)[0],
            "swapped_label": chirality.unguided_stereo(net, diffusion, swapped, args.samples,
                                                       steps, args.seed)[0],
            "centres_scored_per_label": centres * args.samples}
    return {"molecules": len(molecules), "probe_sign_accuracy": probe,
            "stereo_unguided_by_sampler_steps": stereo}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data = torch.load(args.data, weights_only=False)
    indices = select(args, data["train"])
    skipped = []
    if args.no_mirror:
        molecules = [data["train"][i] for i in indices]
    else:
        mirrors = {}
        for index in indices:
            try:
                mirrors[index] = chirality.mirror_molecule(data["train"][index])
            except UserInputError:
                if args.first is None:  # a molecule the user chose: say so and stop
                    raise
                skipped.append(index)  # --first N: leave out what has no clean mirror
        if skipped:
            print(f"left out training molecules {skipped}: their mirror images do not just "
                  "swap R and S", file=sys.stderr)
        indices = [i for i in indices if i not in skipped]
        molecules = [data["train"][i] for i in indices] + [mirrors[i] for i in indices]
    overrides = tuple((name, override_value(value)) for name, _, value in
                      (o.partition("=") for o in args.denoiser_override))
    base = chirality.PRESETS[args.preset]
    preset = dataclasses.replace(
        base, odd_gates=args.odd_gates, node_cross_products=args.node_cross_products,
        cip_rank_out_edges=args.cip_rank_out_edges,
        volume_loss_weight=args.volume_loss,
        learning_rate=args.learning_rate or base.learning_rate,
        batch_size=args.batch_size or base.batch_size,
        denoiser_overrides=base.denoiser_overrides + overrides)
    sample_steps = sample_step_counts(args.sample_steps, preset.sample_steps)
    if not 0 <= args.eval_val <= len(data["val"]):
        raise UserInputError(f"--eval-val {args.eval_val}: {args.data} holds "
                             f"{len(data['val'])} held-out molecules")
    if args.eval_train is not None and args.eval_train < 1:
        raise UserInputError(f"--eval-train {args.eval_train}: need at least 1")
    diffusion = EDMDiffusion(EDMSettings(p_mean=args.p_mean, p_std=args.p_std))
    started = time.perf_counter()
    net = chirality.build_net(preset, args.mode, args.parity, args.seed)
    chirality.fit(net, diffusion, molecules, preset, args.steps,
                  torch.Generator().manual_seed(30_000 + args.seed))
    train_seconds = time.perf_counter() - started
    final = chirality.export(net).eval()
    evaluated = molecules
    if args.eval_train is not None:  # the first N molecules, and their mirrors
        kept = indices[: args.eval_train]
        evaluated = molecules[: len(kept)]
        if not args.no_mirror:
            evaluated = evaluated + molecules[len(indices): len(indices) + len(kept)]
    measured = {"train": measure(final, diffusion, evaluated, args, sample_steps)}
    if args.eval_val:
        measured["val"] = measure(final, diffusion, data["val"][: args.eval_val], args,
                                  sample_steps)
    if args.save_model:
        torch.save(final, args.save_model)
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "threads")},
        "molecule_indices": indices,
        "left_out_without_clean_mirror": skipped,
        "smiles": [m["smiles"] for m in molecules],
        "preset": dataclasses.asdict(preset),
        # per measured set ("train": training molecules, "val": held-out ones): probe and
        # stereo, each with the true label and with R and S swapped
        "measured": measured,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "environment": environment_info(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    summary = {"measured": measured, "train_seconds": result["train_seconds"]}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserInputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
