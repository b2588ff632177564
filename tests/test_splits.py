"""The standard GEOM split files and test CSVs (copies in data/geom/) load with the counts of
docs/design/protocol.md section 2, and malformed split files are refused with a clear error."""

from pathlib import Path

import numpy as np
import pytest

from conformer.data.splits import load_split, load_test_smiles, standard_split_path
from conformer.errors import UserInputError

GEOM = Path(__file__).resolve().parent.parent / "data" / "geom"


@pytest.mark.parametrize("dataset,sizes", [("drugs", (243_473, 30_433, 30_433)),
                                           ("qm9", (106_586, 13_323, 13_323))])
def test_standard_split_sizes(dataset, sizes):
    train, val, test = load_split(standard_split_path(dataset), n_molecules=sum(sizes))
    assert (len(train), len(val), len(test)) == sizes
    assert all(part.dtype == np.int64 for part in (train, val, test))
    assert len(np.intersect1d(train, test)) == 0 and len(np.intersect1d(val, test)) == 0


@pytest.mark.parametrize("dataset,total", [("drugs", 106_778), ("qm9", 13_731)])
def test_test_smiles_counts(dataset, total):
    plain = load_test_smiles(GEOM / dataset / "test_smiles.csv")
    corrected = load_test_smiles(GEOM / dataset / "test_smiles_corrected.csv")
    assert len(plain) == len(corrected) == 1000
    assert sum(m.n_conformers for m in plain) == total
    assert sum(m.n_conformers for m in corrected) == total
    assert all(m.corrected_smiles is None for m in plain)
    assert all(m.corrected_smiles for m in corrected)


def test_drugs_conformer_count_statistics_and_corrections():
    plain = load_test_smiles(GEOM / "drugs" / "test_smiles.csv")
    counts = np.array([m.n_conformers for m in plain])
    assert np.median(counts) == 49 and counts.max() == 2497
    corrected = load_test_smiles(GEOM / "drugs" / "test_smiles_corrected.csv")
    # docs/design/protocol.md: 292 DRUGS rows differ, i.e. their corrected SMILES is not the GEOM key
    assert sum(m.smiles != m.corrected_smiles for m in corrected) == 292
    assert len({m.smiles for m in plain}) == len({m.smiles for m in corrected}) == 1000


def _save(path, parts):
    array = np.empty(len(parts), dtype=object)
    for i, part in enumerate(parts):
        array[i] = np.asarray(part)
    np.save(path, array, allow_pickle=True)
    return path


def test_bad_split_files_are_refused(tmp_path):
    np.save(tmp_path / "plain.npy", np.arange(10))
    with pytest.raises(UserInputError, match="object array of 3"):
        load_split(tmp_path / "plain.npy", n_molecules=10)
    _save(tmp_path / "two.npy", [[0, 1], [2]])
    with pytest.raises(UserInputError, match="object array of 3"):
        load_split(tmp_path / "two.npy", n_molecules=3)
    _save(tmp_path / "range.npy", [[0, 1], [2], [9]])
    with pytest.raises(UserInputError, match="out of range"):
        load_split(tmp_path / "range.npy", n_molecules=4)
    _save(tmp_path / "short.npy", [[0, 1], [2], [3]])
    with pytest.raises(UserInputError, match="indexes 4 molecules but the folder holds 5"):
        load_split(tmp_path / "short.npy", n_molecules=5)
    assert len(load_split(tmp_path / "short.npy", n_molecules=5, allow_subset=True)[0]) == 2
    _save(tmp_path / "repeat.npy", [[0, 1], [1], [2]])
    with pytest.raises(UserInputError, match="more than once"):
        load_split(tmp_path / "repeat.npy", n_molecules=3, allow_subset=True)
    _save(tmp_path / "floats.npy", [[0.5], [1.0], [2.0]])
    with pytest.raises(UserInputError, match="not a 1-D integer"):
        load_split(tmp_path / "floats.npy")
    (tmp_path / "junk.npy").write_text("not numpy")
    with pytest.raises(UserInputError, match="junk.npy"):
        load_split(tmp_path / "junk.npy")


def test_training_smiles_avoid_every_test_molecule():
    """data/train_smiles holds no skeleton (InChIKey first block) of a GEOM-Drugs test molecule
    or a Hutchison molecule; the excluded list covers both test CSV columns."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    root = GEOM.parent / "train_smiles"
    excluded = set((root / "excluded_inchikeys.txt").read_text().split())
    for name in ("test_smiles.csv", "test_smiles_corrected.csv"):
        for molecule in load_test_smiles(GEOM / "drugs" / name):
            for smiles in (molecule.smiles, molecule.corrected_smiles):
                mol = Chem.MolFromSmiles(smiles) if smiles else None
                if mol is not None:
                    assert Chem.MolToInchiKey(mol) in excluded
    skeletons = {key.split("-")[0] for key in excluded}
    training = (root / "train_druglike.smi").read_text().split()
    assert len(training) >= 2500
    for smiles in training:
        assert Chem.MolToInchiKey(Chem.MolFromSmiles(smiles)).split("-")[0] not in skeletons


@pytest.mark.parametrize("dataset", ["drugs", "qm9"])
def test_real_split_files_load_as_numpy_itself_loads_them(dataset):
    path = standard_split_path(dataset)
    ours = load_split(path)
    theirs = np.load(path, allow_pickle=True)  # trusted here: the project's own copy
    for mine, original in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(mine, original.astype(np.int64))


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_crafted_split_file_is_refused_and_its_payload_never_runs(tmp_path):
    import pickle

    marker = tmp_path / "payload-ran"
    crafted = tmp_path / "split0.npy"
    with open(crafted, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": (3,)})
        handle.write(pickle.dumps(_RunsCode(marker), protocol=3))
    with pytest.raises(UserInputError, match=r"split file .*split0\.npy: refused.*posix\.system|"
                                             r"split file .*split0\.npy: refused.*os\.system"):
        load_split(crafted)
    assert not marker.exists()


def test_prepare_help_says_how_split_files_are_read(capsys):
    from conformer.cli import main

    with pytest.raises(SystemExit):
        main(["prepare", "--help"])
    assert "never runs code" in " ".join(capsys.readouterr().out.split())
