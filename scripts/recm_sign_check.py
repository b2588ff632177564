"""Does RECM's b have the sign of the loss's derivative along each reflection branch?

Trains the chirality experiment's network (``conformer.experiments.chirality.fit``, recm mode,
the R/S label as 0e, the tiny preset's handedness inputs and volume hinge) for ``--steps``
steps on the molecules of a built ``data.pt``, then, for every layer with a reflection branch,
on the held-out molecules (training index % 4 == 0: no branch ever trained on them) and on as
many training ones (index % 4 == 1), one conformer each, over ``--repeats`` fixed noise draws:

- dL: the loss with that layer's reflection gamma raised by ``--delta`` minus the loss at its
  value (same noise): negative = more of the branch lowers the loss;
- b as RECM records it from the same backward pass: the unweighted mean of per-molecule b
  (``b_weighting = "molecule"``) and the magnitude-weighted mean (``"magnitude"``).

b must have the opposite sign of dL wherever dL is clearly non-zero. Session 12
(docs/results/chirality_tiny.md) found the unweighted mean of the wrong sign on every layer.
Example (build the data with ``conformer reproduce chirality --preset tiny64 --steps 1
--seeds 1 --modes equivariant/0o --out DIR``):

    python scripts/recm_sign_check.py --data DIR/data.pt --steps 800 \\
        --recm reflection_inputs=pseudo --recm absorb_after_steps=1000000000 \\
        --recm b_weighting=molecule --out sign.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from conformer.data.batching import collate_molecules
from conformer.diffusion import EDMDiffusion, EDMSettings
from conformer.experiments import chirality
from conformer.experiments.common import override_value
from conformer.recm import controller_of


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data.pt of `conformer reproduce chirality`")
    parser.add_argument("--steps", type=int, default=800, help="training steps (default 800)")
    parser.add_argument("--recm", action="append", default=[], metavar="NAME=VALUE",
                        help="a RECMConfig field for training, e.g. b_weighting=molecule "
                        "(repeatable)")
    parser.add_argument("--delta", type=float, default=0.05,
                        help="raise of gamma in the finite difference (default 0.05)")
    parser.add_argument("--repeats", type=int, default=30,
                        help="noise draws per layer and group (default 30)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="JSON file to write")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    overrides = tuple((name, override_value(value)) for name, _, value in
                      (item.partition("=") for item in args.recm))
    preset = dataclasses.replace(chirality.PRESETS["tiny"], recm_overrides=overrides)
    data = torch.load(args.data, weights_only=False)
    train = data["train"]
    net = chirality.build_net(preset, "recm", "0e", args.seed)
    diffusion = EDMDiffusion(EDMSettings())
    controller = controller_of(net)
    chirality.fit(net, diffusion, train, preset, args.steps,
                  torch.Generator().manual_seed(30_000 + args.seed))
    for layer in controller.layers:  # record the weights whatever training used
        layer.config = dataclasses.replace(layer.config, b_weighting="magnitude")
    controller.hold_out(None)  # score every molecule of the check's batches
    rows = []
    for group, remainder in (("held-out", 0), ("training", 1)):
        indices = [i for i in range(len(train)) if i % 4 == remainder]
        centres = [chirality.labelled_centres(train[i]) for i in indices]
        batch = collate_molecules([chirality._item(train[i], 0) for i in indices])
        offsets = batch.ptr[:-1].tolist()
        atoms = torch.cat([c[0] + o for c, o in zip(centres, offsets, strict=True)])
        wanted = torch.cat([c[1] for c in centres])

        def loss(draw: int, batch=batch, atoms=atoms, wanted=wanted) -> torch.Tensor:
            return chirality.loss_with_volume_hinge(
                diffusion, net, batch, atoms, wanted, preset.volume_loss_weight,
                preset.volume_loss_margin, torch.Generator().manual_seed(draw))

        for index, layer in enumerate(controller.layers):
            if layer.reflection is None:
                continue
            state = layer.reflection_state
            start = float(state.gamma)
            differences, plain, weighted_sum, weight_sum = [], [], 0.0, 0.0
            for draw in range(args.repeats):
                with torch.no_grad():
                    at = float(loss(draw))
                    state.gamma.fill_(start + args.delta)
                    raised = float(loss(draw))
                    state.gamma.fill_(start)
                differences.append(raised - at)
                net.zero_grad(set_to_none=True)
                loss(draw).backward()
                weights = torch.cat([w.reshape(-1) for w in state.pending_weights])
                b = torch.cat([v.reshape(-1) for v in state.take_pending()[0]])
                plain.append(float(b.mean()))
                weighted_sum += float((b * weights).sum())
                weight_sum += float(weights.sum())
                for other in controller.layers:  # forget the other branches' signals
                    for other_state in other.branch_states().values():
                        other_state.take_pending()
            dl = torch.tensor(differences, dtype=torch.float64)
            row = {"group": group, "layer": index, "gamma": start,
                   "dL_mean": float(dl.mean()),
                   "dL_stderr": float(dl.std() / len(dl) ** 0.5),
                   "b_unweighted": sum(plain) / len(plain),
                   "b_weighted": weighted_sum / weight_sum if weight_sum > 0 else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
