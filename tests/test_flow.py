"""Flow matching with a harmonic prior: prior scale, Kabsch alignment, invariance of the loss,
sampler determinism and batch independence, training, model files, config and the CPU-time
budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from torch import nn

from conformer.config import load_config
from conformer.data import keys
from conformer.data.batching import collate_molecules, copies_batch
from conformer.data.datamodule import ConformerDataModule, ConformerDataset
from conformer.data.features import featurize_mol
from conformer.data.records import molecule_graph
from conformer.diffusion import (
    EDMDiffusion,
    FlowMatching,
    FlowSettings,
    build_diffusion,
    center,
    random_rotations,
)
from conformer.diffusion.flow import harmonic_prior_sqrt, kabsch_rotations, rotate
from conformer.errors import UserInputError
from tests.stores import ListStore

SMILES = ["CCO", "CC(=O)N", "c1ccccc1O", "C[C@H](N)C(=O)O", "CCCCCCCCCC", "NC(=O)c1ccncc1"]


def conformer_record(smiles: str, seed: int = 7) -> dict:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ids = list(AllChem.EmbedMultipleConfs(mol, numConfs=2, randomSeed=seed))
    record = featurize_mol(mol)
    record[keys.POSITIONS] = np.stack(
        [mol.GetConformer(i).GetPositions() for i in ids]).astype(np.float32)
    record[keys.BOLTZMANN_WEIGHTS] = np.full(len(ids), 0.5, np.float32)
    record[keys.SMILES] = record[keys.GEOM_KEY] = smiles
    record[keys.MOLBLOCK] = Chem.MolToMolBlock(mol)
    return record



@pytest.fixture(scope="module")
def store():
    return ListStore([conformer_record(s) for s in SMILES])


def molecule_batch(store, count=None, dtype=torch.float64):
    batch = collate_molecules([ConformerDataset(store)[i] for i in range(count or len(store))])
    batch.pos = batch.pos.to(dtype)
    return batch


def bonds_of(batch):
    source, target = batch.edge_index
    return source[source < target], target[source < target]


def test_harmonic_prior_puts_bonded_atoms_about_one_bond_length_apart(store):
    batch = molecule_batch(store)
    flow = FlowMatching(FlowSettings(bond_length=1.25))
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([flow.sample_prior(batch, generator, torch.float64) for _ in range(200)])
    i, j = bonds_of(batch)
    rms_bond = (draws[:, i] - draws[:, j]).norm(dim=2).pow(2).mean().sqrt()
    # trees: exactly 1.25 A RMS; rings and eps make some bonds a little shorter
    assert 1.05 < float(rms_bond) < 1.3
    # far from the 30 A (EDM) or 2 A-per-atom isotropic scale: a non-bonded pair along the
    # decane chain is farther apart than a bonded one
    assert torch.allclose(center(draws[0], batch.batch, batch.num_graphs), draws[0], atol=1e-10)
    # the gaussian ablation prior has no bond structure
    gaussian = FlowMatching(FlowSettings(prior="gaussian", gaussian_std=2.0))
    iso = torch.stack([gaussian.sample_prior(batch, generator, torch.float64)
                       for _ in range(50)])
    assert float((iso[:, i] - iso[:, j]).norm(dim=2).pow(2).mean().sqrt()) > 2.5


def test_harmonic_prior_handles_fragments_and_single_atoms():
    features = featurize_mol(Chem.AddHs(Chem.MolFromSmiles("CCO")))
    graph = molecule_graph(features, pos=torch.zeros(len(features[keys.ATOMIC_NUMBERS]), 3))
    single = molecule_graph(featurize_mol(Chem.MolFromSmiles("[Cl-]")), pos=torch.zeros(1, 3))
    batch = collate_molecules([graph, single])
    # drop every bond of the first molecule but one: zero modes beyond the centroid
    keep = (batch.edge_index[0] == 0) | (batch.edge_index[1] == 0)
    batch.edge_index = batch.edge_index[:, keep]
    sqrt_cov = harmonic_prior_sqrt(batch, 1.25, 1e-3)
    assert torch.isfinite(sqrt_cov).all()
    x0 = FlowMatching().prior_from_normal(batch, torch.randn(batch.pos.shape[0], 3,
                                                             dtype=torch.float64))
    assert torch.isfinite(x0).all() and x0[-1].abs().max() == 0  # the single ion sits at 0
    assert float(x0[:-1].norm(dim=1).max()) < 50


def test_kabsch_is_a_proper_rotation_that_lowers_the_rmsd(store):
    batch = molecule_batch(store)
    graph, num = batch.batch, batch.num_graphs
    x1 = center(batch.pos, graph, num)
    flow = FlowMatching()
    x0 = flow.sample_prior(batch, torch.Generator().manual_seed(3), torch.float64)
    rotations = kabsch_rotations(x0, x1, graph, num)
    eye = torch.eye(3, dtype=torch.float64).expand(num, 3, 3)
    assert torch.allclose(rotations @ rotations.transpose(1, 2), eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(num, dtype=torch.float64))
    aligned = rotate(x0, rotations, graph)

    def msd(a):
        from torch_geometric.utils import scatter

        return scatter(((a - x1) ** 2).sum(1), graph, 0, num, reduce="mean")

    assert (msd(aligned) <= msd(x0) + 1e-12).all() and (msd(aligned) < msd(x0)).any()
    # optimal among rotations: no random rotation of the aligned draw does better
    for seed in range(5):
        extra = random_rotations(num, torch.Generator().manual_seed(seed), torch.float64)
        assert (msd(rotate(aligned, extra, graph)) >= msd(aligned) - 1e-10).all()
    # recovers a known rotation exactly
    known = random_rotations(num, torch.Generator().manual_seed(9), torch.float64)
    found = kabsch_rotations(rotate(x1, known, graph), x1, graph, num)
    assert torch.allclose(found, known.transpose(1, 2), atol=1e-8)


class EquivariantToyNet(nn.Module):
    """Equivariant in positions: sum over bonds of a learnable function of the bond length
    times the bond vector, plus a per-atom scalar-weighted position (float64)."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.weights = nn.Parameter(torch.tensor([0.3, -0.2, 0.1], dtype=dtype))
        self.calls = 0

    def forward(self, batch, noise_conditioning):
        self.calls += 1
        pos = batch.pos
        source, target = batch.edge_index
        vector = pos[target] - pos[source]
        length = vector.norm(dim=1, keepdim=True)
        t = noise_conditioning[batch.batch[source]].unsqueeze(1)
        message = (self.weights[0] + self.weights[1] * length + self.weights[2] * t) * vector
        out = torch.zeros_like(pos).index_add_(0, source, message)
        return out + self.weights[2] * pos


