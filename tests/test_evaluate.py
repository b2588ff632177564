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
