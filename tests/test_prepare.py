"""``conformer prepare`` over the committed fixture ``tests/fixtures/geom_mini``."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem

from conformer import cli
from conformer.data import geom, keys
from conformer.data.features import (
    ATOM_FEATURE_CARDINALITIES,
    BOND_FEATURE_CARDINALITIES,
    featurize_mol,
)
from conformer.data.prepare import (
    REASON_FRAGMENTS,
    REASON_REACTED,
    PrepareSettings,
    parse_shard,
    prepare,
)
from conformer.data.records import RecordStore, open_prepared
from conformer.errors import UserInputError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "geom_mini"
SPLIT = FIXTURE / "split.npy"
REACTED_GEOM_ID = 999_999_999  # inserted by scripts/make_fixture.py


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    report = prepare(FIXTURE, SPLIT, cache, progress=False)
    return cache, report


def test_records_have_the_keys_shapes_and_dtypes(prepared):
    cache, _ = prepared
    store = open_prepared(cache, "drugs", "train")
    assert len(store) > 0
    for i in range(len(store)):
        record = store[i]
        # a torch_geometric Data under PyG's field names; the record key names read it too
        assert set(record.keys()) == {keys.GRAPH_FIELDS.get(k, k) for k in
                                      keys.RECORD_ARRAY_KEYS + keys.RECORD_STRING_KEYS}
        n = record[keys.ATOMIC_NUMBERS].shape[0]
        assert record[keys.ATOM_FEATURES].shape == (n, len(ATOM_FEATURE_CARDINALITIES))
        e = record[keys.BOND_INDEX].shape[1]
        assert record[keys.BOND_INDEX].shape == (2, e) and e % 2 == 0
        assert record[keys.BOND_FEATURES].shape == (e, len(BOND_FEATURE_CARDINALITIES))
        c = record[keys.POSITIONS].shape[0]
        assert record[keys.POSITIONS].shape == (c, n, 3)
        assert record[keys.POSITIONS].dtype == torch.float32
        weights = record[keys.BOLTZMANN_WEIGHTS]
        assert weights.dtype == torch.float32 and weights.shape == (c,)
        assert np.isclose(weights.sum(), 1.0) and np.all(np.diff(weights.numpy()) <= 1e-7)
        for k in keys.RECORD_ARRAY_KEYS[:4]:
            assert record[k].dtype == torch.int64
        # the graph is the molblock's, featurised the same way, atom order preserved
        mol = Chem.MolFromMolBlock(record[keys.MOLBLOCK], removeHs=False)
        features = featurize_mol(mol)
        np.testing.assert_array_equal(features[keys.ATOMIC_NUMBERS], record[keys.ATOMIC_NUMBERS])
        np.testing.assert_array_equal(features[keys.ATOM_FEATURES], record[keys.ATOM_FEATURES])
        np.testing.assert_array_equal(features[keys.BOND_INDEX], record[keys.BOND_INDEX])
        assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == record[keys.SMILES]
        assert record[keys.GEOM_KEY] in json.loads((FIXTURE / "summary_drugs.json").read_text())


def test_reacted_conformer_is_dropped_and_counted(prepared):
    cache, report = prepared
    manifest = json.loads((report.out_dir / "manifest.json").read_text())
    assert manifest["conformer_drops"] == {REASON_REACTED: 1}
    with open(report.out_dir / "failures.csv") as handle:
        rows = list(csv.DictReader(handle))
    dropped = [r for r in rows if r["level"] == "conformer"]
    assert [int(r["geom_id"]) for r in dropped] == [REACTED_GEOM_ID]
    # the record of that molecule holds exactly its valid conformers, best weight first
    pickle_name = dropped[0]["pickle"]
    molecule = geom.read_molecule_pickle(FIXTURE / "drugs" / pickle_name)
    valid = sorted((c for c in molecule["conformers"] if c["geom_id"] != REACTED_GEOM_ID),
                   key=lambda c: -c["boltzmannweight"])
    record_path = report.out_dir / dropped[0]["split"] / f"{int(dropped[0]['index']):07d}.npz"
    with np.load(record_path) as record:
        positions = record[keys.POSITIONS]
    assert positions.shape[0] == len(valid)
    np.testing.assert_allclose(positions[0], valid[0]["rd_mol"].GetConformer().GetPositions(),
                               atol=1e-5)


def test_molecule_filters_and_manifest_counts_add_up(prepared):
    _, report = prepared
    manifest = json.loads((report.out_dir / "manifest.json").read_text())
    assert manifest["molecule_failures"] == {REASON_FRAGMENTS: 1, "fewer than 4 heavy atoms": 1}
    total = sum(manifest["split_sizes"].values())
    assert total == manifest["n_pickles"] == manifest["molecules_processed"] == 14
    assert sum(manifest["records"].values()) + sum(manifest["molecule_failures"].values()) == total
    for split, count in manifest["records"].items():
        store = RecordStore(report.out_dir / split)
        assert len(store) == count
        assert manifest["conformers"][split] == sum(
            store[i][keys.POSITIONS].shape[0] for i in range(len(store)))
    assert manifest["environment"]["libraries"]["rdkit"]
    assert len(manifest["split_sha256"]) == 64
    assert report.out_dir.name == f"drugs-{manifest['parameter_hash']}"


def test_second_run_does_no_work(prepared, capsys):
    cache, first = prepared
    again = prepare(FIXTURE, SPLIT, cache, progress=False)
    assert again.out_dir == first.out_dir and again.processed_now == 0
    assert "nothing to do" in capsys.readouterr().out


def test_interrupted_run_resumes_only_the_missing_molecule(tmp_path):
    first = prepare(FIXTURE, SPLIT, tmp_path, progress=False)
    progress_log = first.out_dir / "progress-0-of-1.jsonl"
    lines = progress_log.read_text().splitlines()
    lost = json.loads(lines[-1])
    progress_log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # cut mid-line
    before = json.loads((first.out_dir / "manifest.json").read_text())
    again = prepare(FIXTURE, SPLIT, tmp_path, progress=False)
    assert again.processed_now == 1
    after = json.loads((first.out_dir / "manifest.json").read_text())
    for field in ("records", "conformers", "molecule_failures", "conformer_drops"):
        assert after[field] == before[field]
    assert json.loads(progress_log.read_text().splitlines()[-1])["index"] == lost["index"]
    assert prepare(FIXTURE, SPLIT, tmp_path, progress=False).processed_now == 0


def test_changed_setting_gets_a_new_cache_folder(prepared):
    cache, first = prepared
    other = prepare(FIXTURE, SPLIT, cache, PrepareSettings(max_confs=2), progress=False)
    assert other.out_dir != first.out_dir
    store = RecordStore(other.out_dir / "train")
    assert max(store[i][keys.POSITIONS].shape[0] for i in range(len(store))) == 2
    with pytest.raises(UserInputError, match="several prepared"):
        open_prepared(cache, "drugs", "train")
    shutil.rmtree(other.out_dir)


def test_shards_union_equals_the_full_run(prepared, tmp_path):
    _, full = prepared
    first = prepare(FIXTURE, SPLIT, tmp_path, shard=(0, 2), progress=False)
    assert not first.merged and not (first.out_dir / "manifest.json").exists()
    second = prepare(FIXTURE, SPLIT, tmp_path, shard=(1, 2), progress=False)
    assert second.merged and first.processed_now + second.processed_now == 14
    assert first.out_dir.name == full.out_dir.name
    for split in ("train", "val", "test"):
        names = sorted(p.name for p in (full.out_dir / split).glob("*.npz"))
        assert names == sorted(p.name for p in (second.out_dir / split).glob("*.npz"))
        for name in names:
            with np.load(full.out_dir / split / name) as a, \
                    np.load(second.out_dir / split / name) as b:
                for k in a.files:
                    np.testing.assert_array_equal(a[k], b[k])
    sharded = json.loads((second.out_dir / "manifest.json").read_text())
    whole = json.loads((full.out_dir / "manifest.json").read_text())
    for field in ("records", "conformers", "molecule_failures", "conformer_drops",
                  "molecules_processed"):
        assert sharded[field] == whole[field]
    assert (second.out_dir / "failures.csv").read_text() == \
        (full.out_dir / "failures.csv").read_text()


def _save_split(path, parts):
    array = np.empty(len(parts), dtype=object)
    for i, part in enumerate(parts):
        array[i] = np.asarray(part, dtype=np.int64)
    np.save(path, array, allow_pickle=True)
    return path


@pytest.mark.parametrize("parts,message", [
    ([np.arange(10), np.arange(10, 12)], "object array of 3"),
    ([np.arange(11), [11], [99]], "out of range"),
    ([np.arange(10), [10], [11]], "indexes 12 molecules but the folder holds 14"),
])
def test_bad_split_files_are_clear_cli_errors(tmp_path, capsys, parts, message):
    split = _save_split(tmp_path / "bad.npy", parts)
    code = cli.main(["prepare", str(FIXTURE), "--split", str(split), "--out",
                     str(tmp_path / "cache"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "bad.npy" in err


def test_cache_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CONFORMER_CACHE", str(tmp_path / "env_cache"))
    assert cli.main(["prepare", str(FIXTURE), "--split", str(SPLIT), "--shard", "0/7",
                     "--no-progress"]) == 0
    assert list((tmp_path / "env_cache").glob("drugs-*/progress-0-of-7.jsonl"))
    monkeypatch.delenv("CONFORMER_CACHE")
    with pytest.raises(UserInputError, match="CONFORMER_CACHE"):
        prepare(FIXTURE, SPLIT, None, progress=False)


def test_bad_inputs(tmp_path):
    with pytest.raises(UserInputError, match="--shard"):
        parse_shard("2/2")
    with pytest.raises(UserInputError, match="no 'qm9/' folder"):
        prepare(FIXTURE, SPLIT, tmp_path, PrepareSettings(dataset="qm9"), progress=False)
    with pytest.raises(UserInputError, match="no finished prepared"):
        open_prepared(tmp_path, "drugs", "train")


def test_two_workers_write_the_same_records(prepared, tmp_path):
    _, full = prepared
    report = prepare(FIXTURE, SPLIT, tmp_path, workers=2, progress=False)
    assert report.processed_now == 14
    for path in sorted(full.out_dir.glob("*/*.npz")):
        with np.load(path) as a, np.load(report.out_dir / path.parent.name / path.name) as b:
            assert a.files == b.files
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k])
    assert (report.out_dir / "failures.csv").read_text() == \
        (full.out_dir / "failures.csv").read_text()


def test_records_of_an_older_feature_version_still_load(prepared, tmp_path):
    """A record written before the CIP neighbour ranks existed (FEATURE_VERSION 1) still reads
    and batches for every model that does not use them; a model that does says what to do."""
    import shutil

    import torch

    from conformer.data.batching import collate_molecules
    from conformer.data.records import molecule_graph
    from conformer.nn import build_denoiser

    cache, _ = prepared
    store = open_prepared(cache, "drugs", "train")
    folder = tmp_path / "old" / "train"
    folder.mkdir(parents=True)
    with np.load(store.file(0), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != keys.CIP_NEIGHBOUR_RANK}
    np.savez(folder / store.file(0).name, **arrays)
    old = RecordStore(folder)[0]
    assert keys.CIP_NEIGHBOUR_RANK not in old
    pos = old[keys.POSITIONS][0].float()
    batch = collate_molecules([molecule_graph(old, pos=pos)])
    noise = torch.zeros(1)
    assert build_denoiser("tiny", "equivariant")(batch, noise).shape == pos.shape
    needs_ranks = build_denoiser("tiny", "equivariant", cip_rank_edges=True)
    with pytest.raises(UserInputError, match="rerun `conformer prepare`"):
        needs_ranks(batch, noise)
    shutil.rmtree(tmp_path / "old")