def test_loss_is_invariant_to_rotating_the_data_float64(store):
    batch = molecule_batch(store)
    net = EquivariantToyNet()
    flow = FlowMatching()
    rotation = random_rotations(1, torch.Generator().manual_seed(5), torch.float64)[0]
    turned = batch.clone()
    turned.pos = batch.pos @ rotation.T + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    # no augmentation, same prior draw and time: the Kabsch-aligned prior turns with the data
    a = flow.loss(net, batch, generator=torch.Generator().manual_seed(1), rotate_data=False)
    b = flow.loss(net, turned, generator=torch.Generator().manual_seed(1), rotate_data=False)
    assert abs(float(a - b)) < 1e-10
    # and the loss is seeded
    c = flow.loss(net, batch, generator=torch.Generator().manual_seed(1), rotate_data=False)
    assert float(a) == float(c)


def test_oracle_velocity_gives_zero_loss_and_exact_samples(store):
    """With one conformer per molecule and x1 known, v = (x1 - x_t) / (1 - t) is the exact
    field: the loss is 0 and Euler with any step count lands on x1."""
    batch = molecule_batch(store, 3)
    x1 = center(batch.pos, batch.batch, batch.num_graphs)

    class Oracle(nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, b, t):
            return (x1 - b.pos) / (1 - t[b.batch].unsqueeze(1))

    flow = FlowMatching(FlowSettings(align=False))
    loss = flow.loss(Oracle(), batch, generator=torch.Generator().manual_seed(0),
                     rotate_data=False)
    assert float(loss) < 1e-20
    for steps, solver in ((1, "euler"), (4, "euler"), (3, "heun")):
        out = flow.sample(Oracle(), batch, steps=steps, solver=solver,
                          generator=torch.Generator().manual_seed(0))
        assert torch.allclose(out, x1, atol=1e-10)


