"""The Python API: conformer.generate / load_model / evaluate, devices, and the README example."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem

import conformer
from conformer import cli
from conformer.cli_settings import pick_settings
from conformer.errors import UserInputError
from conformer.generation import GenerateOptions, generate_file, resolve_device
from conformer.sdf_io import read_conformer_groups

ROOT = Path(__file__).resolve().parent.parent


def _run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that imports this checkout's ``conformer``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained tiny equivariant denoiser as a model file (plumbing, not quality)."""
    from conformer.diffusion import EDMSettings
    from conformer.model_io import save_model
    from conformer.nn import build_denoiser

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(build_denoiser("tiny", "equivariant"),
               {"preset": "tiny", "mode": "equivariant", "overrides": {}},
               vars(EDMSettings(sample_steps=3)), path)
    return path


def _positions(mol: Chem.Mol) -> np.ndarray:
    return np.stack([c.GetPositions() for c in mol.GetConformers()])


# -- generate ------------------------------------------------------------------------------
def test_generate_imports_no_lightning_and_gives_every_molecule_its_conformers(tmp_path):
    code = ("import conformer, sys; ms = conformer.generate(['CCO', 'c1ccccc1O'], num_confs=3, "
            "seed=1); print([m.GetNumConformers() for m in ms]); "
            "print(sorted(m for m in sys.modules if m.startswith(('lightning', "
            "'pytorch_lightning'))))")
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    counts, lightning = result.stdout.strip().splitlines()[-2:]
    assert counts == "[3, 3]"
    assert lightning == "[]"


def test_same_seed_same_conformers_and_a_loaded_model_is_reusable(model_file):
    torch.set_num_threads(1)
    model = conformer.load_model(model_file, device="cpu")
    # an untrained model's samples have impossible bonds: the bond check is off (plumbing)
    first = conformer.generate(["CCO", "CC(=O)N"], num_confs=3, seed=5, model=model,
                               bond_check=False)
    again = conformer.generate(["CCO", "CC(=O)N"], num_confs=3, seed=5, model=model,
                               bond_check=False)
    by_path = conformer.generate(["CCO", "CC(=O)N"], num_confs=3, seed=5, model=str(model_file),
                                 bond_check=False,
                                 device="cpu")
    other = conformer.generate(["CCO", "CC(=O)N"], num_confs=3, seed=6, model=model,
                               bond_check=False)
    for a, b, c, d in zip(first, again, by_path, other, strict=True):
        assert a.GetNumConformers() == 3 and a.GetNumAtoms() == Chem.AddHs(a).GetNumAtoms()
        np.testing.assert_array_equal(_positions(a), _positions(b))
        np.testing.assert_array_equal(_positions(a), _positions(c))
        assert np.abs(_positions(a) - _positions(d)).max() > 1e-3


def test_api_and_cli_run_the_same_code(tmp_path, model_file):
    """Molecule k of the list gets what line k of an input file gets, properties included."""
    torch.set_num_threads(1)
    smi = tmp_path / "in.smi"
    smi.write_text("CCO\nC[C@H](N)C(=O)O\n")
    out = tmp_path / "out.sdf"
    generate_file(smi, out, GenerateOptions(ckpt=str(model_file), num_confs=2, seed=3,
                                            bond_check=False, progress=False))
    written = read_conformer_groups(out, key="input_line")
    mols = conformer.generate(["CCO", "C[C@H](N)C(=O)O"], num_confs=2, seed=3, model=model_file,
                              device="cpu", bond_check=False)
    for index, mol in enumerate(mols, start=1):
        records = written[str(index)]
        file_positions = np.stack([r.GetConformer().GetPositions() for r in records])
        assert np.abs(_positions(mol) - file_positions).max() < 1e-3  # SDF: 4 decimals
        expected = {k: v for k, v in records[0].GetPropsAsDict().items() if k != "conformer"}
        got = mol.GetPropsAsDict()
        assert {k: str(v) for k, v in got.items() if k != "name"} == \
            {k: str(v) for k, v in expected.items() if k != "name"}
    assert "stereo_wrong_conformers" in mols[1].GetPropNames()


