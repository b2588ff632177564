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
    assert (out / "coverage.svg").read_text().startswith("<svg")  # the default plot

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


# --- hardening (issue 14 item 9) and the batched engine (issue 12 item 2) ------------------


def _run_evaluate(generated, references, out, *extra):
    return cli_main(["evaluate", "--generated", str(generated), "--references", str(references),
                     "--out", str(out), "--no-progress", "--validity-confs", "0", *extra])


def test_cut_file_flags_the_molecule_incomplete(tiny_pair, tmp_path, capsys):
    _, _, ref_path, gen_path = tiny_pair
    records = gen_path.read_text().split("$$$$\n")[:-1]
    # astex_1g9v: 4 records with n_conformers=4; keep 2 of them, cut at a record boundary
    first = [r for r in records if "\nastex_1g9v\n" in r]
    others = [r for r in records if r not in first]
    assert len(first) == 4 and "<n_conformers>\n4\n" in first[0]
    cut = tmp_path / "cut.sdf"
    cut.write_text("".join(r + "$$$$\n" for r in first[:2] + others))
    assert _run_evaluate(cut, ref_path, tmp_path / "o") == 0
    err = capsys.readouterr().err
    assert "warning" in err and "astex_1g9v" in err and "2 of 4" in err
    document = json.loads((tmp_path / "o" / "results.json").read_text())
    per = {m["name"]: m for m in document["per_molecule"]}
    assert per["astex_1g9v"]["incomplete"] and per["astex_1g9v"]["n_gen_expected"] == 4
    assert not per["astex_1jje"]["incomplete"]
    assert document["metrics"]["n_incomplete"] == 1
    assert any("incomplete: 2 of 4" in f["reason"] for f in document["failures"])
    assert "incomplete molecules (fewer generated conformers than announced" \
        in (tmp_path / "o" / "table.md").read_text()


