"""The GEOM ``rdkit_folder`` layout: file names, atomic writes, reading summaries and pickles.

Layout (GEOM, Axelrod and Gomez-Bombarelli 2022; the project writes the same layout itself):
    DIR/summary_<name>.json   GEOM key (SMILES) -> molecule summary, incl. ``pickle_path``
    DIR/<name>/<file>.pickle  one dict per molecule: summary keys + ``smiles`` + ``conformers``
    DIR/split.npy             object array of 3 int arrays indexing the sorted pickle list

GEOM's own pickles hold RDKit ``Mol`` objects, so reading them needs ``pickle``; only load
folders you trust (the real GEOM download or one this project built).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

# Linux allows 255 bytes per file name; stay well below it and leave room for ".pickle".
MAX_STEM_BYTES = 150
HARTREE_TO_KCAL_PER_MOL = 627.509474
GAS_CONSTANT_KCAL = 1.987204259e-3  # kcal / (mol K)
GEOM_TEMPERATURE_K = 298.15


def pickle_stem(smiles: str) -> str:
    """The file stem GEOM uses for ``smiles`` ('/' replaced by '_').

    A stem longer than ``MAX_STEM_BYTES`` bytes is cut and suffixed with a hash of the full
    SMILES, so that distinct long SMILES never collide and every name is a legal file name.
    """
    stem = smiles.replace("/", "_").replace("\0", "_")
    if len(stem.encode()) <= MAX_STEM_BYTES:
        return stem
    digest = hashlib.sha256(smiles.encode()).hexdigest()[:16]
    return stem.encode()[:MAX_STEM_BYTES - 17].decode(errors="ignore") + "_" + digest


def pickle_relpath(smiles: str, name: str) -> str:
    """``pickle_path`` as written in the summary: ``<name>/<stem>.pickle``."""
    return f"{name}/{pickle_stem(smiles)}.pickle"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so an interrupted run
    never leaves a half-written file that a rerun would take as done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def write_molecule_pickle(path: Path, molecule: dict) -> None:
    atomic_write_bytes(path, pickle.dumps(molecule, protocol=pickle.HIGHEST_PROTOCOL))


def read_molecule_pickle(path: Path) -> dict:
    """One GEOM molecule dict (see module docstring). Trusted files only."""
    with open(path, "rb") as handle:
        return pickle.load(handle)


def sorted_pickle_paths(geom_dir: Path, name: str) -> list[Path]:
    """The molecule pickles of ``geom_dir/name`` in the order GEOM's split files index them
    (sorted file names)."""
    folder = Path(geom_dir) / name
    return sorted((p for p in folder.glob("*.pickle") if not p.name.startswith(".tmp-")),
                  key=lambda p: p.name)


def read_summary(geom_dir: Path, name: str) -> dict:
    path = Path(geom_dir) / f"summary_{name}.json"
    with open(path) as handle:
        return json.load(handle)