def test_failures_come_back_in_place_with_their_reason(model_file):
    salt = Chem.MolFromSmiles("CC(=O)[O-].[Na+]")
    salt.SetProp("_Name", "acetate")
    inputs = ["CO", "not_a_smiles", salt, "[U](F)(F)F", "CCCC"]  # CO: 6 atoms with H
    mols = conformer.generate(inputs, num_confs=2, model=model_file, device="cpu",
                              max_atoms=6, bond_check=False)
    assert [m.GetNumConformers() for m in mols] == [2, 0, 0, 0, 0]
    assert not mols[0].HasProp("failure_reason")
    reasons = [m.GetProp("failure_reason") for m in mols[1:]]
    assert "invalid SMILES" in reasons[0] and "fragments" in reasons[1]
    assert "unsupported element" in reasons[2] and "too many atoms" in reasons[3]
    assert mols[1].GetNumAtoms() == 0 and mols[1].GetProp("input") == "not_a_smiles"
    assert mols[2].GetProp("name") == "acetate" and mols[2].GetNumAtoms() == salt.GetNumAtoms()
    assert [m.GetIntProp("input_line") for m in mols] == [1, 2, 3, 4, 5]


def test_a_mol_keeps_its_name_atom_order_and_stereo():
    """With the bundled model: every conformer carries the input Mol's configuration."""
    torch.set_num_threads(1)
    alanine = Chem.AddHs(Chem.MolFromSmiles("C[C@H](N)C(=O)O"))
    order = list(range(alanine.GetNumAtoms()))[::-1]  # hydrogens first: not RDKit's own order
    alanine = Chem.RenumberAtoms(alanine, order)
    alanine.SetProp("_Name", "ala")
    (mol,) = conformer.generate(alanine, num_confs=2, seed=0, device="cpu")
    assert mol.GetProp("name") == "ala" and mol.GetProp("_Name") == "ala"
    assert [a.GetAtomicNum() for a in mol.GetAtoms()] == \
        [a.GetAtomicNum() for a in alanine.GetAtoms()]
    expected = Chem.FindMolChiralCenters(alanine)
    for conf in mol.GetConformers():
        copy = Chem.Mol(mol, confId=conf.GetId())
        Chem.AssignStereochemistryFrom3D(copy, confId=conf.GetId())
        assert Chem.FindMolChiralCenters(copy) == expected


def test_bad_api_input_is_one_clear_error(model_file):
    with pytest.raises(UserInputError, match=r"molecules\[1\].*int"):
        conformer.generate(["CCO", 42])
    with pytest.raises(UserInputError, match="--num-confs 0"):
        conformer.generate(["CCO"], num_confs=0, model=model_file, device="cpu")
    with pytest.raises(UserInputError, match="only the model method"):
        conformer.generate(["CCO"], method="etkdg", model=model_file)


# -- devices -------------------------------------------------------------------------------
def test_auto_is_the_default_and_picks_cuda_only_when_torch_sees_it(monkeypatch):
    from conformer import api

    assert inspect.signature(api.generate).parameters["device"].default == "auto"
    assert inspect.signature(api.load_model).parameters["device"].default == "auto"
    assert GenerateOptions().device == "auto"
    args = cli.build_parser("generate").parse_args(["generate", "in.smi", "--out", "o.sdf"])
    # options left out stay out of the namespace and take GenerateOptions' default
    assert pick_settings(GenerateOptions, args).device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def _missing_devices() -> list[str]:
    missing = ["tpu", "meta"]
    if torch.cuda.device_count() <= 7:
        missing.append("cuda:7")
    if not torch.cuda.is_available():
        missing.append("cuda")
    return missing


