"""Diffusion training with Lightning: data batching, a few real steps, checkpoints, resume."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from conformer.config import load_config
from conformer.data import keys
from conformer.data.batching import collate_molecules
from conformer.data.datamodule import ConformerDataModule, ConformerDataset, MaxAtomsBatchSampler
from conformer.data.features import featurize_mol
from tests.stores import ListStore

SMILES = ["CCO", "CC(=O)N", "c1ccccc1O", "C[C@H](N)C(=O)O", "CC=CC", "OCCN", "CCCCl",
          "C1CCOC1", "CC(C)O", "NC(=O)c1ccncc1"]



def make_record(smiles: str, num_confs: int = 3, seed: int = 7) -> dict:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=num_confs, randomSeed=seed))
    record = featurize_mol(mol)
    record[keys.POSITIONS] = np.stack(
        [mol.GetConformer(i).GetPositions() for i in ids]).astype(np.float32)
    record[keys.BOLTZMANN_WEIGHTS] = np.full(len(ids), 1.0 / len(ids), np.float32)
    record[keys.SMILES] = smiles
    record[keys.GEOM_KEY] = smiles
    record[keys.MOLBLOCK] = Chem.MolToMolBlock(mol)
    return record


@pytest.fixture(scope="module")
def store():
    return ListStore([make_record(s) for s in SMILES])


def tiny_config(tmp_path, *extra):
    return load_config("configs/experiment/tiny.yaml",
                       [f"logging.run_dir={tmp_path}", *extra])


def test_sampler_respects_atom_budget_and_covers_every_molecule():
    sizes = [5, 30, 12, 7, 40, 3, 22, 18]
    sampler = MaxAtomsBatchSampler(sizes, max_atoms=35, shuffle=True, seed=3)
    batches = [[i for i, _ in b] for b in sampler]
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
    for b in batches:
        assert sum(sizes[i] for i in b) <= 35 or len(b) == 1  # the 40-atom one goes alone
    sampler.set_epoch(1)
    assert [[i for i, _ in b] for b in sampler] != batches  # reshuffled per epoch


def test_sampler_gives_every_rank_the_same_number_of_batches():
    sizes = list(range(3, 40))
    counts = [len(list(MaxAtomsBatchSampler(sizes, 50, num_replicas=3, rank=r))) for r in range(3)]
    assert len(set(counts)) == 1
    union = {i for r in range(3) for b in MaxAtomsBatchSampler(sizes, 50, num_replicas=3, rank=r)
             for i, _ in b}
    assert union == set(range(len(sizes)))


def test_dataset_draws_a_conformer_per_epoch_and_collate_offsets_bonds(store):
    dataset = ConformerDataset(store, seed=0)
    draws = {tuple(np.round(dataset[(1, epoch)][keys.POS][0].tolist(), 4)) for epoch in range(8)}
    assert len(draws) > 1  # different conformers across epochs
    assert torch.equal(dataset[(1, 5)][keys.POS], dataset[(1, 5)][keys.POS])
    batch = collate_molecules([dataset[0], dataset[1]])
    n0 = len(store[0][keys.ATOMIC_NUMBERS])
    assert batch[keys.NUM_GRAPHS] == 2
    assert batch[keys.BOND_INDEX][:, store[0][keys.BOND_INDEX].shape[1]:].min() >= n0
    assert batch[keys.BATCH].tolist().count(1) == len(store[1][keys.ATOMIC_NUMBERS])
    assert batch[keys.POS].shape == (len(batch[keys.BATCH]), 3)


def _run(config, store, resume=False):
    from conformer.train.run import train

    datamodule = ConformerDataModule(store, store, max_atoms_per_batch=60)
    return train(config, resume=resume, datamodule=datamodule)


def test_tiny_training_run_checkpoints_config_gammas_and_resumes(tmp_path, store):
    torch.set_num_threads(1)
    config = tiny_config(tmp_path, "trainer.max_steps=3", "trainer.checkpoint_every_n_steps=1")
    result = _run(config, store)
    assert result["global_step"] == 3
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    assert ckpt["config"]["model"]["preset"] == "tiny"
    assert ckpt["environment"]["libraries"]["torch"]
    assert any("recm.states" in k or "gamma" in k for k in ckpt["state_dict"])
    assert set(ckpt["ema_state_dict"]) <= {k[4:] for k in ckpt["state_dict"]}
    run_dir = tmp_path / "tiny"
    assert (run_dir / "gammas.png").exists() and (run_dir / "config.yaml").exists()
    metrics = (run_dir / "csv" / "version_0" / "metrics.csv").read_text()
    assert "val/loss" in metrics and "recm/gamma_0" in metrics and "train/loss" in metrics
    gammas_before = [v for k, v in ckpt["state_dict"].items() if k.endswith("gamma")]

    # --resume continues the same run to the new max_steps
    config = tiny_config(tmp_path, "trainer.max_steps=5", "trainer.checkpoint_every_n_steps=1")
    result = _run(config, store, resume=True)
    assert result["global_step"] == 5
    ckpt2 = torch.load(result["last_checkpoint"], weights_only=True)
    assert ckpt2["global_step"] == 5
    gammas_after = [v for k, v in ckpt2["state_dict"].items() if k.endswith("gamma")]
    assert len(gammas_after) == len(gammas_before)

    # a second fresh run on the same folder is refused instead of overwriting it
    from conformer.errors import UserInputError

    with pytest.raises(UserInputError, match="--resume"):
        _run(config, store)


def test_init_from_starts_a_new_run_from_a_checkpoints_ema_weights(tmp_path, store):
    """model.init_from: a fine-tuning run starts from the first run's EMA weights (step 0,
    fresh optimiser), a model file of another architecture is refused with a clear error,
    and the same hydrogen mode is required."""
    from conformer import model_io
    from conformer.errors import UserInputError
    from conformer.train.run import build_network, load_initial_weights

    torch.set_num_threads(1)
    first = _run(tiny_config(tmp_path, "trainer.max_steps=2"), store)
    source = torch.load(first["last_checkpoint"], weights_only=True)

    config = tiny_config(tmp_path, "name=finetune", "trainer.max_steps=0",
                         f"model.init_from={first['last_checkpoint']}")
    net = build_network(config)
    load_initial_weights(net, config.model.init_from, config.data.hydrogens)
    ema = source["ema_state_dict"]
    assert ema
    for name, value in net.state_dict().items():
        expected = ema.get(name, source["state_dict"]["net." + name])
        assert torch.equal(value, expected), name
    # the EMA weights differ from the live ones after training, so the test tells them apart
    assert any(not torch.equal(v, source["state_dict"]["net." + k]) for k, v in ema.items())

    second = _run(tiny_config(tmp_path, "name=finetune", "trainer.max_steps=1",
                              f"model.init_from={first['last_checkpoint']}"), store)
    assert second["global_step"] == 1  # a new run: its own step count
    assert torch.load(second["last_checkpoint"], weights_only=True)["config"]["model"][
        "init_from"] == first["last_checkpoint"]

    wider = tiny_config(tmp_path, "name=wider", "model.overrides.scalar_channels=24",
                        f"model.init_from={first['last_checkpoint']}")
    with pytest.raises(UserInputError, match="model.init_from .*not the one"):
        load_initial_weights(build_network(wider), wider.model.init_from, "explicit")
    with pytest.raises(UserInputError, match="hydrogens"):
        load_initial_weights(build_network(config), config.model.init_from, "implicit")
    with pytest.raises(UserInputError, match="no such file"):
        load_initial_weights(build_network(config), tmp_path / "missing.ckpt", "explicit")
    assert model_io.hydrogen_mode(source) == "explicit"


def test_training_reduces_the_loss_on_a_fixed_batch(store):
    """The diffusion loss on fixed noise falls when the tiny denoiser trains on 4 molecules."""
    from conformer.diffusion import EDMDiffusion
    from conformer.nn import build_denoiser

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = build_denoiser("tiny", "equivariant")
    diffusion = EDMDiffusion()
    batch = collate_molecules([ConformerDataset(store)[i] for i in range(4)])

    def fixed_loss():
        with torch.no_grad():
            return float(diffusion.loss(net, batch, generator=torch.Generator().manual_seed(1)))

    before = fixed_loss()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(40):
        optimizer.zero_grad()
        diffusion.loss(net, batch, generator=torch.Generator().manual_seed(100 + step)).backward()
        optimizer.step()
    assert fixed_loss() < 0.8 * before


def test_export_and_load_model_round_trip(tmp_path, store):
    from conformer.model_io import export_checkpoint, load_model

    torch.set_num_threads(1)
    config = tiny_config(tmp_path, "trainer.max_steps=2")
    result = _run(config, store)
    out = tmp_path / "model.pt"
    meta = export_checkpoint(result["last_checkpoint"], out)
    assert meta["training"]["global_step"] == 2 and meta["model_spec"]["preset"] == "tiny"
    net_a, diffusion, _ = load_model(out)
    net_b, _, _ = load_model(result["last_checkpoint"])  # the checkpoint's EMA weights
    batch = collate_molecules([ConformerDataset(store)[i] for i in range(2)])
    sigma = torch.tensor([0.5, 2.0])
    with torch.no_grad():
        assert torch.allclose(diffusion.denoise(net_a, batch, batch[keys.POS], sigma),
                              diffusion.denoise(net_b, batch, batch[keys.POS], sigma), atol=1e-6)
    # sampler settings may be chosen at export; settings that define the model may not
    tuned = tmp_path / "tuned.pt"
    meta = export_checkpoint(result["last_checkpoint"], tuned, sampler_overrides={"churn": 10.0})
    assert meta["training"]["sampler_overrides"] == {"churn": 10.0}
    assert load_model(tuned)[1].settings.churn == 10.0 and diffusion.settings.churn == 0.0
    from conformer.errors import UserInputError

    with pytest.raises(UserInputError, match="sigma_data"):
        export_checkpoint(result["last_checkpoint"], tuned, sampler_overrides={"sigma_data": 1})
    with pytest.raises(UserInputError, match="churn"):
        export_checkpoint(result["last_checkpoint"], tuned, sampler_overrides={"churn": -1})


def test_conformer_train_scores_recm_b_on_held_out_molecules(tmp_path, store):
    """`conformer train` names each molecule by its dataset index, so RECM holds every k-th
    molecule out of its branches and scores b on those: the held-out statistics fill up."""
    torch.set_num_threads(1)
    config = tiny_config(tmp_path, "trainer.max_steps=3", "model.mode=recm")
    result = _run(config, store)
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    held_out = [v for k, v in ckpt["state_dict"].items()
                if k.startswith("net.") and k.endswith("b_cluster_weight")]
    assert held_out, "no RECM layer state in the checkpoint"
    assert sum(float(v.sum()) for v in held_out) > 0


def test_resume_from_a_mid_epoch_checkpoint_continues_the_epoch(tmp_path, store, monkeypatch):
    """A run stopped mid-epoch and resumed trains on the same batches, in the same order, as
    one uninterrupted run: neither the molecules seen before the stop again, nor the rest of
    the epoch skipped."""
    from conformer.train.module import ConformerDiffusionModule
    from conformer.train.run import train

    torch.set_num_threads(1)
    seen: list[list[int]] = []
    original = ConformerDiffusionModule.training_step

    interrupt_at = []

    def recording_step(self, batch, batch_idx):
        if interrupt_at and self.global_step == interrupt_at[0]:
            raise RuntimeError("interrupted")  # as a killed job: its last checkpoint remains
        seen.append(batch.molecule_id.tolist())
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ConformerDiffusionModule, "training_step", recording_step)

    def run(folder, steps, resume=False):
        config = tiny_config(folder, f"trainer.max_steps={steps}",
                             "trainer.checkpoint_every_n_steps=1")
        datamodule = ConformerDataModule(store, store, max_atoms_per_batch=25)
        return train(config, resume=resume, datamodule=datamodule)

    datamodule = ConformerDataModule(store, store, max_atoms_per_batch=25)
    datamodule.setup("fit")
    assert len(datamodule.train_dataloader()) >= 6  # so that step 3 is mid-epoch

    run(tmp_path / "straight", 5)
    straight, seen[:] = list(seen), []
    interrupt_at.append(3)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(tmp_path / "stopped", 5)
    assert len(seen) == 3
    interrupt_at.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(tmp_path / "stopped", 5, resume=True)
    assert not [w for w in caught if "dataloader is not resumable" in str(w.message)]
    assert len(straight) == 5 and seen == straight


def test_training_batches_carry_each_molecules_dataset_index(store):
    """RECM's held-out molecules are chosen by this id, so it must survive batching as is."""
    datamodule = ConformerDataModule(store, store, max_atoms_per_batch=60)
    datamodule.setup("fit")
    ids = [i for batch in datamodule.train_dataloader() for i in batch.molecule_id.tolist()]
    assert sorted(ids) == list(range(len(store)))


