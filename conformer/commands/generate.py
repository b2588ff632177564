"""``conformer generate INPUT --out OUT.sdf``: conformers for every molecule of a SMILES, CSV
or SDF file."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

HELP = "generate conformers for a SMILES/CSV file and write an SDF"


def add_arguments(parser) -> None:
    parser.add_argument("input", help="a .smi/.txt file (SMILES and optional name per line, "
                        "separated by blanks or tabs), a .csv with a 'smiles' column (optional: "
                        "name, n_conformers, corrected_smiles; corrected_smiles is generated "
                        "from when present), or an .sdf/.sdf.gz/.mol file (one molecule per "
                        "record, with its hydrogens, stereo and title as name; failures.csv "
                        "then gives record numbers). A binary file, or SDF text in a SMILES/CSV "
                        "file, is refused")
    parser.add_argument("--out", required=True,
                        help="output SDF; failures go to OUT.failures.csv, the run's settings "
                        "to OUT.settings.json; rerun the same command to resume an interrupted "
                        "run")
    parser.add_argument("--overwrite", action="store_true",
                        help="start OUT afresh (deleting OUT, OUT.failures.csv and "
                        "OUT.settings.json) instead of resuming it. Without it, a rerun whose "
                        "settings (method, model file sha256, conformer counts, seed, sampler, "
                        "guidance, output options) differ from those in OUT.settings.json stops "
                        "with an error")
    parser.add_argument("--ckpt", default=None,
                        help="model file or training checkpoint (default: the bundled model "
                        "in conformer/assets/, which is not a GEOM-Drugs model)")
    parser.add_argument("--method", default="model", choices=["model", "etkdg", "etkdg-mmff"],
                        help="model (diffusion, default), etkdg (RDKit ETKDGv3) or "
                        "etkdg-mmff (ETKDG then MMFF94 minimisation)")
    parser.add_argument("--num-confs", type=int, default=None,
                        help="conformers per molecule (overrides --ratio; default: ratio x "
                        "n_conformers where the CSV has it, else 10)")
    parser.add_argument("--ratio", type=float, default=2.0,
                        help="conformers per molecule = ceil(RATIO x n_conformers) for CSV rows "
                        "with n_conformers (default 2, as the GEOM protocol asks)")
    parser.add_argument("--steps", type=int, default=None,
                        help="sampler steps (Heun: 2 x steps - 1 network evaluations; default "
                        "the model's, 20)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="conformers sampled together in one batch (memory vs speed)")
    parser.add_argument("--device", default="auto",
                        help="torch device: auto (default: CUDA when torch sees a GPU, else "
                        "the CPU), cpu, cuda, cuda:1, ...; a device that is not there is an "
                        "error before any output is written")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed (per molecule: seed and input line)")
    parser.add_argument("--no-hydrogens", action="store_true",
                        help="write heavy atoms only (generation always uses hydrogens)")
    parser.add_argument("--workers", type=int, default=1,
                        help="RDKit methods: worker processes; model: CPU threads for torch")
    parser.add_argument("--max-atoms", type=int, default=400,
                        help="molecules with more atoms (hydrogens included) go to the failures "
                        "file")
    parser.add_argument("--max-resamples", type=int, default=3,
                        help="rounds of resampling for conformers with wrong stereo that a "
                        "reflection cannot fix")
    parser.add_argument("--stereo-guidance", action=argparse.BooleanOptionalAction, default=True,
                        help="model method: steer the sampler towards the input's tetrahedral "
                        "and E/Z stereo (default on); --no-stereo-guidance gives the raw "
                        "model's samples (reflection/resampling still apply afterwards). "
                        "Recorded in each SDF record and in the summary")
    parser.add_argument("--relax-hydrogens", action="store_true",
                        help="heavy-atom-only models (trained with data.hydrogens=implicit): "
                        "minimise the hydrogens RDKit places with MMFF94, heavy atoms fixed "
                        "(slower; no effect on other models)")
    parser.add_argument("--energies", choices=["mmff"], default=None,
                        help="mmff: write each conformer's MMFF94 energy (kcal/mol, single "
                        "point of the conformer as written, not minimised) as mmff94_energy "
                        "and mmff94_relative_energy (above the molecule's lowest), and sort "
                        "the conformers by it, lowest first")
    parser.add_argument("--prune-rms", type=float, default=None, metavar="A",
                        help="drop conformers within A Angstrom heavy-atom RMSD (after "
                        "superposition) of one kept before them, as RDKit's pruneRmsThresh: "
                        "the first of each cluster is kept (the lowest in energy with "
                        "--energies); pruned_conformers gives the count. Output conformers "
                        "are always aligned to the first on their heavy atoms and written "
                        "with Kekule bonds")
    parser.add_argument("--no-bond-check", action="store_true",
                        help="keep conformers with a bond shorter than 0.6 or longer than 1.5 "
                        "times the sum of its atoms' covalent radii (by default they are "
                        "dropped, never written, and counted in the summary; a molecule left "
                        "without conformers goes to the failures file)")
    parser.add_argument("--summary", action="store_true",
                        help="print molecules, conformers, failures, stereo-correct rates "
                        "(before and after correction) and time")
    parser.add_argument("--summary-json", default=None,
                        help="also write the summary (with settings and versions) to this JSON")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (default: a bar when stderr is a terminal)")


def run(args) -> int:
    from conformer.generation import GenerateOptions, failures_path, generate_file
    from conformer.versions import environment_info

    options = GenerateOptions(
        method=args.method, ckpt=args.ckpt, num_confs=args.num_confs, ratio=args.ratio,
        steps=args.steps, batch_size=args.batch_size, device=args.device, seed=args.seed,
        hydrogens=not args.no_hydrogens, workers=args.workers, max_atoms=args.max_atoms,
        max_resamples=args.max_resamples, stereo_guidance=args.stereo_guidance,
        bond_check=not args.no_bond_check, energies=args.energies, prune_rms=args.prune_rms,
        relax_hydrogens=args.relax_hydrogens,
        progress=False if args.no_progress else None)
    summary = generate_file(args.input, args.out, options, overwrite=args.overwrite)
    if args.summary:
        print(summary.text())
        if summary.failures:
            print(f"failures listed in {failures_path(args.out)}")
    if args.summary_json:
        with open(args.summary_json, "w") as handle:
            json.dump({"summary": summary.as_dict(), "settings": dataclasses.asdict(options),
                       "input": args.input, "out": args.out,
                       "environment": environment_info()}, handle, indent=2, default=str)
    print(f"wrote {summary.conformers} conformers of {summary.molecules} molecules to {args.out}",
          file=sys.stderr)
    return 0
