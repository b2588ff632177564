"""COV-R and MAT-R of one or more `conformer evaluate` results, by molecule size and flexibility.

Where does a model lose coverage? The per-molecule scores of each ``results.json`` are binned
by the reference molecule's heavy-atom count and its rotatable bonds (RDKit's default,
strict definition), and printed as two markdown tables with one column group per results file
(molecules, COV-R mean %, MAT-R mean A; MAT-R over molecules where it is defined).

    python scripts/coverage_by_size.py --references data/hutchison/hutchison_conformers.sdf.gz \
        --label ETKDG runs/hutchison_etkdg/eval/results.json \
        --label model runs/hutchison_bundled/eval/results.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from pathlib import Path

from rdkit import Chem
from rdkit.Chem import rdMolDescriptors

HEAVY_ATOM_BINS = ((0, 14), (15, 19), (20, 24), (25, 29), (30, 39), (40, math.inf))
ROTATABLE_BOND_BINS = ((0, 1), (2, 3), (4, 5), (6, 7), (8, 11), (12, math.inf))


def reference_sizes(path: Path, key: str) -> dict[str, tuple[int, int]]:
    """{molecule name: (heavy atoms, rotatable bonds)} from the first record of each name."""
    opener = gzip.open if path.suffix == ".gz" else open
    sizes: dict[str, tuple[int, int]] = {}
    with opener(path, "rb") as handle:
        for index, mol in enumerate(Chem.ForwardSDMolSupplier(handle, removeHs=False)):
            if mol is None:
                continue
            name = mol.GetProp(key) if key != "_Name" and mol.HasProp(key) else (
                mol.GetProp("_Name") if key == "_Name" else None)
            if name is None:
                raise SystemExit(f"{path}: record {index + 1} has no {key!r} property")
            if name not in sizes:
                sizes[name] = (mol.GetNumHeavyAtoms(),
                               rdMolDescriptors.CalcNumRotatableBonds(Chem.RemoveHs(mol)))
    return sizes


def bin_label(bounds: tuple[float, float]) -> str:
    low, high = bounds
    return f">= {low}" if math.isinf(high) else f"{low}-{int(high)}"


def binned_table(title: str, bins, column: int, sizes, results: list[tuple[str, list]]) -> str:
    header = f"| {title} | " + " | ".join(f"{label}: n | COV-R % | MAT-R A"
                                            for label, _ in results) + " |"
    lines = [header, "|" + "---|" * (1 + 3 * len(results))]
    for bounds in bins:
        cells = [bin_label(bounds)]
        for _, molecules in results:
            chosen = [m for m in molecules
                      if bounds[0] <= sizes[m["name"]][column] <= bounds[1]]
            mats = [m["mat_r"] for m in chosen if m["mat_r"] is not None]
            cells += [str(len(chosen)),
                      f"{100 * sum(m['cov_r'] for m in chosen) / len(chosen):.1f}" if chosen
                      else "-",
                      f"{sum(mats) / len(mats):.3f}" if mats else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results.json of conformer evaluate")
    parser.add_argument("--references", type=Path, required=True,
                        help="the references SDF (.sdf or .sdf.gz) the results were scored on")
    parser.add_argument("--ref-key", default="molecule",
                        help="property naming each record's molecule (default molecule; "
                             "_Name for the title line)")
    parser.add_argument("--label", action="append", default=[],
                        help="column label per results file, in order (default: the file path)")
    args = parser.parse_intermixed_args(argv)  # --label A r1 --label B r2
    if args.label and len(args.label) != len(args.results):
        parser.error(f"{len(args.label)} --label for {len(args.results)} results files")
    sizes = reference_sizes(args.references, args.ref_key)
    results = []
    for index, path in enumerate(args.results):
        molecules = json.loads(path.read_text())["per_molecule"]
        missing = [m["name"] for m in molecules if m["name"] not in sizes]
        if missing:
            print(f"error: {path}: {len(missing)} molecules not in {args.references} "
                  f"(first: {missing[0]})", file=sys.stderr)
            return 2
        results.append((args.label[index] if args.label else str(path), molecules))
    print(binned_table("heavy atoms", HEAVY_ATOM_BINS, 0, sizes, results))
    print()
    print(binned_table("rotatable bonds", ROTATABLE_BOND_BINS, 1, sizes, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