def test_sampler_evaluations_equivariance_determinism_and_guidance(store):
    batch = molecule_batch(store, 3)
    net = EquivariantToyNet()
    flow = FlowMatching(FlowSettings(sample_steps=6))
    assert flow.num_evaluations() == 6 and flow.num_evaluations(5, "heun") == 9
    z = torch.randn(batch.pos.shape[0], 3, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    out = flow.sample(net, batch, x_init=z)
    assert net.calls == 6
    again = flow.sample(net, batch, x_init=z)
    assert torch.equal(out, again)
    rotation = random_rotations(1, torch.Generator().manual_seed(8), torch.float64)[0]
    turned = flow.sample(net, batch, x_init=z @ rotation.T)
    assert torch.allclose(turned, out @ rotation.T, atol=1e-10)
    # guidance sees every clean estimate, with a sigma that falls to 0 as t -> 1
    seen = []

    def guidance(estimate, sigma):
        seen.append(sigma)
        return estimate

    flow.sample(net, batch, x_init=z, guidance=guidance)
    assert len(seen) == 6 and seen[0] == float("inf")
    assert all(a > b for a, b in zip(seen, seen[1:], strict=False)) and seen[-1] < 0.5


def test_sampling_is_batch_size_independent(store):
    """Copies of one molecule sampled in batches of 1 and 3 give the same conformers."""
    torch.manual_seed(0)
    from conformer.nn import build_denoiser

    net = build_denoiser("tiny", "equivariant").double().eval()
    features = featurize_mol(Chem.AddHs(Chem.MolFromSmiles("CC(=O)N")))
    n = len(features[keys.ATOMIC_NUMBERS])
    starts = torch.randn(3 * n, 3, generator=torch.Generator().manual_seed(4),
                         dtype=torch.float64)
    flow = FlowMatching(FlowSettings(sample_steps=4))
    together = flow.sample(net, copies_batch(features, 3), x_init=starts)
    alone = torch.cat([flow.sample(net, copies_batch(features, 1),
                                   x_init=starts[k * n:(k + 1) * n]) for k in range(3)])
    assert torch.allclose(together, alone, atol=1e-8)


def test_training_steps_reduce_the_loss(store):
    from conformer.nn import build_denoiser

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = build_denoiser("tiny", "equivariant")
    flow = FlowMatching()
    batch = molecule_batch(store, 4, dtype=torch.float32)

    def fixed_loss():
        with torch.no_grad():
            return float(flow.loss(net, batch, generator=torch.Generator().manual_seed(1)))

    before = fixed_loss()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(40):
        optimizer.zero_grad()
        flow.loss(net, batch, generator=torch.Generator().manual_seed(100 + step)).backward()
        optimizer.step()
    assert fixed_loss() < 0.8 * before


def test_factory_and_settings_kinds():
    assert isinstance(build_diffusion({"sigma_data": 2.0}), EDMDiffusion)  # old files: no kind
    assert isinstance(build_diffusion({"kind": "edm"}), EDMDiffusion)
    flow = build_diffusion({"kind": "flow", "sample_steps": 7})
    assert isinstance(flow, FlowMatching) and flow.num_evaluations() == 7
    assert flow.settings.churn == 0 and flow.settings.refine_steps == 0  # generation reads them
    with pytest.raises(ValueError, match="diffusion kind"):
        build_diffusion({"kind": "ddpm"})
    with pytest.raises(TypeError):
        build_diffusion({"kind": "flow", "sigma_max": 30.0})
    with pytest.raises(ValueError, match="prior"):
        FlowSettings(prior="uniform")


def test_config_selects_the_kind_and_a_new_kind_replaces_the_base_section(tmp_path):
    config = load_config("configs/bundled/small_recm.yaml", ["diffusion.kind=flow",
                                                            "diffusion.sample_steps=12"])
    assert isinstance(config.diffusion, FlowSettings) and config.diffusion.sample_steps == 12
    assert config.to_dict()["diffusion"]["kind"] == "flow"
    edm = load_config("configs/bundled/small_recm.yaml")
    assert edm.diffusion.kind == "edm" and edm.diffusion.p_mean == -1.0
    # a flow file can be a base too; an edm override on top keeps it flow
    base = tmp_path / "flow.yaml"
    base.write_text("diffusion:\n  kind: flow\n  prior: gaussian\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: flow.yaml\ndiffusion:\n  sample_steps: 9\n")
    loaded = load_config(child)
    assert loaded.diffusion.prior == "gaussian" and loaded.diffusion.sample_steps == 9
    with pytest.raises(UserInputError, match="sigma_max"):
        load_config(child, ["diffusion.sigma_max=3"])
    with pytest.raises(UserInputError, match="kind"):
        load_config(None, ["diffusion.kind=ddpm"])
    from conformer.config import config_keys_help

    text = config_keys_help()
    assert "diffusion.bond_length = 1.25  [flow]" in text and "diffusion.rho = 7.0  [edm]" in text
    assert "trainer.max_cpu_seconds = null" in text


def test_flow_model_file_round_trips_and_generates(tmp_path, store):
    """A tiny flow training run: checkpoint -> exported model file -> `conformer generate`
    (stereo guidance on); the loaded sampler is the flow one."""
    from conformer import cli
    from conformer.model_io import export_checkpoint, load_model
    from conformer.sdf_io import read_conformer_groups
    from conformer.train.run import train

    torch.set_num_threads(1)
    config = load_config("configs/experiment/tiny.yaml", [
        f"logging.run_dir={tmp_path}", "trainer.max_steps=2", "diffusion.kind=flow",
        "diffusion.sample_steps=3"])
    datamodule = ConformerDataModule(store, store, max_atoms_per_batch=60)
    result = train(config, datamodule=datamodule)
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    assert ckpt["diffusion_settings"]["kind"] == "flow"
    out = tmp_path / "flow.pt"
    export_checkpoint(result["last_checkpoint"], out, sampler_overrides={"sample_steps": 4})
    net, diffusion, meta = load_model(out)
    assert isinstance(diffusion, FlowMatching) and diffusion.settings.sample_steps == 4
    with pytest.raises(UserInputError, match="bond_length"):
        export_checkpoint(result["last_checkpoint"], out, sampler_overrides={"bond_length": 1})
    smi = tmp_path / "in.smi"
    smi.write_text("C[C@H](N)C(=O)O alanine\nCCO ethanol\n")
    sdf = tmp_path / "out.sdf"
    assert cli.main(["generate", str(smi), "--out", str(sdf), "--ckpt", str(out),
                     "--num-confs", "2", "--no-progress",
                     "--no-bond-check"]) == 0  # two training steps: not chemistry yet
    groups = read_conformer_groups(sdf)
    assert sorted(groups) == ["alanine", "ethanol"] and len(groups["alanine"]) == 2
    positions = groups["ethanol"][0].GetConformer().GetPositions()
    assert np.isfinite(positions).all() and positions.std() > 0.1


def test_cpu_time_budget_stops_training_and_is_carried_over_a_resume(tmp_path, store):
    from conformer.train.run import train

    torch.set_num_threads(1)
    datamodule = ConformerDataModule(store, store, max_atoms_per_batch=60)
    config = load_config("configs/experiment/tiny.yaml", [
        f"logging.run_dir={tmp_path}", "trainer.max_steps=10000",
        "trainer.max_cpu_seconds=0.5", "trainer.checkpoint_every_n_steps=1000"])
    result = train(config, datamodule=datamodule)
    assert 0 < result["global_step"] < 10000
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    states = [v for k, v in ckpt["callbacks"].items() if "CPUTimeLimit" in k]
    assert len(states) == 1 and states[0]["cpu_seconds_used"] >= 0.5
    # resumed with the same budget: the earlier sitting's seconds count, so it stops after
    # the one step it takes before the first check
    def resume(budget):
        config = load_config("configs/experiment/tiny.yaml", [
            f"logging.run_dir={tmp_path}", "trainer.max_steps=10000",
            f"trainer.max_cpu_seconds={budget}", "trainer.checkpoint_every_n_steps=1000"])
        return train(config, resume=True,
                     datamodule=ConformerDataModule(store, store, max_atoms_per_batch=60))

    assert resume(0.5)["global_step"] == result["global_step"] + 1
    # with a larger budget it trains on until the total reaches it
    again = resume(1.5)
    assert result["global_step"] + 1 < again["global_step"] < 10000
    ckpt = torch.load(again["last_checkpoint"], weights_only=True)
    used = [v for k, v in ckpt["callbacks"].items() if "CPUTimeLimit" in k][0]
    assert 1.5 <= used["cpu_seconds_used"] < 3.0
    with pytest.raises(UserInputError, match="max_cpu_seconds"):
        train(load_config("configs/experiment/tiny.yaml", [
            f"logging.run_dir={tmp_path}/x", "trainer.max_cpu_seconds=-1"]),
            datamodule=datamodule)
