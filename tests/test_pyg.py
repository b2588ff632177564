"""torch-geometric: records are ``Data``, batches are ``Batch``, any PyG model can take the
prepared cache, and the bundled model's output did not move when the batches became PyG's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem
from torch_geometric.data import Batch, Data

from conformer.data import keys
from conformer.data.batching import collate_molecules, copies_batch
from conformer.data.datamodule import ConformerDataModule, ConformerDataset
from conformer.data.features import featurize_mol
from conformer.data.prepare import prepare
from conformer.data.records import MoleculeGraph, molecule_graph, open_prepared

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GEOM_MINI = FIXTURES / "geom_mini"
# computed with the dict batches and conformer.nn.graph's own scatters, before the switch,
# from the bundled model of that time (explicit hydrogens), kept here as a fixture so the check
# outlives the bundled model and old model files keep loading
REFERENCE = FIXTURES / "bundled_denoiser_reference.npz"
REFERENCE_MODEL = FIXTURES / "bundled_model_explicit_h_2026-11.pt"


@pytest.fixture(scope="module")
def train_store(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    prepare(GEOM_MINI, GEOM_MINI / "split.npy", cache, progress=False)
    return open_prepared(cache, "drugs", "train")


def test_bundled_model_output_on_a_fixed_batch_is_unchanged():
    from conformer.model_io import load_model

    reference = np.load(REFERENCE)
    net, _, _ = load_model(REFERENCE_MODEL, "cpu")
    net = net.double()
    graphs, start = [], 0
    for smiles in reference["smiles"]:
        features = featurize_mol(Chem.AddHs(Chem.MolFromSmiles(str(smiles))))
        n = features[keys.ATOMIC_NUMBERS].shape[0]
        graphs.append(molecule_graph(features, pos=torch.from_numpy(reference["pos"][start:start + n])))
        start += n
    assert start == reference["pos"].shape[0]
    with torch.no_grad():
        out = net(collate_molecules(graphs), torch.from_numpy(reference["noise"]))
    np.testing.assert_allclose(out.numpy(), reference["output"], rtol=0, atol=1e-6)


def test_records_are_pyg_data_readable_under_the_record_key_names(train_store):
    record = train_store[0]
    assert isinstance(record, Data)
    assert record[keys.ATOM_FEATURES] is record.x and record[keys.BOND_INDEX] is record.edge_index
    assert record[keys.ATOMIC_NUMBERS] is record.z
    assert record[keys.BOND_FEATURES] is record.edge_attr
    assert record.num_nodes == record.z.shape[0] == record[keys.POSITIONS].shape[1]
    assert keys.ATOM_FEATURES in record and isinstance(record[keys.SMILES], str)


def test_training_batch_is_a_pyg_batch_with_offset_bonds(train_store):
    datamodule = ConformerDataModule(train_store, train_store, max_atoms_per_batch=150)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert isinstance(batch, Batch) and isinstance(batch, MoleculeGraph)
    sizes = torch.bincount(batch.batch, minlength=batch.num_graphs)
    assert batch.num_graphs == batch[keys.NUM_GRAPHS] >= 2 and int(sizes.sum()) <= 150
    assert batch.pos.dtype == torch.float32 and batch.pos.shape == (int(sizes.sum()), 3)
    # every bond joins two atoms of the same molecule after the offsets
    assert torch.equal(batch.batch[batch.edge_index[0]], batch.batch[batch.edge_index[1]])
    assert batch[keys.BOND_INDEX] is batch.edge_index


def test_generation_batches_come_from_the_same_builder():
    features = featurize_mol(Chem.AddHs(Chem.MolFromSmiles("CCO")))
    batch = copies_batch(features, 3)
    assert isinstance(batch, Batch) and batch.num_graphs == 3
    assert batch.x.shape == (27, features[keys.ATOM_FEATURES].shape[1])
    assert batch.edge_index.max() == 26 and batch.pos.abs().sum() == 0


def test_prepared_cache_feeds_a_plain_pyg_loader_and_model(train_store):
    """A user's own PyG model on the prepared records: PyG's DataLoader, MessagePassing and
    pooling, nothing of this project's past the dataset."""
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import MessagePassing, global_mean_pool

    class MeanNeighbourModel(MessagePassing):
        def __init__(self):
            super().__init__(aggr="mean")
            self.embedding = torch.nn.Embedding(128, 8)
            self.read_out = torch.nn.Linear(8, 1)

        def forward(self, data):
            h = self.embedding(data.z)
            h = h + self.propagate(data.edge_index, x=h)
            return self.read_out(global_mean_pool(h, data.batch)).squeeze(-1)

    dataset = ConformerDataset(train_store)
    loader = DataLoader(dataset, batch_size=3, shuffle=False)
    model = MeanNeighbourModel()
    seen = 0
    for data in loader:
        out = model(data)
        assert out.shape == (data.num_graphs,)
        out.sum().backward()
        seen += data.num_graphs
    assert seen == len(train_store)
    assert model.embedding.weight.grad.abs().sum() > 0