def test_handedness_hinge_is_zero_on_the_clean_conformer_and_positive_on_its_mirror():
    from conformer.diffusion.guidance import signed_volumes
    from conformer.nn.denoiser import ranked_centres
    from conformer.train.module import handedness_hinge

    record = make_record("C[C@H](N)C(=O)O", num_confs=1)
    dataset = ConformerDataset(ListStore([record]), seed=0)
    batch = collate_molecules([dataset[0], dataset[0]])
    centres, ring, _ = ranked_centres(batch)
    assert centres.numel() == 2  # the one R/S centre, once per copy
    clean = batch.pos.double()
    volume = signed_volumes(clean, torch.cat([centres[:1, None], ring[:1]], 1)).abs()
    assert float(volume) > 0.3
    hinge = handedness_hinge(batch, weight=30.0, margin=0.3)
    assert float(hinge(clean, clean)) == 0.0
    assert float(hinge(-clean, clean)) == pytest.approx(30.0 * (0.3 + float(volume)))
    achiral = collate_molecules([ConformerDataset(ListStore([make_record("CCO", 1)]), 0)[0]])
    assert float(handedness_hinge(achiral, 30.0, 0.3)(clean[:9], clean[:9])) == 0.0


def test_training_with_the_volume_hinge_runs_and_records_its_weight(tmp_path, store):
    torch.set_num_threads(1)
    config = tiny_config(tmp_path, "trainer.max_steps=2", "optim.volume_loss_weight=30")
    result = _run(config, store)
    assert result["global_step"] == 2
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    assert ckpt["config"]["optim"]["volume_loss_weight"] == 30.0