@pytest.mark.parametrize("device", _missing_devices())
def test_a_missing_device_is_one_line_and_exit_2_before_any_output(tmp_path, capsys, device):
    smi = tmp_path / "in.smi"
    smi.write_text("CCO\n")
    out = tmp_path / "results" / "out.sdf"
    for method in ("model", "etkdg"):
        assert cli.main(["generate", str(smi), "--out", str(out), "--device", device,
                         "--method", method, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--device {device}" in err, err
        assert not (tmp_path / "results").exists()
    with pytest.raises(UserInputError, match=f"device {device}"):
        conformer.generate(["CCO"], device=device)


# -- evaluate ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ensembles():
    """Per molecule: (references, generated), ETKDG conformers with two different seeds."""
    from conformer.baselines import generate_rdkit

    out = {}
    for name, smiles in (("propanol", "CCCO"), ("ethylbenzene", "CCc1ccccc1")):
        mol = Chem.MolFromSmiles(smiles)
        out[name] = (generate_rdkit(mol, 3, seed=11), generate_rdkit(mol, 4, seed=12))
    return out


def test_evaluate_matches_getbestrms_and_the_metric_definitions(ensembles):
    from conformer.evaluate.rmsd import get_best_rms_reference

    names = list(ensembles)
    refs = [ensembles[n][0] for n in names]
    gens = [ensembles[n][1] for n in names]
    expected = [np.array([[get_best_rms_reference(r, g, ref_conf_id=i, gen_conf_id=j)
                           for j in range(g.GetNumConformers())]
                          for i in range(r.GetNumConformers())]) for r, g in zip(refs, gens,
                                                                                 strict=True)]
    threshold = float(np.median(np.concatenate([m.ravel() for m in expected])))
    result = conformer.evaluate(gens, refs, threshold=threshold)
    for got, want in zip(result["rmsd"], expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6)
    cov_r = [(m.min(axis=1) < threshold).mean() for m in expected]
    mat_p = [m.min(axis=0).mean() for m in expected]
    assert result["metrics"]["cov_r_mean"] == pytest.approx(np.mean(cov_r))
    assert result["metrics"]["mat_p_mean"] == pytest.approx(np.mean(mat_p))
    assert 0 < result["metrics"]["cov_r_mean"] < 1  # the threshold separates the pairs
    assert [row["n_ref"] for row in result["per_molecule"]] == [3, 3]
    assert result["failures"] == []
    # the same numbers from dicts of per-conformer Mol lists, after the package's submodules
    # are imported (they must not replace the callable)
    importlib.import_module("conformer.evaluate.rmsd")
    assert callable(conformer.evaluate)
    split = {n: [Chem.Mol(ensembles[n][1], confId=c.GetId())
                 for c in ensembles[n][1].GetConformers()] for n in names}
    by_key = conformer.evaluate(split, {n: ensembles[n][0] for n in names}, threshold=threshold)
    assert by_key["metrics"] == result["metrics"]


def test_evaluate_lists_what_it_cannot_score(ensembles):
    refs, gens = ensembles["propanol"]
    failed = conformer.generate(["not_a_smiles"], method="etkdg")[0]
    result = conformer.evaluate({"a": gens, "b": failed, "stray": gens},
                                {"a": refs, "b": refs, "c": Chem.MolFromSmiles("CCO")})
    assert result["metrics"]["n_molecules"] == 2
    assert result["metrics"]["n_empty_generation"] == 1
    rows = {row["name"]: row for row in result["per_molecule"]}
    assert rows["b"]["cov_r"] == 0 and rows["b"]["mat_r"] is None
    reasons = {f["name"]: f["reason"] for f in result["failures"]}
    assert set(reasons) == {"b", "c", "stray"}
    assert "no generated conformer" in reasons["b"] and "no reference" in reasons["c"]
    with pytest.raises(UserInputError, match="matched by position"):
        conformer.evaluate([gens], [refs, refs])
    with pytest.raises(UserInputError, match="both be lists"):
        conformer.evaluate({"a": gens}, [refs])
    with pytest.raises(UserInputError, match="threshold"):
        conformer.evaluate([gens], [refs], threshold=0)


# -- README ----------------------------------------------------------------------------------
def test_readme_python_api_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "README's Python API section has no python code block"
    result = _run_python("\n".join(blocks), tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["mol1 3 ok", "mol2 3 ok"] and "invalid SMILES" in lines[2]
