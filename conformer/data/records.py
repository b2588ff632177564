"""Read the records written by ``conformer prepare`` (one NPZ per molecule, no pickles)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conformer.data import keys
from conformer.errors import UserInputError


class RecordStore:
    """The records of one split folder ``CACHE_DIR/<dataset>-<hash>/<split>/``.

    ``store[i]`` is a dict: keys.RECORD_ARRAY_KEYS -> numpy arrays (shapes and units in
    ``conformer/data/keys.py``), keys.RECORD_STRING_KEYS -> ``str``. Records are ordered by
    their molecule index in the sorted GEOM pickle list.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserInputError(f"record folder {self.path}: not found")
        self._files = sorted(p for p in self.path.glob("*.npz") if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i: int) -> dict:
        with np.load(self._files[i], allow_pickle=False) as data:
            record = {k: data[k] for k in keys.RECORD_ARRAY_KEYS}
            record.update({k: str(data[k]) for k in keys.RECORD_STRING_KEYS})
        return record

    def file(self, i: int) -> Path:
        return self._files[i]

    @property
    def manifest(self) -> dict:
        """The merged ``manifest.json`` of the prepared folder (settings, counts, versions)."""
        path = self.path.parent / "manifest.json"
        if not path.exists():
            raise UserInputError(f"{path}: missing; the prepare run (or one of its shards) "
                                 "has not finished: rerun it")
        return json.loads(path.read_text())


def open_prepared(cache_dir: Path, dataset: str, split: str) -> RecordStore:
    """The RecordStore of ``split`` under the one ``<dataset>-<hash>`` folder of ``cache_dir``.

    Raises UserInputError when there is none, or several (different settings: pass the
    hashed folder to RecordStore directly).
    """
    cache_dir = Path(cache_dir)
    candidates = sorted(p for p in cache_dir.glob(f"{dataset}-*")
                        if (p / "manifest.json").exists())
    if not candidates:
        raise UserInputError(f"cache {cache_dir}: no finished prepared '{dataset}' folder; "
                             "run `conformer prepare` first")
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise UserInputError(f"cache {cache_dir}: several prepared '{dataset}' folders ({names});"
                             " open one with RecordStore(<folder>/<split>)")
    return RecordStore(candidates[0] / split)
