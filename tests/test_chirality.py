"""``conformer reproduce chirality``: the micro preset end to end, the results schema, and
its option checks."""

import json

import pytest
from rdkit import Chem

from conformer import cli
from conformer.experiments import chirality
from tests.equivariance import single_thread

one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)

RUN_KEYS = {"mode", "stereo_parity", "seed", "val_loss", "stereo_unguided", "ez_unguided",
            "gamma_final", "export_equivariance_error"}


def test_selected_molecules_are_chiral_stereoisomers_of_the_training_list():
    preset = chirality.PRESETS["micro"]
    smiles = chirality.select_chiral_smiles(preset)
    assert len(smiles) == 2 * (preset.train_molecules + preset.val_molecules)
    for text in smiles:
        mol = Chem.MolFromSmiles(text)
        assert mol.GetNumHeavyAtoms() <= preset.max_heavy_atoms
        assert Chem.FindMolChiralCenters(mol, includeUnassigned=False,
                                         useLegacyImplementation=True)


def test_reproduce_chirality_micro_writes_the_issue_schema_and_resumes(tmp_path, capsys):
    out = tmp_path / "chirality"
    argv = ["reproduce", "chirality", "--preset", "micro", "--out", str(out), "--seeds", "1"]
    assert cli.main(argv) == 0
    assert "\r" not in capsys.readouterr().err  # no progress bar redraws in a log
    payload = json.loads((out / "results.json").read_text())
    assert set(payload) == {"runs", "settings"}
    assert {(r["mode"], r["stereo_parity"]) for r in payload["runs"]} == set(chirality.RUNS)
    for run in payload["runs"]:
        assert set(run) == RUN_KEYS
        assert run["stereo_parity"] in ("0e", "0o")
        assert 0.0 <= run["stereo_unguided"] <= 1.0
        assert set(run["gamma_final"]) == {"reflection", "rotation"}
        assert set(run["export_equivariance_error"]) == {"rotation", "reflection"}
        layers = len(run["gamma_final"]["rotation"])
        assert layers == len(run["gamma_final"]["reflection"]) > 0
        if run["mode"] == "equivariant":
            errors = run["export_equivariance_error"]
            assert errors["rotation"] < 1e-9 and errors["reflection"] < 1e-9
    table = (out / "table.md").read_text()
    assert "| recm | 0o |" in table and "| equivariant | 0e |" in table
    assert (out / "gamma.png").stat().st_size > 0
    stamp = (out / "results.json").read_text()
    assert cli.main(argv) == 0  # every run done: nothing is trained again
    assert json.loads((out / "results.json").read_text())["runs"] == json.loads(stamp)["runs"]


@pytest.mark.parametrize("option, value", [("--modes", "recm/1o"), ("--modes", "magic/0e"),
                                           ("--preset", "huge"), ("--seeds", "0")])
def test_reproduce_chirality_rejects_bad_options(tmp_path, capsys, option, value):
    argv = ["reproduce", "chirality", "--out", str(tmp_path), option, value]
    assert cli.main(argv) == 2
    assert option in capsys.readouterr().err
