"""SDF I/O, COV/MAT and the evaluate command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from conformer.sdf_io import ConformerSDFWriter, completed_input_lines, read_conformer_groups


def _embedded(smiles: str, n: int, seed: int = 7) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    AllChem.EmbedMultipleConfs(mol, n, params)
    return mol


def test_sdf_roundtrip_groups_and_resume(tmp_path: Path):
    path = tmp_path / "gen.sdf"
    ethanol, butane = _embedded("CCO", 3), _embedded("CCCC", 2)
    with ConformerSDFWriter(path, append=False) as writer:
        assert writer.write_molecule(ethanol, "eth", "CCO", 1, {"method": "etkdg"}) == 3
        assert writer.write_molecule(butane, "but", "CCCC", 2) == 2
    groups = read_conformer_groups(path)
    assert sorted(groups) == ["but", "eth"]
    assert len(groups["eth"]) == 3 and len(groups["but"]) == 2
    first = groups["eth"][1]
    assert first.GetProp("conformer") == "1" and first.GetProp("method") == "etkdg"
    assert first.GetNumAtoms() == ethanol.GetNumAtoms()
    np.testing.assert_allclose(first.GetConformer().GetPositions(),
                               ethanol.GetConformer(1).GetPositions(), atol=1e-4)
    assert completed_input_lines(path) == {1, 2}

    # A run killed while writing molecule 3: two records of four, the second one cut short.
    pentane = _embedded("CCCCC", 4)
    text = path.read_text()
    partial = tmp_path / "partial.sdf"
    with ConformerSDFWriter(partial) as writer:
        writer.write_molecule(pentane, "pen", "CCCCC", 3)
    records = partial.read_text().split("$$$$\n")
    path.write_text(text + records[0] + "$$$$\n" + records[1][:40])
    assert completed_input_lines(path) == {1, 2}
    with ConformerSDFWriter(path, append=True) as writer:
        writer.write_molecule(pentane, "pen", "CCCCC", 3)
    assert completed_input_lines(path) == {1, 2, 3}
    groups = read_conformer_groups(path)
    assert len(groups["pen"]) == 4  # the killed run's complete first record was cut too
    assert len(groups["eth"]) == 3


def test_read_groups_names_missing_key(tmp_path: Path):
    from conformer.errors import UserInputError

    path = tmp_path / "plain.sdf"
    writer = Chem.SDWriter(str(path))
    writer.write(_embedded("CCO", 1))
    writer.close()
    with pytest.raises(UserInputError, match="no property 'name'"):
        read_conformer_groups(path)


# --- COV / MAT on hand-made matrices -------------------------------------------------------

from conformer.evaluate import metrics as M  # noqa: E402


def test_scores_exact_values_and_strict_threshold():
    rmsd = np.array([[0.2, 0.75, 1.0, 2.0],
                     [0.9, 0.8, 0.75, 1.5]])
    s = M.molecule_scores("m", rmsd, threshold=0.75)
    # ref 0: min 0.2 (< 0.75 covered); ref 1: min 0.75 (not < 0.75)
    assert s.cov_r == 0.5
    assert s.mat_r == pytest.approx((0.2 + 0.75) / 2, abs=1e-15)
    # gen mins: 0.2, 0.75, 0.75, 1.5 -> only the first is strictly below 0.75
    assert s.cov_p == 0.25
    assert s.mat_p == pytest.approx((0.2 + 0.75 + 0.75 + 1.5) / 4, abs=1e-15)
    assert M.molecule_scores("m", rmsd, threshold=0.7500001).cov_r == 1.0


def test_empty_generation_counts_as_zero_and_is_excluded_from_mat():
    full = M.molecule_scores("a", np.array([[0.1, 0.3], [0.5, 0.2]]), 0.75)
    empty = M.molecule_scores("b", np.zeros((3, 0)), 0.75)
    assert (empty.cov_r, empty.cov_p, empty.mat_r, empty.mat_p) == (0.0, 0.0, None, None)
    agg = M.aggregate([full, empty], 0.75)
    assert agg["cov_r_mean"] == 0.5 and agg["cov_r_median"] == 0.5
    assert agg["mat_r_mean"] == pytest.approx((0.1 + 0.2) / 2)
    assert agg["mat_p_mean"] == pytest.approx((0.1 + 0.2) / 2)
    assert agg["n_empty_generation"] == 1 and agg["n_molecules"] == 2


def test_median_over_molecules_and_curves():
    mats = {"a": np.array([[0.1]]), "b": np.array([[1.0]]), "c": np.array([[2.0]])}
    scores = [M.molecule_scores(k, v, 0.75) for k, v in mats.items()]
    agg = M.aggregate(scores, 0.75)
    assert agg["cov_r_mean"] == pytest.approx(1 / 3) and agg["cov_r_median"] == 0.0
    assert agg["mat_r_median"] == 1.0
    curves = M.coverage_curves(mats)
    t = curves["threshold"]
    assert t[0] == 0.05 and t[-1] == 3.0 and len(t) == 60
    assert curves["cov_r_mean"][t.index(1.0)] == pytest.approx(1 / 3)  # 1.0 is not < 1.0
    assert curves["cov_r_mean"][t.index(1.05)] == pytest.approx(2 / 3)
    assert curves["cov_p_mean"][t.index(2.0)] == pytest.approx(2 / 3)  # 2.0 < 2.0 fails
    assert curves["cov_p_mean"][-1] == 1.0


# --- the evaluate command, end to end ------------------------------------------------------

from conformer.cli import main as cli_main  # noqa: E402
from conformer.evaluate.rmsd import get_best_rms_reference  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
HUTCHISON_FEW = ("astex_1g9v", "astex_1jje", "omegacsd_JUVPAR")


@pytest.fixture()
def tiny_pair(tmp_path: Path):
    """References: 3 golden molecules (3 conformers each) + one never generated; generated:
    their golden ETKDG conformers, one renamed (must be matched by SMILES)."""
    refs = read_conformer_groups(GOLDEN / "rmsd_refs.sdf", key="molecule")
    gens = read_conformer_groups(GOLDEN / "rmsd_gens.sdf", key="name")
    ref_path, gen_path = tmp_path / "refs.sdf", tmp_path / "gen.sdf"
    writer = Chem.SDWriter(str(ref_path))
    for name in (*HUTCHISON_FEW, "omegapdb_1hyo"):
        for mol in refs[name]:
            writer.write(mol)
    writer.close()
    with ConformerSDFWriter(gen_path) as out:
        for line, name in enumerate(HUTCHISON_FEW, start=1):
            records = gens[name]
            combined = Chem.Mol(records[0])
            for record in records[1:]:
                combined.AddConformer(Chem.Conformer(record.GetConformer()), assignId=True)
            out.write_molecule(combined, "renamed" if line == 2 else name,
                               records[0].GetProp("smiles"), line)
    return refs, gens, ref_path, gen_path


def test_evaluate_cli_matches_pairwise_getbestrms(tiny_pair, tmp_path: Path):
    refs, gens, ref_path, gen_path = tiny_pair
    out = tmp_path / "eval"
    code = cli_main(["evaluate", "--generated", str(gen_path), "--references", str(ref_path),
                     "--out", str(out), "--ref-key", "molecule", "--no-progress",
                     "--validity-confs", "1"])
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    assert (out / "table.md").read_text().startswith("## COV / MAT")
    assert (out / "coverage.png").stat().st_size > 1000

    # An independent pair-by-pair GetBestRMS computation gives the same numbers.
    scores = []
    for name in HUTCHISON_FEW:
        matrix = np.array([[get_best_rms_reference(r, g) for g in gens[name]]
                           for r in refs[name]])
        scores.append(M.molecule_scores(name, matrix, 0.75))
    scores.append(M.molecule_scores("omegapdb_1hyo", np.zeros((3, 0)), 0.75))
    expected = M.aggregate(sorted(scores, key=lambda s: s.name), 0.75)
    for key in ("cov_r_mean", "cov_r_median", "cov_p_mean", "cov_p_median"):
        assert document["metrics"][key] == expected[key], key
    for key in ("mat_r_mean", "mat_r_median", "mat_p_mean", "mat_p_median"):
        assert document["metrics"][key] == pytest.approx(expected[key], abs=1e-9), key
    per = {m["name"]: m for m in document["per_molecule"]}
    assert per["astex_1jje"]["n_gen"] == 4  # the renamed group matched by SMILES
    assert per["omegapdb_1hyo"]["n_gen"] == 0 and per["omegapdb_1hyo"]["cov_r"] == 0.0
    assert any(f["name"] == "omegapdb_1hyo" for f in document["failures"])
    assert document["metrics"]["n_empty_generation"] == 1
    settings = document["settings"]
    assert settings["threshold"] == 0.75 and settings["max_matches"] == 1_000_000
    assert settings["environment"]["libraries"]["rdkit"]
    assert document["validity"]["n_conformers"] == 3
    assert len(document["curves"]["threshold"]) == 60


def test_evaluate_cli_bad_input_is_one_clear_line(tmp_path: Path, capsys):
    code = cli_main(["evaluate", "--generated", str(tmp_path / "missing.sdf"), "--references",
                     str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "--generated" in capsys.readouterr().err


def test_evaluate_two_workers_same_result(tiny_pair, tmp_path: Path):
    from conformer.evaluate.evaluator import EvaluationSettings, evaluate, load_references

    _, _, ref_path, gen_path = tiny_pair
    references = load_references(ref_path, "molecule")
    settings = EvaluationSettings(validity_confs_per_molecule=0)
    one = evaluate(gen_path, references, tmp_path / "a", settings, workers=1, progress=False)
    two = evaluate(gen_path, references, tmp_path / "b", settings, workers=2, progress=False)
    assert one["metrics"] == two["metrics"]
    assert one["per_molecule"] == two["per_molecule"]


def test_geom_folder_references_drop_reacted_conformers_and_pickle_layout(tmp_path: Path):
    from conformer.baselines import generate_rdkit
    from conformer.data.geom import read_molecule_pickle, read_summary
    from conformer.evaluate.evaluator import EvaluationSettings, evaluate, load_references

    geom = Path(__file__).parent / "fixtures" / "geom_mini"
    summary = read_summary(geom, "drugs")
    first, second = list(summary)[0], "CCOC(=O)c1ccc(OC)cc1"
    csv = tmp_path / "test_smiles.csv"
    csv.write_text(f"smiles,n_conformers\n{first},5\n{second},3\n")
    references = load_references(geom, test_csv=csv, dataset="drugs")
    pickled = read_molecule_pickle(geom / summary[first]["pickle_path"])["conformers"]
    ids = [c["geom_id"] for c in pickled]
    assert 999999999 in ids  # the fixture's reacted conformer ...
    assert len(references[first]) == len(ids) - 1  # ... is not a reference
    gen_path = tmp_path / "gen.sdf"
    with ConformerSDFWriter(gen_path) as writer:
        for line, smiles in enumerate((first, second), start=1):
            mol = generate_rdkit(Chem.MolFromSmiles(smiles), 2 * len(references[smiles]), seed=9)
            writer.write_molecule(mol, smiles, smiles, line)
    settings = EvaluationSettings(validity_confs_per_molecule=0)
    document = evaluate(gen_path, references, tmp_path / "out", settings, progress=False)
    n_ref = {m["name"]: m["n_ref"] for m in document["per_molecule"]}
    assert n_ref == {first: len(references[first]), second: len(references[second])}
    assert all(m["n_gen"] == 2 * m["n_ref"] for m in document["per_molecule"])

    # The same references as a test_mols.pkl-style dict give the same numbers.
    import pickle

    pkl = tmp_path / "test_mols.pkl"
    pkl.write_bytes(pickle.dumps(references))
    again = evaluate(gen_path, load_references(pkl), tmp_path / "out2", settings, progress=False)
    assert again["metrics"] == document["metrics"]


def test_interrupted_evaluation_resumes_from_the_per_molecule_cache(tiny_pair, tmp_path, monkeypatch):
    import conformer.evaluate.evaluator as evaluator

    _, _, ref_path, gen_path = tiny_pair
    references = evaluator.load_references(ref_path, "molecule")
    settings = evaluator.EvaluationSettings(validity_confs_per_molecule=0)
    monkeypatch.setattr(evaluator, "CACHE_CHUNK_PAIRS", 1)  # one molecule per engine call
    calls = []
    real = evaluator.molecule_result

    def interrupted(name, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(name)
        return real(name, *args)

    monkeypatch.setattr(evaluator, "molecule_result", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluator.evaluate(gen_path, references, tmp_path / "out", settings, progress=False)
    done_first = list(calls)
    calls.clear()

    def counting(name, *args):
        calls.append(name)
        return real(name, *args)

    monkeypatch.setattr(evaluator, "molecule_result", counting)
    resumed = evaluator.evaluate(gen_path, references, tmp_path / "out", settings, progress=False)
    assert len(done_first) == 2 and sorted(calls) == sorted(set(references) - set(done_first))
    fresh = evaluator.evaluate(gen_path, references, tmp_path / "fresh", settings, progress=False)
    assert resumed["metrics"] == fresh["metrics"]
    # A changed setting invalidates the cache.
    calls.clear()
    evaluator.evaluate(gen_path, references, tmp_path / "out",
                       evaluator.EvaluationSettings(threshold=0.5, validity_confs_per_molecule=0),
                       progress=False)
    assert len(calls) == len(references)


def test_unreadable_generated_record_is_listed_not_fatal(tiny_pair, tmp_path: Path):
    from conformer.evaluate.evaluator import EvaluationSettings, evaluate, load_references

    _, _, ref_path, gen_path = tiny_pair
    broken = tmp_path / "broken.sdf"
    records = gen_path.read_text().split("$$$$\n")
    # Corrupt the atom count line of the first record: RDKit cannot read it.
    lines = records[0].split("\n")
    lines[3] = "garbage" + lines[3][7:]
    records[0] = "\n".join(lines)
    broken.write_text("$$$$\n".join(records))
    settings = EvaluationSettings(validity_confs_per_molecule=0)
    document = evaluate(broken, load_references(ref_path, "molecule"), tmp_path / "o", settings,
                        progress=False)
    assert any(f.get("record") == 1 for f in document["failures"])
    per = {m["name"]: m for m in document["per_molecule"]}
    assert per["astex_1g9v"]["n_gen"] == 3  # the other three records of that molecule count
