"""scripts/select_training_smiles.py: the filters that keep benchmark molecules out of training."""

from rdkit import Chem

from tests.scripts_import import SCRIPTS, load_script


def _script():
    return load_script("select_training_smiles")


def _skeleton(smiles):
    return Chem.MolToInchiKey(Chem.MolFromSmiles(smiles)).split("-")[0]


def test_chembl_candidates_strip_salts_filter_exclude_and_deduplicate(tmp_path):
    select = _script()
    imatinib = "Cc1ccc(NC(=O)c2ccc(CN3CCN(C)CC3)cc2)cc1Nc1nccc(-c2cccnc2)n1"
    salt = imatinib + ".CS(=O)(=O)O"  # the mesylate: its parent is kept
    held_out = "CC(C)Cc1ccc(cc1)C(C)C(=O)Nc1ccc(cc1)S(=O)(=O)Nc1ccccn1"  # 27 heavy atoms
    small = "CCO"
    floppy = "CCCCCCCCCCCCCCCCCCCCCC(=O)O"  # 20 rotatable bonds
    csv_file = tmp_path / "chembl.csv"
    csv_file.write_text("smiles\n" + "\n".join([salt, held_out, small, floppy, imatinib,
                                                   "not-a-smiles"]) + "\n")
    chosen, counts = select.chembl_candidates([csv_file], {_skeleton(held_out)},
                                              min_heavy=18, max_rotatable=12)
    assert chosen == [Chem.MolToSmiles(Chem.MolFromSmiles(imatinib))]
    assert counts["salt or mixture: largest fragment taken"] == 1
    assert counts["excluded"] == 1 and counts["duplicate"] == 1 and counts["unparsable"] == 1
    assert counts["heavy atoms outside 18-40"] == 1
    assert counts["more than 12 rotatable bonds"] == 1
    assert counts["kept"] == 1


def test_shipped_training_lists_hold_no_benchmark_or_validation_skeleton():
    """No molecule of a training list shares an InChIKey skeleton with a GEOM-Drugs test or
    Hutchison molecule (excluded_inchikeys.txt) or a validation molecule, and the lists do not
    repeat each other."""
    select = _script()
    root = SCRIPTS.parent / "data"
    excluded = {k.split("-")[0] for k in
                (root / "train_smiles" / "excluded_inchikeys.txt").read_text().split()}
    validation = (select.first_blocks(root / "validation" / "val_druglike.smi")
                  | select.first_blocks(root / "validation" / "val_flexible.smi"))
    assert len(validation) == 80
    seen: set[str] = set()
    for name in ("train_druglike.smi", "train_chembl.smi"):
        keys = select.first_blocks(root / "train_smiles" / name)
        assert keys, name
        assert not keys & excluded, name
        assert not keys & validation, name
        assert not keys & seen, name
        seen |= keys
