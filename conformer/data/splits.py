"""GEOM split files (``split0.npy``) and test-molecule CSVs, loaded and validated.

The split files (GeoMol repository, MIT; copies in ``data/geom/``) are pickled numpy object
arrays of three int arrays (train, val, test) indexing the sorted list of molecule pickles.
``np.load(allow_pickle=True)`` would run whatever a crafted file's pickle asks for, so they are
read by :class:`NumpyArrayUnpickler`, which builds numpy arrays and dtypes and refuses every
other global; what comes out is then checked before it is returned.
"""

from __future__ import annotations

import csv
import dataclasses
import pickle
from pathlib import Path

import numpy as np

from conformer.errors import UserInputError

SPLIT_NAMES = ("train", "val", "test")
REPO_DATA = Path(__file__).resolve().parent.parent.parent / "data" / "geom"


def standard_split_path(dataset: str = "drugs") -> Path:
    """``data/geom/<dataset>/split0.npy`` in a source checkout."""
    return REPO_DATA / dataset / "split0.npy"


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class NumpyArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (object arrays of arrays included) and nothing else.

    A pickle names the callables it runs as globals; only the three that rebuild an ndarray
    (``ndarray``, ``dtype`` and ``multiarray._reconstruct``, under numpy 1 and 2 module
    names) are allowed, so a crafted file's ``os.system`` or ``eval`` is refused before
    anything runs.
    """

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not a numpy array type")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def load_numpy_arrays(path: Path) -> np.ndarray:
    """The array in an ``.npy`` file, object arrays unpickled by :class:`NumpyArrayUnpickler`.

    Raises ``ValueError``/``pickle.UnpicklingError`` (and friends) on a malformed or crafted file.
    """
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            _, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            _, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        if dtype.hasobject:
            array = NumpyArrayUnpickler(handle).load()
            if not isinstance(array, np.ndarray):
                raise ValueError(f"the pickle holds a {type(array).__name__}, not an array")
            return array
        handle.seek(0)
        return np.load(handle, allow_pickle=False)


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
        raw = load_numpy_arrays(path)  # never runs code from the file; validated below
    except pickle.UnpicklingError as error:
        raise UserInputError(f"split file {path}: refused, its pickle asks for more than numpy "
                             f"arrays ({error})") from None
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
