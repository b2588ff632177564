"""Batches of molecules for training: one random conformer per molecule per epoch, packed by
atom count.

A store is anything with ``len(store)`` and ``store[i] -> record`` (a
``conformer.data.records.MoleculeGraph`` or a dict under the record key names of
``conformer.data.keys``), normally ``conformer.data.records.open_prepared(cache_dir, dataset,
split)``. Items are torch_geometric ``Data`` and batches PyG ``Batch`` objects, so the dataset
also feeds a plain ``torch_geometric.loader.DataLoader`` and any PyG model.

Batching by atom count: molecules differ tenfold in size, so a fixed number of molecules per
batch gives wildly varying memory and step times. ``MaxAtomsBatchSampler`` packs shuffled
molecules greedily into batches of at most ``max_atoms`` atoms. Under DDP every rank gets the
same number of batches (the global list of batches is dealt round-robin and padded), because a
rank that runs out of batches early would leave the others waiting in all-reduce forever.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from conformer.config import HYDROGEN_MODES
from conformer.data import keys
from conformer.data.batching import collate_molecules
from conformer.data.records import HYDROGEN, MoleculeGraph, heavy_atom_graph, molecule_graph


def record_num_atoms(store, i: int, heavy_only: bool = False) -> int:
    """Atom count of record ``i`` (heavy atoms only when ``heavy_only``) without reading its
    conformers when the store allows it."""
    file_of = getattr(store, "file", None)
    if file_of is not None:
        with np.load(file_of(i), allow_pickle=False) as data:
            z = data[keys.ATOMIC_NUMBERS]
    else:
        z = store[i][keys.ATOMIC_NUMBERS]
    z = np.asarray(z)
    return int((z != HYDROGEN).sum()) if heavy_only else int(z.shape[0])


class ConformerDataset(Dataset):
    """``dataset[i]`` -> the graph of molecule ``i`` with ONE of its conformers as ``POS``.

    The conformer is drawn uniformly from the stored ones by a generator seeded with
    (seed, epoch, i): a different conformer each epoch, the same one on every rank and on a
    resumed run. ``fixed_conformer=True`` always takes the first (lowest-energy) one
    (validation). Returns a MoleculeGraph (x, z, edge_index, edge_attr and pos [N, 3] float32,
    Angstrom); ``conformer.data.batching.collate_molecules`` makes the batch.

    hydrogens: ``"explicit"`` (every atom) or ``"implicit"`` (the heavy-atom graph,
    ``conformer.data.records.heavy_atom_graph``; ``num_atoms`` then counts heavy atoms).
    """

    def __init__(self, store, seed: int = 0, fixed_conformer: bool = False,
                 max_molecules: int = 0, hydrogens: str = "explicit"):
        if hydrogens not in HYDROGEN_MODES:
            raise ValueError(f"hydrogens {hydrogens!r}: choose {' or '.join(HYDROGEN_MODES)}")
        self.store = store
        self.heavy_only = hydrogens == "implicit"
        self.seed = seed
        self.fixed_conformer = fixed_conformer
        self.epoch = 0
        self.size = len(store) if not max_molecules else min(len(store), max_molecules)
        self._num_atoms: list[int] | None = None

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_atoms(self) -> list[int]:
        if self._num_atoms is None:
            self._num_atoms = [record_num_atoms(self.store, i, self.heavy_only)
                               for i in range(self.size)]
        return self._num_atoms

    def __getitem__(self, item: int | tuple[int, int]) -> MoleculeGraph:
        # the batch sampler passes (index, epoch): the epoch then reaches worker processes too
        i, epoch = item if isinstance(item, tuple) else (item, self.epoch)
        record = self.store[i]
        positions = record[keys.POSITIONS]
        if self.fixed_conformer or positions.shape[0] == 1:
            choice = 0
        else:
            rng = np.random.default_rng((self.seed, epoch, i))
            choice = int(rng.integers(positions.shape[0]))
        # a copy: an in-memory store must not share its arrays with the items handed out
        pos = torch.as_tensor(positions[choice]).to(torch.float32, copy=True)
        graph = molecule_graph(record, pos=pos)
        # a stable id per molecule: RECM holds every k-th molecule out of its branches'
        # gradient and scores b on those alone (conformer.recm, RECMController.hold_out).
        # Not "..._index": PyG's Batch offsets every field whose name holds "index" by the
        # atom count, as for edge_index.
        graph.molecule_id = torch.tensor([i], dtype=torch.long)
        return heavy_atom_graph(graph) if self.heavy_only else graph


class MaxAtomsBatchSampler(Sampler[list[int]]):
    """Batches of indices with at most ``max_atoms`` atoms each (a larger molecule goes alone).

    Lightning calls ``set_epoch`` before each epoch; the epoch travels with every index to the
    dataset, which draws that epoch's conformer.

    Shuffled with (seed, epoch) when ``shuffle``; for DDP, ``num_replicas``/``rank`` deal the
    global batch list round-robin, repeating early batches so every rank has the same count.
    """

    def __init__(self, num_atoms: Sequence[int], max_atoms: int, shuffle: bool = True,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0):
        if max_atoms < 1:
            raise ValueError("max_atoms must be positive")
        self.num_atoms = list(num_atoms)
        self.max_atoms = max_atoms
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.resume_at: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_once(self, epoch: int, batches: int) -> None:
        """Leave out the first ``batches`` batches of ``epoch`` the next time that epoch is
        iterated: a run resumed from a mid-epoch checkpoint then goes on with the batches it
        had not seen, in the same order (the batch list is a function of seed and epoch)."""
        self.resume_at = (epoch, batches)

    def global_batches(self) -> list[list[int]]:
        order = np.arange(len(self.num_atoms))
        if self.shuffle:
            order = np.random.default_rng((self.seed, self.epoch)).permutation(order)
        batches, current, atoms = [], [], 0
        for index in order.tolist():
            n = self.num_atoms[index]
            if current and atoms + n > self.max_atoms:
                batches.append(current)
                current, atoms = [], 0
            current.append(index)
            atoms += n
        if current:
            batches.append(current)
        return batches

    def _rank_batches(self) -> list[list[int]]:
        batches = self.global_batches()
        per_rank = math.ceil(len(batches) / self.num_replicas)
        padded = batches + batches[: per_rank * self.num_replicas - len(batches)]
        return padded[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        """Each batch is a list of (molecule index, epoch) pairs."""
        batches = self._rank_batches()
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            batches = batches[self.resume_at[1]:]
            self.resume_at = None
        for batch in batches:
            yield [(index, self.epoch) for index in batch]

    def __len__(self) -> int:
        return math.ceil(len(self.global_batches()) / self.num_replicas)


class _ResumableTrainLoader(DataLoader):
    """The training loader. Its position is kept by ``ConformerDataModule.state_dict`` (the
    sampler then skips what the interrupted run had trained on); these two methods tell
    Lightning that a mid-epoch resume is handled, which it otherwise warns about."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class ConformerDataModule(L.LightningDataModule):
    """Train/val loaders over prepared records.

    train_store, val_store: record stores (see module docstring), or None to open them lazily
    with ``open_prepared(cache_dir, dataset, split)`` in ``setup``.
    """

    def __init__(self, train_store=None, val_store=None, *, cache_dir: str | None = None,
                 dataset: str = "drugs", train_split: str = "train", val_split: str = "val",
                 max_atoms_per_batch: int = 1500, max_molecules: int = 0, num_workers: int = 0,
                 seed: int = 0, hydrogens: str = "explicit"):
        super().__init__()
        self.train_store, self.val_store = train_store, val_store
        self.cache_dir, self.dataset = cache_dir, dataset
        self.train_split, self.val_split = train_split, val_split
        self.max_atoms_per_batch = max_atoms_per_batch
        self.max_molecules = max_molecules
        self.num_workers = num_workers
        self.seed = seed
        self.hydrogens = hydrogens
        self.train_dataset: ConformerDataset | None = None
        self.val_dataset: ConformerDataset | None = None
        self._train_sampler: MaxAtomsBatchSampler | None = None
        self._resume_position: dict | None = None

    @classmethod
    def from_config(cls, data_config, seed: int = 0) -> ConformerDataModule:
        return cls(cache_dir=data_config.cache_dir, dataset=data_config.dataset,
                   train_split=data_config.train_split, val_split=data_config.val_split,
                   max_atoms_per_batch=data_config.max_atoms_per_batch,
                   max_molecules=data_config.max_molecules,
                   num_workers=data_config.num_workers, seed=seed,
                   hydrogens=data_config.hydrogens)

    def setup(self, stage: str | None = None) -> None:
        if self.train_store is None or self.val_store is None:
            from conformer.data.records import open_prepared

            if self.train_store is None:
                self.train_store = open_prepared(self.cache_dir, self.dataset, self.train_split)
            if self.val_store is None:
                self.val_store = open_prepared(self.cache_dir, self.dataset, self.val_split)
        if self.train_dataset is None:
            self.train_dataset = ConformerDataset(self.train_store, seed=self.seed,
                                                  max_molecules=self.max_molecules,
                                                  hydrogens=self.hydrogens)
            self.val_dataset = ConformerDataset(self.val_store, seed=self.seed,
                                                fixed_conformer=True,
                                                max_molecules=self.max_molecules,
                                                hydrogens=self.hydrogens)

    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset: ConformerDataset, sampler: MaxAtomsBatchSampler,
                loader_class: type[DataLoader] = DataLoader) -> DataLoader:
        return loader_class(dataset, batch_sampler=sampler, collate_fn=collate_molecules,
                            num_workers=self.num_workers,
                            persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        replicas, rank = self._replicas()
        self._train_sampler = MaxAtomsBatchSampler(
            self.train_dataset.num_atoms, self.max_atoms_per_batch, shuffle=True,
            seed=self.seed, num_replicas=replicas, rank=rank)
        if self._resume_position is not None:
            self._train_sampler.skip_once(self._resume_position["epoch"],
                                          self._resume_position["batches_done"])
            self._resume_position = None
        return self._loader(self.train_dataset, self._train_sampler, _ResumableTrainLoader)

    # -- resuming mid-epoch ------------------------------------------------------------------
    # Lightning stores these in every checkpoint (under this class's name) and hands them back
    # on --resume, before the train loader is built. Without them a resumed run would start its
    # epoch over: the molecules seen before the interruption again, the rest of the epoch never.
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is None or not trainer.training or self._train_sampler is None:
            return {}
        # the sampler's epoch is the data's (Lightning's own counter moves on at the end of a
        # run stopped by max_steps); batch_idx is the batch being finished when a step-based
        # checkpoint is written
        loop = trainer.fit_loop.epoch_loop
        return {"epoch": int(self._train_sampler.epoch), "batches_done": int(loop.batch_idx) + 1}

    def load_state_dict(self, state_dict: dict) -> None:
        if "epoch" in state_dict and "batches_done" in state_dict:
            self._resume_position = {"epoch": int(state_dict["epoch"]),
                                     "batches_done": int(state_dict["batches_done"])}

    def val_dataloader(self) -> DataLoader:
        replicas, rank = self._replicas()
        sampler = MaxAtomsBatchSampler(self.val_dataset.num_atoms, self.max_atoms_per_batch,
                                       shuffle=False, num_replicas=replicas, rank=rank)
        return self._loader(self.val_dataset, sampler)
