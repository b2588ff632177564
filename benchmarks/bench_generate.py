"""Conformers per second: the diffusion model (bundled by default) against RDKit ETKDG, on the
same molecules in one process, through the same ``conformer generate`` code path (input parsing,
stereo check and SDF writing included). Prints the rates and the ratio model / ETKDG. The
model runs with generate's defaults, MMFF94 polish included (``--no-mmff``: as drawn), so
ETKDG + MMFF94 (``etkdg-mmff``) is timed too and its ratio printed beside.

    python benchmarks/bench_generate.py [--input data/examples/example.smi] [--num-confs 10]
        [--ckpt MODEL.pt] [--device cpu] [--threads 1] [--steps 20] [--no-mmff]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from conformer.generation import GenerateOptions, generate_file
from conformer.versions import environment_info

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default=str(ROOT / "data/examples/example.smi"),
                        help="SMILES/CSV input (default: the bundled examples)")
    parser.add_argument("--num-confs", type=int, default=10, help="conformers per molecule")
    parser.add_argument("--ckpt", default=None, help="model file (default: bundled model)")
    parser.add_argument("--device", default="cpu", help="torch device for the model")
    parser.add_argument("--threads", type=int, default=1,
                        help="cores for every method: generate's --workers (ETKDG: worker "
                             "processes; the model on the CPU: worker processes with one torch "
                             "thread each)")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (model default)")
    parser.add_argument("--batch-size", type=int, default=64, help="conformers per batch")
    parser.add_argument("--no-mmff", dest="mmff", action="store_false",
                        help="time the model's samples as drawn, without the MMFF94 polish")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("etkdg", "etkdg-mmff", "model"):
            options = GenerateOptions(method=method, ckpt=args.ckpt, num_confs=args.num_confs,
                                      steps=args.steps, batch_size=args.batch_size,
                                      device=args.device, seed=1, workers=args.threads,
                                      max_resamples=0, progress=False, mmff=args.mmff)
            if method == "model":  # one warm-up molecule: model loading is not generation
                warm = Path(tmp) / "warm.smi"
                warm.write_text("CCO\n")
                generate_file(warm, Path(tmp) / "warm.sdf", options)
            summary = generate_file(args.input, Path(tmp) / f"{method}.sdf", options)
            results[method] = {"conformers": summary.conformers, "seconds": summary.seconds,
                               "conformers_per_second": summary.conformers / summary.seconds,
                               "molecules": summary.molecules, "failures": summary.failures}
    rate = {method: figures["conformers_per_second"] for method, figures in results.items()}
    ratio = rate["model"] / rate["etkdg"]
    ratio_mmff = rate["model"] / rate["etkdg-mmff"]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"cpu ({args.threads} thread{'s' if args.threads > 1 else ''})"
    print(f"input {args.input}, {args.num_confs} conformers per molecule, device {device}")
    for method, figures in results.items():
        print(f"{method:10s} {figures['conformers']:5d} conformers in {figures['seconds']:7.2f} s"
              f" = {figures['conformers_per_second']:8.2f} conformers/s")
    polish = "with MMFF94 polish" if args.mmff else "as drawn (--no-mmff)"
    print(f"ratio model ({polish}) / ETKDG: {ratio:.3f}; / ETKDG + MMFF94: {ratio_mmff:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "ratio": ratio,
                                               "ratio_to_etkdg_mmff": ratio_mmff,
                                               "device": device, "args": vars(args),
                                               "environment": environment_info()}, indent=2))


if __name__ == "__main__":
    main()
