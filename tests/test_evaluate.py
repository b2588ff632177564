"""SDF I/O, COV/MAT and the evaluate command."""

from __future__ import annotations

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
