"""``conformer build-geom``: GEOM layout, energies and weights, failures, resume, file names."""

import csv
import json
import math

import numpy as np
import pytest
from rdkit import Chem

from conformer import cli
from conformer.data import build, geom
from conformer.data.splits import load_split
from conformer.errors import UserInputError

SMILES_LINES = [
    "# a comment line",
    "CC(=O)Nc1ccc(O)cc1 paracetamol",
    "",
    "C1CC(",                      # line 4: does not parse
    "CCOC(=O)c1ccc(OC)cc1",
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1 ibuprofen",
    "OC(=O)C(C)c1ccc(CC(C)C)cc1",  # line 7: ibuprofen again, written differently
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    smiles_file = root / "input.smi"
    smiles_file.write_text("\n".join(SMILES_LINES) + "\n")
    out = root / "out"
    code = cli.main(["build-geom", str(smiles_file), "--out", str(out), "--confs", "6",
                     "--seed", "3", "--no-progress"])
    assert code == 0
    return smiles_file, out


def test_failures_name_the_bad_lines(built):
    _, out = built
    with open(out / "failures.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["line"], r["input"]) for r in rows] == [("4", "C1CC("),
                                                     ("7", "OC(=O)C(C)c1ccc(CC(C)C)cc1")]
    assert "parse" in rows[0]["reason"] and "duplicate of line 6" == rows[1]["reason"]


def test_geom_layout_and_fields(built):
    _, out = built
    summary = json.loads((out / "summary_drugs.json").read_text())
    assert len(summary) == 3
    geom_ids = []
    for key, entry in summary.items():
        assert {"charge", "datasets", "ensembleenergy", "ensembleentropy", "ensemblefreeenergy",
                "lowestenergy", "pickle_path", "poplowestpct", "temperature", "totalconfs",
                "uniqueconfs"} <= set(entry)
        assert entry["temperature"] == 298.15
        assert entry["pickle_path"] == "drugs/" + key.replace("/", "_") + ".pickle"
        molecule = geom.read_molecule_pickle(out / entry["pickle_path"])
        assert molecule["smiles"] == key
        conformers = molecule["conformers"]
        assert len(conformers) == entry["uniqueconfs"] <= entry["totalconfs"] == 6
        weights = np.array([c["boltzmannweight"] for c in conformers])
        assert math.isclose(weights.sum(), 1.0, rel_tol=1e-9)
        relative = np.array([c["relativeenergy"] for c in conformers])
        assert relative.min() == 0.0 and relative.max() <= 6.0
        # Boltzmann at 298.15 K from the relative energies, kcal/mol
        expected = np.exp(-relative / (1.987204259e-3 * 298.15))
        np.testing.assert_allclose(weights, expected / expected.sum(), rtol=1e-9)
        # totalenergy in Hartree, consistent with relativeenergy in kcal/mol
        total = np.array([c["totalenergy"] for c in conformers])
        np.testing.assert_allclose((total - total.min()) * 627.509474, relative, atol=1e-6)
        assert math.isclose(entry["lowestenergy"], total.min())
        assert math.isclose(entry["poplowestpct"], 100 * weights.max())
        for conformer in conformers:
            mol = conformer["rd_mol"]
            assert mol.GetNumConformers() == 1
            assert any(a.GetAtomicNum() == 1 for a in mol.GetAtoms())  # explicit H
            assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == key
            assert {"geom_id", "set", "degeneracy", "conformerweights"} <= set(conformer)
            geom_ids.append(conformer["geom_id"])
    assert len(set(geom_ids)) == len(geom_ids)


def test_split_file_indexes_the_sorted_pickles(built):
    _, out = built
    train, val, test = load_split(out / "split.npy", n_molecules=3)
    assert sorted(np.concatenate([train, val, test]).tolist()) == [0, 1, 2]


def test_rerun_skips_finished_molecules_and_is_deterministic(built, tmp_path):
    smiles_file, out = built
    settings = build.BuildSettings(n_confs=6, seed=3)
    report = build.build_geom_folder(smiles_file, out, settings, progress=False)
    assert (report.built, report.skipped_existing, report.molecules_in_folder) == (0, 3, 3)
    # same seed, fresh folder, one molecule: identical coordinates
    one = tmp_path / "one.smi"
    one.write_text("CCOC(=O)c1ccc(OC)cc1\n")
    build.build_geom_folder(one, tmp_path / "again", settings, progress=False)
    key = "CCOC(=O)c1ccc(OC)cc1"
    first = geom.read_molecule_pickle(out / geom.pickle_relpath(key, "drugs"))
    second = geom.read_molecule_pickle(tmp_path / "again" / geom.pickle_relpath(key, "drugs"))
    for a, b in zip(first["conformers"], second["conformers"], strict=True):
        np.testing.assert_array_equal(a["rd_mol"].GetConformer().GetPositions(),
                                      b["rd_mol"].GetConformer().GetPositions())


def test_rmsd_threshold_and_energy_window_prune(tmp_path):
    smiles_file = tmp_path / "one.smi"
    smiles_file.write_text("CCCCOC(=O)c1ccccc1\n")
    loose = build.build_molecule("CCCCOC(=O)c1ccccc1", 1, build.BuildSettings(
        n_confs=8, seed=5, rmsd_threshold=0.0, energy_window=100.0))
    merged = build.build_molecule("CCCCOC(=O)c1ccccc1", 1, build.BuildSettings(
        n_confs=8, seed=5, rmsd_threshold=100.0, energy_window=100.0))
    narrow = build.build_molecule("CCCCOC(=O)c1ccccc1", 1, build.BuildSettings(
        n_confs=8, seed=5, rmsd_threshold=0.0, energy_window=1e-9))
    assert loose["uniqueconfs"] == 8
    assert merged["uniqueconfs"] == 1 and merged["conformers"][0]["relativeenergy"] == 0.0
    assert narrow["uniqueconfs"] < 8
    assert all(c["relativeenergy"] <= 1e-9 for c in narrow["conformers"])


def test_boltzmann_weights_ratio():
    rt = 1.987204259e-3 * 298.15
    weights = build.boltzmann_weights(np.array([0.0, rt * math.log(2.0)]))
    np.testing.assert_allclose(weights, [2 / 3, 1 / 3])


def test_long_smiles_get_safe_distinct_file_names():
    long_a = "C" * 400 + "O"
    long_b = "C" * 400 + "N"
    stem_a, stem_b = geom.pickle_stem(long_a), geom.pickle_stem(long_b)
    assert stem_a != stem_b
    assert len(stem_a.encode()) <= geom.MAX_STEM_BYTES
    assert geom.pickle_stem("C/C=C/C") == "C_C=C_C"


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match="--confs"):
        build.BuildSettings(n_confs=0)
    with pytest.raises(UserInputError, match="no such SMILES file"):
        build.build_geom_folder(tmp_path / "missing.smi", tmp_path / "o", build.BuildSettings())
    (tmp_path / "a.smi").write_text("CCO\n")
    with pytest.raises(UserInputError, match="--split-fractions"):
        build.build_geom_folder(tmp_path / "a.smi", tmp_path / "o", build.BuildSettings(),
                                split_fractions=(0.5, 0.5, 0.5))


def test_xtb_without_tblite_is_a_clear_error(tmp_path):
    try:
        import tblite.interface  # noqa: F401
        pytest.skip("tblite is installed")
    except ImportError:
        pass
    (tmp_path / "a.smi").write_text("CCO\n")
    with pytest.raises(UserInputError, match="tblite"):
        build.build_geom_folder(tmp_path / "a.smi", tmp_path / "o",
                                build.BuildSettings(xtb=True))


def test_unassigned_stereo_is_fixed_once_for_all_conformers():
    key = build.canonical_key("CC(O)C(Cl)C=CC", run_seed=2)
    assert "@" in key and ("/" in key or "\\" in key)
    assert key == build.canonical_key("CC=CC(Cl)C(C)O", run_seed=2)  # atom order does not matter
    molecule = build.build_molecule(key, 1, build.BuildSettings(n_confs=6, seed=2))
    assert molecule["uniqueconfs"] >= 2
    for conformer in molecule["conformers"]:
        mol = Chem.Mol(conformer["rd_mol"])
        Chem.AssignStereochemistryFrom3D(mol, replaceExistingTags=True)
        assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == key


def test_two_workers_build_the_same_folder_and_a_lost_pickle_is_rebuilt(built, tmp_path):
    smiles_file, out = built
    settings = build.BuildSettings(n_confs=6, seed=3)
    report = build.build_geom_folder(smiles_file, tmp_path / "two", settings, workers=2,
                                     progress=False)
    assert report.built == 3
    for path in geom.sorted_pickle_paths(out, "drugs"):
        ours = geom.read_molecule_pickle(tmp_path / "two" / "drugs" / path.name)
        theirs = geom.read_molecule_pickle(path)
        assert [c["geom_id"] for c in ours["conformers"]] == \
            [c["geom_id"] for c in theirs["conformers"]]
        np.testing.assert_array_equal(ours["conformers"][-1]["rd_mol"].GetConformer().GetPositions(),
                                      theirs["conformers"][-1]["rd_mol"].GetConformer().GetPositions())
    assert (tmp_path / "two" / "summary_drugs.json").read_text() == \
        (out / "summary_drugs.json").read_text()
    lost = geom.sorted_pickle_paths(tmp_path / "two", "drugs")[0]
    lost.unlink()
    again = build.build_geom_folder(smiles_file, tmp_path / "two", settings, progress=False)
    assert (again.built, again.skipped_existing) == (1, 2) and lost.exists()


def test_impossible_stereo_draw_is_replaced_by_an_embeddable_isomer():
    # camphorquinone: a random R/S draw at its bridgeheads can be geometrically impossible
    key = build.canonical_key("CC12CCC(C(=O)C1=O)C2(C)C", run_seed=1)
    isomer = Chem.AddHs(Chem.MolFromSmiles(key))
    params = build.rdDistGeom.ETKDGv3()
    params.randomSeed = 11
    params.timeout = 5
    assert build.rdDistGeom.EmbedMolecule(isomer, params) == 0


def test_imine_whose_nh_direction_the_smiles_leaves_open_is_built():
    # 3D perception gives the imine N-H an E/Z the SMILES never states; generate accepts such
    # conformers, and build-geom used to reject every one ("no embedded conformer has the
    # stereochemistry of the SMILES").
    key = build.canonical_key("N=c1[nH]cc([N+](=O)[O-])s1")
    molecule = build.build_molecule(key, 1, build.BuildSettings(n_confs=4, seed=1))
    assert molecule["uniqueconfs"] >= 1


def test_specified_stereo_is_still_enforced():
    key = build.canonical_key("C/C=C/C(C)(O)[C@@H](F)Cl")
    mol = Chem.AddHs(Chem.MolFromSmiles(key))
    ids = list(build.rdDistGeom.EmbedMultipleConfs(mol, 2, randomSeed=4))
    mirrored = Chem.Mol(mol)
    conf = mirrored.GetConformer(ids[1])
    conf.SetPositions(conf.GetPositions() * np.array([-1.0, 1.0, 1.0]))  # inverts the centre
    assert build._conformers_with_key_stereo(mirrored, ids, key) == [ids[0]]


def test_a_resumed_build_reads_its_keys_instead_of_computing_them(built, tmp_path, monkeypatch):
    smiles_file, out = built
    lines = (out / build.KEYS_FILE).read_text().splitlines()
    assert lines[0] == build._keys_header(3)
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in lines[1:]}
    assert set(rows) == {"CC(=O)Nc1ccc(O)cc1", "C1CC(", "CCOC(=O)c1ccc(OC)cc1",
                         "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "OC(=O)C(C)c1ccc(CC(C)C)cc1"}
    assert rows["C1CC("] == ["", "RDKit cannot parse the SMILES"]
    assert rows["CC(=O)Nc1ccc(O)cc1"] == ["CC(=O)Nc1ccc(O)cc1", ""]

    def no_key(*args, **kwargs):
        raise AssertionError("a resumed build computed a key its keys file holds")

    monkeypatch.setattr(build, "canonical_key", no_key)
    before = (out / "failures.csv").read_text()
    report = build.build_geom_folder(smiles_file, out, build.BuildSettings(n_confs=6, seed=3),
                                     progress=False)
    assert (report.built, report.skipped_existing, report.failed) == (0, 3, 2)
    assert (out / "failures.csv").read_text() == before


def test_keys_file_of_other_settings_or_cut_short_is_not_trusted(tmp_path, monkeypatch):
    calls = []

    def counted_key(smiles, run_seed=1):
        calls.append((smiles, run_seed))
        return f"key-{smiles}-{run_seed}"

    monkeypatch.setattr(build, "canonical_key", counted_key)
    path = tmp_path / build.KEYS_FILE
    texts = ["CCO", "CCN", "CCO", "CCC"]
    keys = build.canonical_keys(texts, 1, path, progress=False)
    assert keys == {t: (f"key-{t}-1", None) for t in ("CCO", "CCN", "CCC")}
    assert len(calls) == 3  # each distinct text once
    assert build.canonical_keys(texts, 1, path, progress=False) == keys and len(calls) == 3
    # a line cut by an interrupted run is computed again; the others are kept
    path.write_text(path.read_text()[:-1])
    assert build.canonical_keys(texts, 1, path, progress=False) == keys
    assert calls[3:] == [("CCC", 1)]
    # another run seed: every key again, and the file now belongs to that seed
    assert build.canonical_keys(texts, 2, path, progress=False)["CCO"] == ("key-CCO-2", None)
    assert len(calls) == 7
    assert path.read_text().splitlines()[0] == build._keys_header(2)
