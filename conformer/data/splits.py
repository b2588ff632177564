"""GEOM split files (``split0.npy``) and test-molecule CSVs, loaded and validated.

The split files (GeoMol repository, MIT; copies in ``data/geom/``) are pickled numpy object
arrays of three int arrays (train, val, test) indexing the sorted list of molecule pickles.
Loading them needs ``allow_pickle=True``; it is used only for this known format, and what comes
out is checked before it is returned.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from conformer.errors import UserInputError

SPLIT_NAMES = ("train", "val", "test")
REPO_DATA = Path(__file__).resolve().parent.parent.parent / "data" / "geom"


def standard_split_path(dataset: str = "drugs") -> Path:
    """``data/geom/<dataset>/split0.npy`` in a source checkout."""
    return REPO_DATA / dataset / "split0.npy"


def load_split(path: Path, n_molecules: int | None = None, allow_subset: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) int64 index arrays from a GEOM split file.

    Checks: a numpy object array of exactly 3 one-dimensional integer arrays, no negative or
    repeated index (within or across splits). With ``n_molecules`` (the number of pickles the
    indices refer to): every index < n_molecules, and the total count equals n_molecules
    unless ``allow_subset``. Raises UserInputError naming the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"split file {path}: not found")
    try:
        raw = np.load(path, allow_pickle=True)  # known GEOM format, validated below
    except Exception as error:
        raise UserInputError(f"split file {path}: not a numpy .npy file ({error})") from None
    if not (isinstance(raw, np.ndarray) and raw.dtype == object and raw.shape == (3,)):
        shape = getattr(raw, "shape", None)
        dtype = getattr(raw, "dtype", type(raw).__name__)
        raise UserInputError(f"split file {path}: expected a numpy object array of 3 index "
                             f"arrays (train, val, test), got dtype {dtype} shape {shape}")
    parts = []
    for name, part in zip(SPLIT_NAMES, raw, strict=True):
        part = np.asarray(part)
        if part.ndim != 1 or (part.size and not np.issubdtype(part.dtype, np.integer)):
            raise UserInputError(f"split file {path}: the {name} entry is not a 1-D integer "
                                 f"array (dtype {part.dtype}, shape {part.shape})")
        parts.append(part.astype(np.int64))
    every = np.concatenate(parts)
    if every.size and every.min() < 0:
        raise UserInputError(f"split file {path}: negative index {int(every.min())}")
    if np.unique(every).size != every.size:
        raise UserInputError(f"split file {path}: an index appears more than once")
    if n_molecules is not None:
        if every.size and every.max() >= n_molecules:
            raise UserInputError(f"split file {path}: index {int(every.max())} out of range for "
                                 f"{n_molecules} molecule pickles")
        if every.size != n_molecules and not allow_subset:
            raise UserInputError(f"split file {path}: indexes {every.size} molecules but the "
                                 f"folder holds {n_molecules} pickles (pass --allow-split-subset "
                                 "if the split deliberately covers only some of them)")
    return parts[0], parts[1], parts[2]


@dataclasses.dataclass(frozen=True)
class TestMolecule:
    smiles: str                       # the GEOM key
    n_conformers: int                 # number of GEOM reference conformers
    corrected_smiles: str | None      # stereo-repaired SMILES to generate from, if given


def load_test_smiles(path: Path) -> list[TestMolecule]:
    """Rows of ``test_smiles.csv`` (smiles,n_conformers) or ``test_smiles_corrected.csv``
    (smiles,n_conformers,corrected_smiles), in file order."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"test SMILES file {path}: not found")
    rows = []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"smiles", "n_conformers"} - set(reader.fieldnames or ())
        if missing:
            raise UserInputError(f"test SMILES file {path}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                count = int(row["n_conformers"])
            except (TypeError, ValueError):
                raise UserInputError(f"test SMILES file {path} line {line}: n_conformers "
                                     f"{row['n_conformers']!r} is not an integer") from None
            if not row["smiles"]:
                raise UserInputError(f"test SMILES file {path} line {line}: empty smiles")
            rows.append(TestMolecule(row["smiles"], count, row.get("corrected_smiles") or None))
    return rows
