"""scripts/coverage_by_size.py: per-molecule scores binned by heavy atoms and rotatable bonds."""

import json

from rdkit import Chem
from rdkit.Chem import AllChem

from tests.scripts_import import load_script


def _script():
    return load_script("coverage_by_size")


def test_scores_land_in_their_size_and_flexibility_bins(tmp_path, capsys):
    molecules = {"small": "c1ccccc1O",            # 7 heavy atoms, 0 rotatable bonds
                 "floppy": "CCCCCCCCCCCCCCCC(=O)O",  # 18 heavy atoms, 14 rotatable bonds
                 "mid": "CCCCCCCCCCCCCCCCC"}       # 17 heavy atoms, 14 rotatable bonds
    writer = Chem.SDWriter(str(tmp_path / "refs.sdf"))
    for name, smiles in molecules.items():
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=7)
        mol.SetProp("molecule", name)
        writer.write(mol)
        writer.write(mol)  # a second reference conformer of the same molecule
    writer.close()
    results = {"per_molecule": [
        {"name": "small", "cov_r": 1.0, "mat_r": 0.2},
        {"name": "floppy", "cov_r": 0.0, "mat_r": 2.0},
        {"name": "mid", "cov_r": 0.5, "mat_r": None}]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    code = _script().main(["--label", "m", str(tmp_path / "results.json"), "--references",
                           str(tmp_path / "refs.sdf"), "--label", "again",
                           str(tmp_path / "results.json")])
    assert code == 0
    out = capsys.readouterr().out
    assert "| heavy atoms | m: n | COV-R % | MAT-R A | again: n | COV-R % | MAT-R A |" in out
    assert "| 0-14 | 1 | 100.0 | 0.200 | 1 | 100.0 | 0.200 |" in out
    assert "| 15-19 | 2 | 25.0 | 2.000 |" in out  # MAT-R over the molecule that has one
    assert "| >= 12 | 2 | 25.0 | 2.000 |" in out
    assert "| 0-1 | 1 | 100.0 | 0.200 |" in out
    assert "| 20-24 | 0 | - | - |" in out


def test_a_results_molecule_missing_from_the_references_is_an_error(tmp_path, capsys):
    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=3)
    mol.SetProp("molecule", "ethanol")
    writer = Chem.SDWriter(str(tmp_path / "refs.sdf"))
    writer.write(mol)
    writer.close()
    (tmp_path / "results.json").write_text(json.dumps({"per_molecule": [
        {"name": "other", "cov_r": 1.0, "mat_r": 0.1}]}))
    code = _script().main([str(tmp_path / "results.json"), "--references",
                           str(tmp_path / "refs.sdf")])
    assert code == 2
    assert "not in" in capsys.readouterr().err
