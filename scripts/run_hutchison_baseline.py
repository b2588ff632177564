"""RDKit ETKDG baseline or a model on the Hutchison conformer benchmark (COV/MAT, delta 0.75 A).

For each of the 699 molecules (grouped by the ``molecule`` property of
``data/hutchison/hutchison_conformers.sdf.gz``), generate 2K ETKDGv3 conformers (K = number of
reference conformers) from the isomeric SMILES of its first reference conformer (stereo read
from the 3D coordinates; hydrogens added), write them with :mod:`conformer.sdf_io`, then run
``conformer evaluate`` against the references. Rerunning resumes the generation where it stopped.
With ``--method model`` the same SMILES and counts go through ``conformer generate`` (the model
of ``--ckpt``, default the bundled one; failures in ``generated.failures.csv``).

    PYTHONPATH=. nice .venv/bin/python scripts/run_hutchison_baseline.py --out runs/hutchison_etkdg
    PYTHONPATH=. nice .venv/bin/python scripts/run_hutchison_baseline.py --method model \
        --out runs/hutchison_bundled
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rdkit import Chem
from tqdm import tqdm

from conformer.baselines import BaselineError, generate_rdkit
from conformer.sdf_io import ConformerSDFWriter, completed_input_lines, read_conformer_groups

REFERENCES = Path("data/hutchison/hutchison_conformers.sdf.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/hutchison_etkdg"),
                        help="output folder (generated.sdf, failures.jsonl, eval/)")
    parser.add_argument("--method", default="etkdg", choices=("etkdg", "etkdg-mmff", "model"),
                        help="RDKit baseline or model (default etkdg)")
    parser.add_argument("--ckpt", default=None,
                        help="with --method model: model file (default: the bundled model)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (model)")
    parser.add_argument("--seed", type=int, default=1, help="base seed; molecule i uses seed+i")
    parser.add_argument("--limit", type=int, default=None, help="only the first N molecules")
    parser.add_argument("--workers", type=int, default=1, help="evaluation workers (default 1)")
    parser.add_argument("--skip-generation", action="store_true",
                        help="only evaluate an existing generated.sdf")
    args = parser.parse_args(argv)

    groups = read_conformer_groups(REFERENCES, key="molecule")
    names = sorted(groups)[: args.limit]
    args.out.mkdir(parents=True, exist_ok=True)
    generated = args.out / "generated.sdf"
    failures_path = args.out / "generation_failures.jsonl"
    stereo_mixed = []
    if args.method == "model" and not args.skip_generation:
        _generate_with_model(groups, names, args, generated)
    elif not args.skip_generation:
        done = completed_input_lines(generated)
        with ConformerSDFWriter(generated, append=True) as writer, \
                open(failures_path, "a") as failures:
            for line, name in enumerate(tqdm(names, desc="ETKDG"), start=1):
                refs = groups[name]
                isomeric = {Chem.MolToSmiles(m) for m in refs}
                if len(isomeric) > 1:
                    stereo_mixed.append(name)
                if line in done:
                    continue
                smiles = Chem.MolToSmiles(refs[0])
                try:
                    mol = generate_rdkit(Chem.MolFromSmiles(smiles), 2 * len(refs),
                                         method=args.method, seed=args.seed + line)
                except BaselineError as error:
                    failures.write(json.dumps({"input_line": line, "name": name,
                                               "smiles": smiles, "reason": str(error)}) + "\n")
                    failures.flush()
                    continue
                writer.write_molecule(mol, name, smiles, line,
                                      {"method": args.method, "seed": args.seed + line})
        print(f"{len(stereo_mixed)} molecules whose reference conformers disagree on stereo "
              f"(generated from the first conformer's SMILES)")
    from conformer.cli import main as cli_main

    evaluate_args = ["evaluate", "--generated", str(generated), "--references", str(REFERENCES),
                     "--ref-key", "molecule", "--threshold", "0.75", "--out",
                     str(args.out / "eval"), "--workers", str(args.workers)]
    if args.limit:
        evaluate_args += ["--only-generated"]
    return cli_main(evaluate_args)


def _generate_with_model(groups: dict, names: list[str], args, generated: Path) -> None:
    """2K model conformers per molecule through ``conformer generate`` (resumable)."""
    import csv

    import torch

    from conformer.generation import GenerateOptions, generate_file

    torch.set_num_threads(args.threads)
    inputs = args.out / "inputs.csv"
    with open(inputs, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["smiles", "name", "n_conformers"])
        for name in names:
            writer.writerow([Chem.MolToSmiles(groups[name][0]), name, len(groups[name])])
    summary = generate_file(inputs, generated, GenerateOptions(
        method="model", ckpt=args.ckpt, ratio=2.0, seed=args.seed, progress=True,
        # generate sets torch's threads from workers: without this --threads had no effect
        # (runs before session 10 used one thread whatever --threads said)
        workers=args.threads))
    print(summary.text())


if __name__ == "__main__":
    sys.exit(main())
