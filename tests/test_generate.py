"""`conformer generate`: inputs, failures file, resume, options, through the real entry point."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from rdkit import Chem

from conformer import cli
from conformer.generation import GenerateOptions, generate_file, read_inputs
from conformer.sdf_io import completed_input_lines, read_conformer_groups

SMI = """# name after the SMILES
CCO ethanol
C[C@H](N)C(=O)O alanine
not_a_smiles broken
CC(=O)[O-].[Na+] salt
[U](F)(F)F uranium
CC=O
"""


def _save_untrained(directory, mode):
    from conformer.diffusion import EDMSettings
    from conformer.model_io import save_model
    from conformer.nn import build_denoiser

    torch.manual_seed(0)
    net = build_denoiser("tiny", mode)
    path = directory / f"tiny_{mode}.pt"
    save_model(net, {"preset": "tiny", "mode": mode, "overrides": {}},
               vars(EDMSettings(sample_steps=3)), path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained tiny recm denoiser saved as a model file (tests the plumbing, not quality)."""
    return _save_untrained(tmp_path_factory.mktemp("model"), "recm")


@pytest.fixture(scope="module")
def equivariant_model_file(tmp_path_factory):
    return _save_untrained(tmp_path_factory.mktemp("model"), "equivariant")


def _failures(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_generate_accounts_for_every_line_and_resumes(tmp_path, model_file, capsys):
    torch.set_num_threads(1)
    smi = tmp_path / "in.smi"
    smi.write_text(SMI)
    out = tmp_path / "out.sdf"
    argv = ["generate", str(smi), "--out", str(out), "--ckpt", str(model_file), "--num-confs",
            "3", "--summary", "--no-progress", "--no-bond-check"]  # untrained: raw samples
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "molecules:   3" in text and "failures:    3" in text and "stereo-correct" in text
    groups = read_conformer_groups(out)
    assert sorted(groups) == ["alanine", "ethanol", "line7"]
    assert all(len(v) == 3 for v in groups.values())
    mol = groups["alanine"][0]
    assert mol.GetNumAtoms() == 13  # hydrogens written
    assert {p for p in ("name", "smiles", "input_line", "conformer")} <= set(mol.GetPropNames())
    reasons = {row["line"]: row["reason"] for row in _failures(tmp_path / "out.failures.csv")}
    assert set(reasons) == {"4", "5", "6"}
    assert "invalid SMILES" in reasons["4"] and "fragments" in reasons["5"]
    assert "unsupported element" in reasons["6"]

    # resume: new lines are processed, done ones are not redone
    smi.write_text(SMI + "c1ccccc1 benzene\n")
    before = out.read_text()
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "molecules:   1 (+6 done earlier)" in text
    assert out.read_text().startswith(before)
    assert completed_input_lines(out) == {2, 3, 7, 8}
    assert len(_failures(tmp_path / "out.failures.csv")) == 3


@pytest.mark.parametrize("which", ["equivariant_model_file", "bundled_model"])
def test_generation_is_reproducible_per_molecule_whatever_the_batch_size(tmp_path, which,
                                                                          request):
    # the bundled model samples stochastically (churn + refinement): each conformer has its
    # own noise stream. (An untrained recm branch has no running normalisation yet and falls
    # back to its batch's ratio, so an untrained recm file is not used here.)
    model_file = request.getfixturevalue(which)
    torch.set_num_threads(1)
    smi = tmp_path / "in.smi"
    smi.write_text("CCO a\nCCN b\n")
    # as drawn (--no-mmff): the same up to float32 summation order. The MMFF94 polish can
    # take two starts 1e-6 A apart to different hydrogen rotamers, so with it the promise is
    # only that the same settings give the same conformers.
    positions = []
    for batch_size, mmff in ((1, False), (4, False), (4, True), (4, True)):
        out = tmp_path / f"b{batch_size}_{mmff}_{len(positions)}.sdf"
        generate_file(smi, out, GenerateOptions(ckpt=str(model_file), num_confs=3,
                                                batch_size=batch_size, max_resamples=0,
                                                bond_check=False, progress=False, mmff=mmff))
        positions.append([m.GetConformer().GetPositions() for m in
                          read_conformer_groups(out)["b"]])
    for a, b in zip(positions[0], positions[1], strict=True):
        assert abs(a - b).max() < 1e-3
    for a, b in zip(positions[2], positions[3], strict=True):
        assert np.array_equal(a, b)


def test_csv_uses_corrected_smiles_ratio_and_no_hydrogens(tmp_path, model_file):
    torch.set_num_threads(1)
    path = tmp_path / "test.csv"
    path.write_text("smiles,n_conformers,corrected_smiles\nCC(N)O,2,C[C@H](N)O\nCCC,1,\n")
    lines = list(read_inputs(path))
    assert [line.smiles for line in lines] == ["C[C@H](N)O", "CCC"]
    assert [line.line_number for line in lines] == [2, 3]
    out = tmp_path / "out.sdf"
    summary = generate_file(path, out, GenerateOptions(ckpt=str(model_file), ratio=1.5,
                                                       hydrogens=False, bond_check=False,
                                                       progress=False))
    groups = read_conformer_groups(out, key="input_line")
    assert len(groups["2"]) == 3 and len(groups["3"]) == 2  # ceil(1.5 x n_conformers)
    assert groups["2"][0].GetProp("smiles") == "C[C@H](N)O"
    assert groups["2"][0].GetProp("input_smiles") == "CC(N)O"
    assert all(a.GetAtomicNum() > 1 for a in groups["3"][0].GetAtoms())
    assert summary.stereo.conformers == 3  # only the chiral molecule is counted


def test_bad_inputs_are_one_clear_error(tmp_path, capsys):
    assert cli.main(["generate", str(tmp_path / "missing.smi"), "--out",
                     str(tmp_path / "o.sdf")]) == 2
    assert "missing.smi" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("name,n_conformers\nx,3\n")
    assert cli.main(["generate", str(bad), "--out", str(tmp_path / "o.sdf")]) == 2
    assert "no 'smiles' column" in capsys.readouterr().err
    smi = tmp_path / "a.smi"
    smi.write_text("CCO\n")
    assert cli.main(["generate", str(smi), "--out", str(tmp_path / "o.sdf"),
                     "--num-confs", "0"]) == 2
    assert "--num-confs" in capsys.readouterr().err


def test_too_many_atoms_is_a_failure_line(tmp_path, model_file):
    smi = tmp_path / "a.smi"
    smi.write_text("CCCCCCCCCCCC big\nCO small\n")
    out = tmp_path / "o.sdf"
    summary = generate_file(smi, out, GenerateOptions(ckpt=str(model_file), num_confs=1,
                                                      max_atoms=20, bond_check=False,
                                                      progress=False))
    assert summary.molecules == 1 and summary.failures == 1
    assert "too many atoms" in _failures(tmp_path / "o.failures.csv")[0]["reason"]
    assert Chem.MolFromSmiles("CO") is not None


STEREO_SMI = """C[C@H](N)[C@@H](O)C[S@](=O)C three_centres
F/C=C/C[C@@H](Cl)Br centre_and_double_bond
"""


def test_stereo_guidance_setting_is_recorded_and_honestly_reported(tmp_path, bundled_model,
                                                                  capsys):
    """With the bundled model: guided samples carry the input's stereo before any correction
    (the bundled model alone does not: the raw rate is measured on an unguided run), and the
    setting is written into every SDF record, the summary text and the JSON summary."""
    import json

    torch.set_num_threads(1)
    smi = tmp_path / "in.smi"
    smi.write_text(STEREO_SMI)
    results = {}
    for flag in ("--stereo-guidance", "--no-stereo-guidance"):
        out = tmp_path / f"{flag}.sdf"
        summary_json = tmp_path / f"{flag}.json"
        argv = ["generate", str(smi), "--out", str(out), "--ckpt", str(bundled_model),
                "--num-confs", "4", "--steps", "6", "--max-resamples", "0", "--summary",
                "--summary-json", str(summary_json), "--no-progress", flag]
        assert cli.main(argv) == 0
        text = capsys.readouterr().out
        mols = [m for group in read_conformer_groups(out).values() for m in group]
        data = json.loads(summary_json.read_text())
        # a conformer with an impossible bond is dropped, and counted
        assert len(mols) + data["summary"]["conformers_rejected_bond_lengths"] == 8
        assert len(mols) >= 6
        results[flag] = (text, {m.GetProp("stereo_guidance") for m in mols}, data)
    text, recorded, data = results["--stereo-guidance"]
    assert recorded == {"on"} and "sampled with stereo guidance" in text
    assert data["summary"]["stereo_guidance"] is True
    assert data["settings"]["stereo_guidance"] is True
    assert data["settings"]["guidance"]["sigma_start"] > 0
    assert data["summary"]["stereo_correct_before"] == 1.0
    assert data["summary"]["stereo_correct_after"] == 1.0
    text, recorded, data = results["--no-stereo-guidance"]
    assert recorded == {"off"} and "sampled without stereo guidance" in text
    assert data["summary"]["stereo_guidance"] is False
    assert data["summary"]["stereo_correct_before"] is not None  # the raw rate, measured


@pytest.fixture(scope="module")
def bundled_model():
    from pathlib import Path

    import conformer

    return Path(conformer.__file__).parent / "assets" / "model.pt"


@pytest.mark.parametrize("parallelism", ["processes", "threads"])
def test_parallel_model_runs_write_what_one_thread_writes(tmp_path, bundled_model, parallelism):
    """--workers 2: worker processes (each whole molecules on one thread), or one process
    that samples molecule k + 1 while a second thread polishes molecule k. Either way the
    file (failure lines and stereo resampling included) is the in-line run's: the same
    records and properties, coordinates equal up to float32 rounding (a worker process's
    matrix kernels may sum in another order)."""
    from conformer.generation.ensemble import model_threads

    assert model_threads(2, "threads") == (1, 1) and model_threads(16, "threads") == (8, 8)
    assert model_threads(4, "processes") == (1, 1) and model_threads(3, "inline") == (3, 3)
    smi = tmp_path / "in.smi"
    smi.write_text("C[C@H](N)C(=O)O alanine\nnot_a_smiles broken\nF/C=C/Cl ez\n"
                   "CC(=O)Nc1ccc(O)cc1 paracetamol\n")
    runs = []
    try:
        for workers in (1, 2):
            out = tmp_path / f"w{workers}.sdf"
            summary = generate_file(smi, out, GenerateOptions(
                num_confs=3, workers=workers, model_parallelism=parallelism, progress=False))
            assert summary.molecules == 3 and summary.failures == 1
            records = list(Chem.SDMolSupplier(str(out), removeHs=False))
            runs.append(([m.GetPropsAsDict() for m in records],
                         [m.GetConformer().GetPositions() for m in records],
                         (tmp_path / f"w{workers}.failures.csv").read_text()))
    finally:
        torch.set_num_threads(1)
    (props_1, positions_1, failures_1), (props_2, positions_2, failures_2) = runs
    assert len(props_1) == 9 and props_1[0]["mmff"] == "minimised"
    assert props_1 == props_2 and failures_1 == failures_2
    for a, b in zip(positions_1, positions_2, strict=True):
        assert np.abs(a - b).max() < 1e-3


def test_parallel_mode_follows_the_device_and_the_settings():
    from types import SimpleNamespace

    from conformer.errors import UserInputError
    from conformer.generation.ensemble import MoleculeGenerator

    def mode(device, count=5, **settings):
        generator = MoleculeGenerator.__new__(MoleculeGenerator)
        generator.options = GenerateOptions(**settings)
        generator.sampler = SimpleNamespace(device=torch.device(device))
        return generator.parallel_mode(count)

    assert mode("cpu", workers=1) == "inline" and mode("cpu", count=1, workers=4) == "inline"
    assert mode("cpu", workers=2) == "processes" and mode("cuda", workers=2) == "threads"
    assert mode("cpu", workers=2, model_parallelism="threads") == "threads"
    assert mode("cuda", workers=2, mmff=False) == "inline"  # nothing to put beside the GPU
    with pytest.raises(UserInputError, match="worker processes are for the CPU"):
        mode("cuda", workers=2, model_parallelism="processes")
    with pytest.raises(UserInputError, match="--workers 0"):
        GenerateOptions(workers=0)
    assert GenerateOptions().cores >= 1 and GenerateOptions(workers=3).cores == 3
