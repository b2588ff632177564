"""``conformer reproduce drugs``: the whole pipeline on the micro preset, resume, clear errors."""

from __future__ import annotations

import json

import pytest
from rdkit import Chem
from rdkit.Chem import rdMolDescriptors

from conformer import cli
from conformer.errors import UserInputError
from conformer.experiments import drugs
from conformer.recm import MODES

METRICS = {"cov_r_mean", "cov_r_median", "mat_r_mean", "mat_r_median", "cov_p_mean",
           "cov_p_median", "mat_p_mean", "mat_p_median", "threshold"}


def _run_micro(out, modes: str) -> dict:
    argv = ["reproduce", "drugs", "--preset", "micro", "--out", str(out), "--modes", modes]
    assert cli.main(argv) == 0
    return json.loads((out / "results.json").read_text())


def _check_document(out, document: dict, methods: list[str]) -> None:
    assert {"settings", "environment", "data", "runs"} <= set(document)
    assert document["environment"]["conformer_version"]
    test_molecules = document["data"]["test_molecules"]
    assert 1 <= len(test_molecules) <= drugs.PRESETS["micro"].test_molecules
    references = {m["name"]: int(m["n_conformers"]) for m in test_molecules}
    assert all(1 <= k <= drugs.PRESETS["micro"].max_references for k in references.values())
    assert sorted(r["method"] for r in document["runs"]) == sorted(methods)
    for run in document["runs"]:
        assert METRICS <= set(run["metrics"]), run["method"]
        assert run["metrics"]["threshold"] == 0.75
        assert run["metrics"]["n_molecules"] == len(test_molecules)
        per_molecule = {m["name"]: m for m in run["per_molecule"]}
        assert set(per_molecule) == set(references)
        for name, k in references.items():
            assert per_molecule[name]["n_ref"] == k
            # 2K generated per molecule (ETKDG may return fewer for strained rings)
            assert 0 < per_molecule[name]["n_gen"] <= 2 * k
            if run["kind"] == "model":
                assert per_molecule[name]["n_gen"] == 2 * k
        if run["kind"] == "model":
            training = run["training"]
            assert training["global_step"] == drugs.PRESETS["micro"].steps
            assert training["train_loss_final"] is not None
            assert training["params_exported"] > 0
    recm = [r for r in document["runs"] if r["method"] == "recm"]
    for run in recm:
        gammas = run["training"]["gamma_final"]
        assert gammas and all(0.0 <= g for g in gammas)
        assert len(run["training"]["gamma_curve"]) >= 1
    # the references were made by ETKDG + MMFF94: the same procedure must cover most of them,
    # a check that generation, matching and RMSD line up (a broken link gives COV 0)
    mmff = [r for r in document["runs"] if r["method"] == "etkdg-mmff"]
    for run in mmff:
        assert run["metrics"]["cov_r_mean"] > 0.5
    table = (out / "table.md").read_text()
    assert "NOT GEOM-Drugs" in table
    assert "| method | params | steps | COV-R mean/med % | MAT-R mean/med A |" in table
    for method in methods:
        label = drugs.METHOD_LABELS.get(method, method)
        assert f"| {label} |" in table
    if recm:
        assert (out / "gamma.png").stat().st_size > 0


def test_micro_pipeline_writes_results_table_plot_and_resumes(tmp_path):
    out = tmp_path / "drugs"
    document = _run_micro(out, "recm")
    _check_document(out, document, ["recm", "etkdg", "etkdg-mmff"])
    marker = out / "runs" / "recm_s0" / "reproduce_train.json"
    sdf = out / "generated" / "recm_s0.sdf"
    stamps = (marker.stat().st_mtime_ns, sdf.stat().st_mtime_ns)
    # rerunning the same command redoes nothing and gives the same numbers
    again = _run_micro(out, "recm")
    assert (marker.stat().st_mtime_ns, sdf.stat().st_mtime_ns) == stamps
    assert [r["metrics"] for r in again["runs"]] == [r["metrics"] for r in document["runs"]]


@pytest.mark.slow
def test_micro_pipeline_every_mode(tmp_path):
    out = tmp_path / "drugs"
    document = _run_micro(out, ",".join(MODES))
    _check_document(out, document, [*MODES, "etkdg", "etkdg-mmff"])


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    settings = {"preset": {"name": "micro"}, "steps": 6}
    drugs.check_settings(tmp_path, settings)
    drugs.check_settings(tmp_path, dict(settings))  # same settings: accepted (resume)
    with pytest.raises(UserInputError, match="steps"):
        drugs.check_settings(tmp_path, settings | {"steps": 7})


@pytest.mark.parametrize("extra, message", [
    ([], "--geom-dir: not given"),
    (["--geom-dir", "MISSING"], "no summary_drugs.json"),
])
def test_paper_preset_needs_the_geom_folder(tmp_path, capsys, extra, message):
    extra = [str(tmp_path / e) if e == "MISSING" else e for e in extra]
    argv = ["reproduce", "drugs", "--preset", "paper", "--out", str(tmp_path / "out"), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "10.7910/DVN/JNGTDF" in err
    assert not (tmp_path / "out").exists()  # nothing written before the check


@pytest.mark.parametrize("option, value", [("--preset", "huge"), ("--modes", "recm,magic"),
                                           ("--seeds", "0"), ("--steps", "0")])
def test_bad_options_are_clear_errors(tmp_path, capsys, option, value):
    argv = ["reproduce", "drugs", "--out", str(tmp_path / "out"), option, value]
    assert cli.main(argv) == 2
    assert option in capsys.readouterr().err


def test_tiny_selection_is_seeded_within_limits_and_disjoint_from_training():
    preset = drugs.PRESETS["tiny"]
    rows = drugs.select_test_rows(preset)
    assert rows == drugs.select_test_rows(preset)
    assert len(rows) == preset.test_molecules
    assert len({r["line"] for r in rows}) == len(rows)
    for row in rows:
        mol = Chem.MolFromSmiles(row["corrected_smiles"])
        assert mol.GetNumHeavyAtoms() <= preset.test_max_heavy_atoms
        assert rdMolDescriptors.CalcNumRotatableBonds(mol) <= preset.test_max_rotatable_bonds
    train = drugs.select_train_smiles(preset)
    assert len(train) == preset.train_molecules and train == drugs.select_train_smiles(preset)

    def skeleton(smiles):
        return Chem.MolToInchiKey(Chem.MolFromSmiles(smiles))[:14]

    assert not {skeleton(s) for s, _ in train} & {skeleton(r["corrected_smiles"]) for r in rows}
