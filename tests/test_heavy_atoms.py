"""Heavy-atom-only models (``data.hydrogens: implicit``): heavy-atom batches from the same
records, hydrogens placed by RDKit at generation, stereo through it, the model file setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from conformer import cli
from conformer.config import load_config
from conformer.data import keys
from conformer.data.batching import collate_molecules
from conformer.data.datamodule import ConformerDataModule, ConformerDataset
from conformer.data.features import featurize_mol
from conformer.data.records import heavy_atom_graph, molecule_graph
from conformer.diffusion.guidance import signed_volumes
from conformer.errors import UserInputError
from conformer.generation.hydrogens import HeavyAtomPlan
from conformer.stereo import StereoChecker
from tests.stores import ListStore

# the bundled model until session 5: explicit hydrogens, written before `hydrogens` existed
EXPLICIT_H_MODEL = Path(__file__).resolve().parent / "fixtures" / "bundled_model_explicit_h_2026-11.pt"

SMILES = ["CCO", "CC(=O)N", "c1ccccc1O", "C[C@H](N)C(=O)O", "C/C=C/C", "OCCN", "CCCCl",
          "C1CCOC1", "CC(C)O", "NC(=O)c1ccncc1"]
# tetrahedral centres with their hydrogen at each position of the neighbour list, both hands,
# a centre without hydrogen, and E/Z bonds whose stereo atoms or other substituents are H
STEREO_SMILES = ["C[C@H](N)C(=O)O", "C[C@@H](N)C(=O)O", "[C@H](F)(Cl)Br", "F[C@H](Cl)Br",
                 "FC(Cl)[C@@H](O)C", "C[C@](F)(Cl)CC", "F/C=C/F", "F/C=C\\F", "C/C=C(/F)C",
                 "O[C@H]1CC[C@@H](N)CC1",
                 # hydrogens written in the SMILES, so they come first, second or third in the
                 # centre's bond order (AddHs would put them last): the wanted sign of the
                 # heavy neighbours flips with the parity of moving the H to the end
                 "[H][C@](F)(Cl)Br", "F[C@]([H])(Cl)Br", "F[C@@](Cl)([H])Br",
                 "[H][C@@](C)(N)C(=O)O", "[H]/C(F)=C/F"]



def embedded(smiles: str, count: int = 3, seed: int = 7) -> Chem.Mol:
    """``smiles`` with its written hydrogens kept where they are, the others added, embedded."""
    params = Chem.SmilesParserParams()
    params.removeHs = False
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles, params))
    assert len(AllChem.EmbedMultipleConfs(mol, numConfs=count, randomSeed=seed)) == count
    return mol


def make_record(smiles: str) -> dict:
    mol = embedded(smiles)
    record = featurize_mol(mol)
    record[keys.POSITIONS] = np.stack([c.GetPositions() for c in mol.GetConformers()]
                                      ).astype(np.float32)
    record[keys.BOLTZMANN_WEIGHTS] = np.full(mol.GetNumConformers(), 1 / 3, np.float32)
    record[keys.SMILES] = record[keys.GEOM_KEY] = smiles
    record[keys.MOLBLOCK] = Chem.MolToMolBlock(mol)
    return record


@pytest.fixture(scope="module")
def store():
    return ListStore([make_record(s) for s in SMILES])


# -- training batches -----------------------------------------------------------------------
def test_heavy_atom_item_has_no_hydrogen_and_exactly_the_heavy_bonds(store):
    explicit = ConformerDataset(store, hydrogens="explicit")
    implicit = ConformerDataset(store, hydrogens="implicit")
    for i, smiles in enumerate(SMILES):
        full, heavy = explicit[(i, 2)], implicit[(i, 2)]
        heavy_mol = Chem.MolFromSmiles(smiles)  # heavy atoms in the order AddHs keeps
        assert (heavy.z != 1).all() and heavy.num_nodes == heavy_mol.GetNumAtoms()
        bonds = {tuple(sorted((b.GetBeginAtomIdx(), b.GetEndAtomIdx())))
                 for b in heavy_mol.GetBonds()}
        pairs = heavy.edge_index.t().tolist()
        assert len(pairs) == 2 * len(bonds)  # both directions of every heavy-heavy bond
        assert {tuple(sorted(p)) for p in pairs} == bonds
        keep = full.z != 1
        # same feature columns and values (x still counts each atom's hydrogens), same pos
        assert torch.equal(heavy.x, full.x[keep]) and torch.equal(heavy.pos, full.pos[keep])
        kept_edges = keep[full.edge_index[0]] & keep[full.edge_index[1]]
        assert torch.equal(heavy.edge_attr, full.edge_attr[kept_edges])
        # every per-edge field follows the edges (the CIP neighbour ranks of stereo inputs)
        assert torch.equal(heavy[keys.CIP_NEIGHBOUR_RANK],
                           full[keys.CIP_NEIGHBOUR_RANK][kept_edges])
        # the explicit setting is the graph as before: every atom, every bond
        assert torch.equal(full.z, torch.as_tensor(store[i][keys.ATOMIC_NUMBERS]))
        assert full.edge_index.shape[1] == store[i][keys.BOND_INDEX].shape[1]
    assert implicit.num_atoms == [Chem.MolFromSmiles(s).GetNumAtoms() for s in SMILES]
    assert explicit.num_atoms == [len(store[i][keys.ATOMIC_NUMBERS]) for i in range(len(SMILES))]
    batch = collate_molecules([implicit[0], implicit[3]])
    assert batch.edge_index[:, implicit[0].edge_index.shape[1]:].min() == implicit[0].num_nodes


def test_heavy_atom_graph_of_a_record_keeps_every_conformer_and_string(store):
    record = molecule_graph(store[3], **{keys.POSITIONS: torch.as_tensor(store[3][keys.POSITIONS]),
                                         keys.SMILES: "x"})
    heavy = heavy_atom_graph(record)
    keep = record.z != 1
    assert torch.equal(heavy[keys.POSITIONS], record[keys.POSITIONS][:, keep])
    assert heavy[keys.SMILES] == "x"
    assert torch.equal(heavy_atom_graph(heavy).edge_index, heavy.edge_index)  # idempotent


def test_hydrogens_setting_is_checked_and_reaches_the_datamodule(tmp_path):
    config = load_config("configs/experiment/tiny.yaml", ["data.hydrogens=implicit"])
    assert ConformerDataModule.from_config(config.data).hydrogens == "implicit"
    assert load_config("configs/experiment/tiny.yaml").data.hydrogens == "explicit"
    with pytest.raises(UserInputError, match="hydrogens 'none': choose explicit or implicit"):
        load_config("configs/experiment/tiny.yaml", ["data.hydrogens=none"])


# -- hydrogen placement and stereo ------------------------------------------------------------
def _bonded_h_lengths(mol: Chem.Mol, positions: np.ndarray) -> np.ndarray:
    lengths = []
    for atom in mol.GetAtoms():
        if atom.GetAtomicNum() == 1:
            (neighbour,) = atom.GetNeighbors()
            lengths.append(np.linalg.norm(positions[atom.GetIdx()]
                                          - positions[neighbour.GetIdx()]))
    return np.asarray(lengths)


@pytest.mark.parametrize("smiles", STEREO_SMILES)
def test_placed_hydrogens_keep_stereo_and_bond_lengths(smiles):
    mol = embedded(smiles)
    plan = HeavyAtomPlan(mol, featurize_mol(mol))
    reference = np.stack([c.GetPositions() for c in mol.GetConformers()])
    placed = plan.place(reference[:, plan.heavy])
    assert np.array_equal(placed[:, plan.heavy], reference[:, plan.heavy])
    checker = StereoChecker(mol)
    assert checker.has_stereo
    for xyz in placed:
        lengths = _bonded_h_lengths(mol, xyz)
        assert ((lengths > 0.9) & (lengths < 1.2)).all(), lengths
        assert checker.check(xyz).correct  # the placed H inverts no centre, flips no bond
    # the heavy-atom targets are met exactly where the full ones are (ETKDG honours stereo)
    targets = plan.targets(checker.targets())
    heavy_xyz = torch.as_tensor(reference[0, plan.heavy])
    volumes = signed_volumes(heavy_xyz, torch.as_tensor(targets.centres))
    assert len(targets.centres) == len(checker.centres)
    assert (np.sign(volumes.numpy()) == targets.centre_signs).all()
    assert len(targets.bonds) == len(checker.bonds)
    assert (targets.covalent < plan.num_heavy).all() and (targets.bonds < plan.num_heavy).all()


def test_relaxed_hydrogens_stay_bonded_and_heavy_atoms_stay_fixed():
    mol = embedded("C[C@H](N)C(=O)O", count=2)
    plan = HeavyAtomPlan(mol, featurize_mol(mol), relax=True)
    heavy = np.stack([c.GetPositions() for c in mol.GetConformers()])[:, plan.heavy]
    relaxed = plan.place(heavy)
    assert np.allclose(relaxed[:, plan.heavy], heavy, atol=1e-4)
    unrelaxed = HeavyAtomPlan(mol, featurize_mol(mol)).place(heavy)
    assert not np.allclose(relaxed, unrelaxed)  # the minimiser moved the hydrogens
    for xyz in relaxed:
        lengths = _bonded_h_lengths(mol, xyz)
        assert ((lengths > 0.9) & (lengths < 1.2)).all()


# -- a tiny heavy-atom model, end to end ------------------------------------------------------
@pytest.fixture(scope="module")
def heavy_model(tmp_path_factory, store):
    from conformer.model_io import export_checkpoint
    from conformer.train.run import train

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("heavy")
    config = load_config("configs/experiment/tiny.yaml",
                         [f"logging.run_dir={tmp}", "trainer.max_steps=3",
                          "data.hydrogens=implicit", "diffusion.sample_steps=3"])
    datamodule = ConformerDataModule(store, store, max_atoms_per_batch=40, hydrogens="implicit")
    result = train(config, datamodule=datamodule)
    assert result["global_step"] == 3
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    assert ckpt["model_spec"]["hydrogens"] == "implicit"
    out = tmp / "heavy.pt"
    export_checkpoint(result["last_checkpoint"], out)
    return out


def test_a_datamodule_of_the_other_kind_is_refused(tmp_path, store):
    from conformer.train.run import train

    config = load_config("configs/experiment/tiny.yaml",
                         [f"logging.run_dir={tmp_path}", "data.hydrogens=implicit"])
    with pytest.raises(UserInputError, match="data.hydrogens implicit"):
        train(config, datamodule=ConformerDataModule(store, store))


def test_heavy_model_file_round_trips_and_old_files_read_as_explicit(heavy_model, tmp_path):
    from conformer.generation.sampler import ConformerModel
    from conformer.model_io import hydrogen_mode, load_model

    _, _, meta = load_model(heavy_model)
    assert hydrogen_mode(meta) == "implicit"
    assert ConformerModel.load(heavy_model, "cpu").hydrogens == "implicit"
    # a file written before the option existed (the explicit-hydrogen bundled model of 2026-11)
    old = ConformerModel.load(EXPLICIT_H_MODEL, "cpu")
    assert "hydrogens" not in old.meta["model_spec"] and old.hydrogens == "explicit"
    # the bundled model since session 5 diffuses heavy atoms only
    assert ConformerModel.load(None, "cpu").hydrogens == "implicit"
    data = torch.load(heavy_model, weights_only=True)
    data["model_spec"]["hydrogens"] = "some"
    odd = tmp_path / "odd.pt"
    torch.save(data, odd)
    with pytest.raises(UserInputError, match="model_spec hydrogens 'some'"):
        load_model(odd)


def test_conformer_generate_with_a_heavy_model_writes_hydrogens(tmp_path, heavy_model):
    from conformer.sdf_io import read_conformer_groups

    smi = tmp_path / "in.smi"
    smi.write_text("C[C@H](N)C(=O)O alanine\nC/C=C/C butene\nC methane\n")
    out = tmp_path / "out.sdf"
    code = cli.main(["generate", str(smi), "--out", str(out), "--ckpt", str(heavy_model),
                     "--num-confs", "3", "--no-progress", "--no-bond-check", "--device", "cpu"])
    assert code == 0
    groups = read_conformer_groups(out)
    assert set(groups) == {"alanine", "butene", "methane"}
    for name, smiles in (("alanine", "C[C@H](N)C(=O)O"), ("butene", "C/C=C/C"),
                         ("methane", "C")):
        expected = Chem.AddHs(Chem.MolFromSmiles(smiles))
        for mol in groups[name]:
            assert mol.GetNumAtoms() == expected.GetNumAtoms()  # hydrogens written
            symbols = [a.GetSymbol() for a in mol.GetAtoms()]
            assert symbols == [a.GetSymbol() for a in expected.GetAtoms()]  # mol's order
            lengths = _bonded_h_lengths(mol, mol.GetConformer().GetPositions())
            assert ((lengths > 0.9) & (lengths < 1.2)).all(), (name, lengths)
    # the written stereo-correct flags are the checker's on the full molecule
    for mol in groups["alanine"]:
        assert mol.GetProp("stereo_wrong_conformers") == ""


def test_api_generates_through_the_same_path(heavy_model):
    import conformer

    (mol,) = conformer.generate(["CC(C)O"], num_confs=2, model=str(heavy_model),
                                device="cpu", bond_check=False, mmff=False)
    assert mol.GetNumConformers() == 2 and mol.GetNumAtoms() == 12
    (bare,) = conformer.generate(["CC(C)O"], num_confs=2, model=str(heavy_model),
                                 device="cpu", bond_check=False, hydrogens=False, mmff=False)
    assert bare.GetNumAtoms() == 4
    (relaxed,) = conformer.generate(["CC(C)O"], num_confs=2, model=str(heavy_model),
                                    device="cpu", bond_check=False, relax_hydrogens=True,
                                    mmff=False)
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1]
    moved = relaxed.GetConformer(0).GetPositions() - mol.GetConformer(0).GetPositions()
    # same heavy atoms (same seed), hydrogens moved by the H-only minimisation
    assert np.abs(moved[heavy] - moved[heavy].mean(axis=0)).max() < 1e-3
    assert np.abs(moved).max() > 1e-3


def test_mmff_polish_minimises_what_the_model_drew_and_keeps_the_stereo(heavy_model, tmp_path):
    import json

    from rdkit.Chem import rdForceFieldHelpers

    import conformer

    smiles = "C[C@H](N)C(=O)O"
    (raw,) = conformer.generate([smiles], num_confs=3, model=str(heavy_model), device="cpu",
                                bond_check=False, seed=3, mmff=False)
    assert not raw.HasProp("mmff")
    (polished,) = conformer.generate([smiles], num_confs=3, model=str(heavy_model),
                                     device="cpu", bond_check=False, seed=3)  # on by default
    assert polished.GetProp("mmff") == "minimised"
    assert polished.GetIntProp("mmff_unconverged") == 0
    assert polished.GetNumConformers() == 3
    properties = rdForceFieldHelpers.MMFFGetMoleculeProperties(polished)
    for conf_id in range(3):
        raw_field = rdForceFieldHelpers.MMFFGetMoleculeForceField(raw, properties, confId=conf_id)
        field = rdForceFieldHelpers.MMFFGetMoleculeForceField(polished, properties,
                                                              confId=conf_id)
        assert field.CalcEnergy() < raw_field.CalcEnergy()
        assert np.linalg.norm(field.CalcGrad()) < 1.0  # a minimum, kcal/mol/A
    # the stereo check ran on the minimised conformers, and the centre is the input's
    assert polished.GetProp("stereo_wrong_conformers") == ""
    for conf_id in range(3):
        copy = Chem.Mol(polished, confId=conf_id)
        Chem.AssignStereochemistryFrom3D(copy, confId=conf_id)
        assert Chem.MolToSmiles(Chem.RemoveHs(copy)) == Chem.MolToSmiles(
            Chem.MolFromSmiles(smiles))
    # the CLI: the same option, recorded in the run's settings and in every record
    smi = tmp_path / "in.smi"
    smi.write_text(f"{smiles} alanine\n")
    out = tmp_path / "out.sdf"
    assert cli.main(["generate", str(smi), "--out", str(out), "--ckpt", str(heavy_model),
                     "--num-confs", "2", "--no-progress", "--device", "cpu"]) == 0
    records = [m for m in Chem.SDMolSupplier(str(out), removeHs=False)]
    assert len(records) == 2 and all(m.GetProp("mmff") == "minimised" for m in records)
    settings = json.loads(out.with_suffix(".settings.json").read_text())
    assert settings["mmff"] is True
    # --no-mmff: the samples as drawn, and a settings file like those written before the polish
    raw_out = tmp_path / "raw.sdf"
    assert cli.main(["generate", str(smi), "--out", str(raw_out), "--ckpt", str(heavy_model),
                     "--num-confs", "2", "--no-progress", "--device", "cpu", "--no-mmff",
                     "--no-bond-check"]) == 0  # a 3-step model's raw bonds fail the check
    assert not any(m.HasProp("mmff") for m in Chem.SDMolSupplier(str(raw_out), removeHs=False))
    assert "mmff" not in json.loads(raw_out.with_suffix(".settings.json").read_text())
    # the RDKit methods ignore it: etkdg-mmff is the polished baseline
    etkdg_out = tmp_path / "etkdg.sdf"
    assert cli.main(["generate", str(smi), "--out", str(etkdg_out), "--method", "etkdg",
                     "--num-confs", "2", "--no-progress"]) == 0
    assert not any(m.HasProp("mmff") for m in Chem.SDMolSupplier(str(etkdg_out)))


def test_a_hydrogen_stereo_atom_is_replaced_by_the_other_substituent():
    from conformer.diffusion.guidance import StereoTargets

    mol = embedded("C/C=C/F")
    checker = StereoChecker(mol)
    plan = HeavyAtomPlan(mol, featurize_mol(mol))
    full = checker.targets()
    expected = plan.targets(full)
    a, a_other, b, c, d, d_other = (int(i) for i in full.bonds[0])
    assert mol.GetAtomWithIdx(a_other).GetAtomicNum() == 1
    # the same bond stated from the hydrogen's side: it sits opposite the methyl
    swapped = StereoTargets.build(full.centres, full.centre_signs,
                                  [[a_other, a, b, c, d, d_other]], -full.bond_signs,
                                  full.covalent)
    mapped = plan.targets(swapped)
    assert np.array_equal(mapped.bonds, expected.bonds)
    assert np.array_equal(mapped.bond_signs, expected.bond_signs)


def test_an_explicit_hydrogen_model_samples_every_atom_as_before():
    from conformer.generation.sampler import ConformerModel, ModelSampler

    torch.set_num_threads(1)
    sampler = ModelSampler(ConformerModel.load(EXPLICIT_H_MODEL, "cpu"), 3, 8)
    assert not sampler.heavy_atoms_only
    mol = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)O"))
    targets = StereoChecker(mol).targets()
    drawn = sampler.molecule_draws(mol, torch.Generator().manual_seed(5), targets)(2)
    direct = sampler.sample(featurize_mol(mol), 2, torch.Generator().manual_seed(5), targets)
    assert drawn.shape == (2, mol.GetNumAtoms(), 3) and np.array_equal(drawn, direct)


def test_the_heavy_ablation_arm_is_the_bundled_recipe_on_heavy_atoms():
    import yaml

    arms = yaml.safe_load(open("scripts/recipe_ablation_arms.yaml"))["arms"]
    (arm,) = [a for a in arms if a["name"] == "heavy"]
    config = load_config(arm["config"], arm.get("overrides", []))
    assert config.data.hydrogens == "implicit"
    assert config.model == load_config("configs/bundled/small_recm.yaml").model


def test_a_heavy_model_that_reads_cip_ranks_generates(tmp_path):
    """Generation builds the heavy-atom graph with the CIP neighbour ranks such a model reads
    (the chirality inputs need them); a centre's ranks survive the hydrogens' removal."""
    from conformer.diffusion import EDMSettings
    from conformer.generation.hydrogens import heavy_atom_features
    from conformer.model_io import save_model
    from conformer.nn import build_denoiser

    features = featurize_mol(Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)C(=O)O")))
    heavy = heavy_atom_features(features)
    assert heavy[keys.CIP_NEIGHBOUR_RANK].shape == (heavy[keys.BOND_INDEX].shape[1],)
    assert sorted(heavy[keys.CIP_NEIGHBOUR_RANK][heavy[keys.BOND_INDEX][1] == 1]) == [1, 2, 3]
    torch.manual_seed(0)
    overrides = {"cip_rank_edges": True, "chirality_features": True, "parity_readout": True}
    path = tmp_path / "chiral.pt"
    save_model(build_denoiser("tiny", "recm", **overrides),
               {"preset": "tiny", "mode": "recm", "overrides": overrides,
                "hydrogens": "implicit"}, vars(EDMSettings(sample_steps=3)), path)
    smi = tmp_path / "in.smi"
    smi.write_text("C[C@H](N)C(=O)O alanine\n")
    out = tmp_path / "out.sdf"
    code = cli.main(["generate", str(smi), "--out", str(out), "--ckpt", str(path),
                     "--num-confs", "2", "--no-progress", "--no-bond-check", "--no-mmff"])
    assert code == 0 and out.read_text().count("$$$$") == 2
