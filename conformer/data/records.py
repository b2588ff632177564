"""Read the records written by ``conformer prepare`` (one NPZ per molecule, no pickles) as
torch_geometric ``Data`` graphs, which any PyG model or loader can take."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data

from conformer.data import keys
from conformer.errors import UserInputError


class MoleculeGraph(Data):
    """One molecule as a torch_geometric ``Data`` (fields and shapes in ``conformer.data.keys``):
    x [N, 9] and edge_attr [E, 4] int64 categorical features, z [N] atomic numbers,
    edge_index [2, E], plus pos [N, 3] (Angstrom, one conformer) or a record's positions
    [C, N, 3], boltzmann_weights [C] and strings.

    ``graph[keys.ATOM_FEATURES]`` reads ``graph.x`` (and so on, ``keys.GRAPH_FIELDS``), on a
    graph and on a ``Batch`` of graphs, so code written against the record key names keeps
    working; ``batch[keys.NUM_GRAPHS]`` is ``batch.num_graphs``.
    """

    def __getitem__(self, key):
        if key == keys.NUM_GRAPHS:
            return self.num_graphs
        return super().__getitem__(keys.GRAPH_FIELDS.get(key, key) if isinstance(key, str)
                                   else key)

    def __setitem__(self, key, value):
        super().__setitem__(keys.GRAPH_FIELDS.get(key, key), value)

    def __contains__(self, key) -> bool:
        return super().__contains__(keys.GRAPH_FIELDS.get(key, key))


def molecule_graph(features: Mapping, **fields) -> MoleculeGraph:
    """The MoleculeGraph of ``features`` (a record or ``featurize_mol`` dict under the record
    key names, numpy or torch) with ``fields`` added as they are (e.g. ``pos=[N, 3]``)."""
    graph = {field: torch.as_tensor(features[key]).long()
             for key, field in keys.GRAPH_FIELDS.items()}
    if keys.CIP_NEIGHBOUR_RANK in features:  # per edge; records of FEATURE_VERSION >= 2
        graph[keys.CIP_NEIGHBOUR_RANK] = torch.as_tensor(
            features[keys.CIP_NEIGHBOUR_RANK]).long()
    return MoleculeGraph(**graph, **fields)


HYDROGEN = 1  # atomic number


def heavy_atom_indices(atomic_numbers) -> np.ndarray:
    """int64 [H] indices of the non-hydrogen atoms of ``atomic_numbers`` [N], in atom order:
    heavy atom k of a heavy-atom graph is atom ``heavy_atom_indices(z)[k]`` of the full one."""
    return np.flatnonzero(np.asarray(atomic_numbers) != HYDROGEN).astype(np.int64)


def heavy_atom_graph(graph: MoleculeGraph) -> MoleculeGraph:
    """``graph`` without its hydrogens: heavy atoms in their order, the bonds between them
    (renumbered), and their rows of every per-atom field.

    Per-atom fields: x [N, F] and z [N] (rows kept as they are: the feature columns still
    count each heavy atom's hydrogens and its full degree, so the network knows them),
    pos [N, 3] and a record's positions [C, N, 3] (Angstrom); edge_index [2, E] keeps the
    edges whose two ends are heavy, with edge_attr [E, F] and cip_neighbour_rank [E] to match. Other fields (strings,
    boltzmann_weights) are carried over unchanged. A graph without hydrogens comes back equal.
    """
    z = graph.z
    keep = z != HYDROGEN
    renumber = torch.full((z.shape[0],), -1, dtype=torch.long)
    renumber[keep] = torch.arange(int(keep.sum()), dtype=torch.long)
    edge_index = graph.edge_index
    edge_keep = keep[edge_index[0]] & keep[edge_index[1]]
    fields = {}
    for name in graph.keys():
        value = graph[name]
        if name == keys.EDGE_INDEX:
            value = renumber[edge_index[:, edge_keep]]
        elif name in (keys.EDGE_ATTR, keys.CIP_NEIGHBOUR_RANK):  # per-edge fields
            value = value[edge_keep]
        elif name in (keys.X, keys.Z, keys.POS):
            value = value[keep]
        elif name == keys.POSITIONS:
            value = value[:, keep]
        fields[name] = value
    return MoleculeGraph(**fields)


class RecordStore:
    """The records of one split folder ``CACHE_DIR/<dataset>-<hash>/<split>/``.

    ``store[i]`` is a MoleculeGraph: x, z, edge_index, edge_attr, positions [C, N, 3] float32
    (Angstrom), boltzmann_weights [C] as tensors and smiles, geom_key, molblock as ``str``
    (shapes in ``conformer/data/keys.py``; ``store[i][keys.POSITIONS]`` and the other record
    key names work too). Records are ordered by their molecule index in the sorted GEOM
    pickle list.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UserInputError(f"record folder {self.path}: not found")
        self._files = sorted(p for p in self.path.glob("*.npz") if not p.name.startswith("."))

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i: int) -> MoleculeGraph:
        with np.load(self._files[i], allow_pickle=False) as data:
            arrays = {k: data[k] for k in keys.RECORD_ARRAY_KEYS
                      if k in data.files or k not in keys.OPTIONAL_RECORD_ARRAY_KEYS}
            strings = {k: str(data[k]) for k in keys.RECORD_STRING_KEYS}
        return molecule_graph(arrays, **{k: torch.from_numpy(arrays[k]) for k in
                                         (keys.POSITIONS, keys.BOLTZMANN_WEIGHTS)}, **strings)

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