def test_swapped_files_are_refused(tiny_pair, tmp_path, capsys):
    _, _, ref_path, gen_path = tiny_pair
    assert _run_evaluate(ref_path, gen_path, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "look swapped" in err


def test_both_files_from_generate_with_fewer_generated_warns(tiny_pair, tmp_path, capsys):
    refs, gens, _, gen_path = tiny_pair
    few = tmp_path / "few.sdf"
    with ConformerSDFWriter(few) as writer:
        for line, name in enumerate(HUTCHISON_FEW, start=1):
            writer.write_molecule(gens[name][0], name, gens[name][0].GetProp("smiles"), line)
    # few.sdf (1 conformer each) given as --generated against gen.sdf (4 each): likely swapped
    assert _run_evaluate(few, gen_path, tmp_path / "o") == 0
    assert "if the two are swapped, so are COV-R and COV-P" in capsys.readouterr().err


def test_own_output_as_references_needs_no_ref_key(tiny_pair, tmp_path):
    _, _, _, gen_path = tiny_pair
    # generate's output (grouped by 'name') as references for itself: every RMSD is 0
    assert _run_evaluate(gen_path, gen_path, tmp_path / "o") == 0
    document = json.loads((tmp_path / "o" / "results.json").read_text())
    assert document["settings"]["ref_key"] == "name"
    assert document["metrics"]["n_molecules"] == 3
    assert document["metrics"]["cov_r_mean"] == 1.0 and document["metrics"]["mat_r_mean"] < 1e-6


def test_nothing_matching_exits_2_naming_the_keys(tiny_pair, tmp_path, capsys):
    _, _, ref_path, _ = tiny_pair
    other = tmp_path / "other.sdf"
    with ConformerSDFWriter(other) as writer:
        writer.write_molecule(_embedded("CCCCCCO", 2), "hexanol", "CCCCCCO", 1)
    assert _run_evaluate(other, ref_path, tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "none of its 1 molecules matches" in err and "'hexanol'" in err
    assert "'name'" in err and "astex_1g9v" in err
    assert not (tmp_path / "o" / "table.md").exists()


def test_two_molecules_with_one_name_are_not_merged(tiny_pair, tmp_path, capsys):
    refs, gens, ref_path, _ = tiny_pair
    clash = tmp_path / "clash.sdf"
    with ConformerSDFWriter(clash) as writer:
        for line, name in enumerate(HUTCHISON_FEW[:2], start=1):
            records = gens[name]
            combined = Chem.Mol(records[0])
            for record in records[1:]:
                combined.AddConformer(Chem.Conformer(record.GetConformer()), assignId=True)
            # both written under one name: a user's input with a duplicated name
            writer.write_molecule(combined, "astex_1g9v", records[0].GetProp("smiles"), line)
    assert _run_evaluate(clash, ref_path, tmp_path / "o") == 0
    assert "2 different molecules share this name" in capsys.readouterr().err
    document = json.loads((tmp_path / "o" / "results.json").read_text())
    per = {m["name"]: m for m in document["per_molecule"]}
    assert per["astex_1g9v"]["n_gen"] == 4 and per["astex_1jje"]["n_gen"] == 4
    assert per["astex_1g9v"]["n_gen_mismatched"] == 0
    golden = json.loads((GOLDEN / "rmsd_golden.json").read_text())["rmsd"]
    with np.load(tmp_path / "o" / "rmsd.npz") as data:
        names = list(data["names"])
        got = data[f"m{names.index('astex_1jje')}"]
    np.testing.assert_allclose(got, np.array(golden["astex_1jje"]), atol=1e-6, rtol=0)


def test_evaluate_equals_golden_getbestrms_on_every_golden_molecule(tmp_path):
    from conformer.evaluate.evaluator import EvaluationSettings, evaluate, load_references

    golden = json.loads((GOLDEN / "rmsd_golden.json").read_text())["rmsd"]
    references = load_references(GOLDEN / "rmsd_refs.sdf")
    gens = read_conformer_groups(GOLDEN / "rmsd_gens.sdf", key="name")
    gen_path = tmp_path / "gen.sdf"
    with ConformerSDFWriter(gen_path) as writer:
        for line, name in enumerate(sorted(gens), start=1):
            combined = Chem.Mol(gens[name][0])
            for record in gens[name][1:]:
                combined.AddConformer(Chem.Conformer(record.GetConformer()), assignId=True)
            writer.write_molecule(combined, name, gens[name][0].GetProp("smiles"), line)
    for workers in (1, 2):
        document = evaluate(gen_path, references, tmp_path / f"o{workers}",
                            EvaluationSettings(validity_confs_per_molecule=0), workers=workers,
                            progress=False)
        with np.load(tmp_path / f"o{workers}" / "rmsd.npz") as data:
            names = list(data["names"])
            for name, expected in golden.items():
                got = data[f"m{names.index(name)}"]
                assert np.abs(got - np.array(expected)).max() <= 1e-6, name
        assert document["metrics"]["n_molecules"] == len(golden)


def test_generated_file_without_any_record_scores_every_molecule_zero(tiny_pair, tmp_path,
                                                                      capsys):
    """What generate leaves when every molecule failed: by the protocol each molecule counts
    as coverage 0 and is listed, with a warning, rather than the evaluation failing."""
    _, _, ref_path, _ = tiny_pair
    n_molecules = len(HUTCHISON_FEW) + 1  # the fixture's reference file
    empty = tmp_path / "empty.sdf"
    empty.write_text("")
    assert _run_evaluate(empty, ref_path, tmp_path / "eval") == 0
    assert "no conformer at all" in capsys.readouterr().err
    document = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert document["metrics"]["n_molecules"] == n_molecules
    assert document["metrics"]["cov_r_mean"] == 0.0
    assert document["metrics"]["n_empty_generation"] == n_molecules
    assert sum("no generated conformer" in f["reason"]
               for f in document["failures"]) == n_molecules


def _records_with_smiles(smiles: str | None, n: int = 1) -> list[Chem.Mol]:
    mol = Chem.MolFromSmiles("CCO")
    records = []
    for _ in range(n):
        record = Chem.Mol(mol)
        if smiles is not None:
            record.SetProp("smiles", smiles)
        records.append(record)
    return records


def test_match_by_name_skips_canonical_smiles_when_the_texts_agree(monkeypatch):
    """The name rule needs no canonical SMILES when the generated 'smiles' is the
    reference's own SMILES text or absent; other texts still go through the rules."""
    from conformer.evaluate import evaluator as E

    references = {"ethanol": [Chem.AddHs(Chem.MolFromSmiles("CCO"))],
                  "methanol": [Chem.MolFromSmiles("CO")]}
    reference_text = Chem.MolToSmiles(Chem.MolFromSmiles("CCO"))
    calls = []
    original = E._Canonical.text

    def counting(self, isomeric):
        calls.append(self._smiles)
        return original(self, isomeric)

    monkeypatch.setattr(E._Canonical, "text", counting)
    matched, unmatched = E.match_generated(references, {
        "ethanol": _records_with_smiles(reference_text, 2),
        "methanol": _records_with_smiles(None)})
    assert sorted(matched) == ["ethanol", "methanol"] and not unmatched
    assert len(matched["ethanol"]) == 2
    assert calls == []  # no canonical SMILES computed
    # another text of the same molecule still matches by name (through canonical SMILES)
    matched, _ = E.match_generated(references, {"ethanol": _records_with_smiles("OCC")})
    assert list(matched) == ["ethanol"] and "OCC" in calls
    # a different molecule under a reference's name goes by SMILES to its own reference
    matched, unmatched = E.match_generated(references, {"ethanol": _records_with_smiles("CO")})
    assert list(matched) == ["methanol"] and not unmatched


def test_incomplete_molecules_counts_per_input_line():
    """Records present against the announced n_conformers, per input line: the last total
    that reads as an integer counts (also when a line announces different totals), records
    without either property are not counted."""
    from conformer.evaluate.evaluator import incomplete_molecules

    def records(*props):
        mols = []
        for line, total in props:
            mol = Chem.MolFromSmiles("CCO")
            if line is not None:
                mol.SetProp("input_line", line)
            if total is not None:
                mol.SetProp("n_conformers", total)
            mols.append(mol)
        return mols

    generated = {
        "complete": records(("1", "2"), ("1", "2")),
        "cut": records(("2", "4"), ("2", "4"), ("2", "4")),
        "two lines": records(("3", "2"), ("3", "2"), ("4", "3")),  # line 4: 1 of 3
        "unreadable": records(("5", "x"), ("5", "x")),  # no total: not judged
        "last readable": records(("6", "2"), ("6", "5"), ("6", "x")),  # 5 counts: 3 of 5
        "earlier total": records(("7", "5"), ("7", "2"), ("7", "2")),  # 2 counts: complete
        "no line": records((None, "9"), ("8", None)),
    }
    assert incomplete_molecules(generated) == {"cut": (3, 4), "two lines": (1, 3),
                                               "last readable": (3, 5)}
