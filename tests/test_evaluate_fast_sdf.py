"""The evaluator's fast SDF reader (conformer.evaluate.fast_sdf) against RDKit's reader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem

from conformer.errors import UserInputError
from conformer.evaluate import fast_sdf
from conformer.evaluate.fast_sdf import ConformerRecords, read_record_groups
from conformer.evaluate.rmsd import ConformerArray
from conformer.sdf_io import ConformerSDFWriter, read_conformer_groups

# hydrogens, a charge (quaternary N, carboxylate), aromatic rings written in Kekule form,
# stereocentres (RDKit writes their wedges per conformer), a double bond with stereo
MOLECULES = {
    "choline_acetate": "C[N+](C)(C)CCOC(C)=O.CC(=O)[O-]",
    "pyridyl_alanine": "N[C@@H](Cc1ccncc1)C(=O)O",
    "stilbene_ol": "O[C@H](C)/C=C/c1ccccc1",
}


def _embedded(smiles: str, n: int, seed: int) -> Chem.Mol:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    AllChem.EmbedMultipleConfs(mol, n, params)
    return mol


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fast_sdf") / "gen.sdf"
    with ConformerSDFWriter(path) as writer:
        for line, (name, smiles) in enumerate(MOLECULES.items(), start=1):
            writer.write_molecule(_embedded(smiles, 6, seed=line), name, smiles, line,
                                  {"method": "etkdg", "note": "two words"})
    return path


def _engine_entries(records: ConformerRecords) -> list[tuple[Chem.Mol, np.ndarray]]:
    """(topology, (n_atoms, 3) positions) of every entry the engine reads, in order."""
    out = []
    for item in records.engine_molecules():
        if isinstance(item, ConformerArray):
            out.extend((item.template, xyz) for xyz in item.coords)
        else:
            out.extend((item, conf.GetPositions()) for conf in item.GetConformers())
    return out


def _positions(records: ConformerRecords) -> np.ndarray:
    return np.array([xyz for _, xyz in _engine_entries(records)])


def _assert_same_as_rdkit(path: Path, key: str = "name") -> dict[str, ConformerRecords]:
    """Same groups, records, titles, properties, atoms and coordinates as RDKit's reader."""
    slow_errors, fast_errors = [], []
    slow = read_conformer_groups(path, key=key, errors=slow_errors)
    fast = read_record_groups(path, key=key, errors=fast_errors)
    assert list(fast) == list(slow)
    assert fast_errors == slow_errors
    for name, mols in slow.items():
        records = fast[name]
        assert len(records) == len(mols)
        expected = np.array([m.GetConformer().GetPositions() for m in mols])
        np.testing.assert_allclose(_positions(records), expected, rtol=0, atol=1e-6)
        for index, mol in enumerate(mols):
            assert records.prop(index, "_Name") == mol.GetProp("_Name")
            for prop in mol.GetPropNames():
                assert records.prop(index, prop) == mol.GetProp(prop), prop
            built = records[index]  # the record as a molecule: RDKit's own reading
            assert [a.GetSymbol() for a in built.GetAtoms()] == \
                [a.GetSymbol() for a in mol.GetAtoms()]
            assert [a.GetFormalCharge() for a in built.GetAtoms()] == \
                [a.GetFormalCharge() for a in mol.GetAtoms()]
            assert Chem.MolToSmiles(built) == Chem.MolToSmiles(mol)
        # the engine's molecules: conformer j has record j's atoms, in the file's order
        engine_atoms = [[a.GetSymbol() for a in topology.GetAtoms()]
                        for topology, _ in _engine_entries(records)]
        assert engine_atoms == [[a.GetSymbol() for a in mol.GetAtoms()] for mol in mols]
    return fast


def _fast_count(groups: dict[str, ConformerRecords]) -> int:
    """Records read without RDKit (coordinates and data items from the text)."""
    return sum(entry.props is not None for records in groups.values()
               for entry in records._entries)


def test_generated_file_reads_as_rdkit_reads_it_mostly_without_rdkit(generated):
    groups = _assert_same_as_rdkit(generated)
    assert sorted(groups) == sorted(MOLECULES)
    # one RDKit parse per molecule: the other five records of each take the fast path
    assert _fast_count(groups) == 5 * len(MOLECULES)


def test_gzipped_and_title_grouped_files(generated, tmp_path):
    packed = tmp_path / "gen.sdf.gz"
    packed.write_bytes(gzip.compress(generated.read_bytes()))
    assert _fast_count(_assert_same_as_rdkit(packed)) == 5 * len(MOLECULES)
    assert _fast_count(_assert_same_as_rdkit(generated, key="_Name")) == 5 * len(MOLECULES)


def _records(path: Path) -> list[str]:
    return [r + "$$$$\n" for r in path.read_text().split("$$$$\n")[:-1]]


def _edit_atom_line(record: str, atom: int, edit) -> str:
    lines = record.split("\n")
    lines[4 + atom] = edit(lines[4 + atom])
    return "\n".join(lines)


@pytest.mark.parametrize("change", ["charge", "element", "bond order", "coordinate format",
                                    "padded value", "multi-line value", "data header"])
def test_a_record_that_differs_from_its_template_is_read_by_rdkit(generated, tmp_path,
                                                                   change):
    records = _records(generated)
    record = records[2]  # the third conformer of the first molecule
    if change == "charge":  # the N+ of choline loses its charge field: RDKit reads N
        n_plus = next(i for i, line in enumerate(record.split("\n")[4:]) if " N " in line)
        record = _edit_atom_line(record, n_plus, lambda line: line[:36] + "0" + line[37:])
    elif change == "element":
        record = _edit_atom_line(record, 0, lambda line: line[:31] + "Si " + line[34:])
    elif change == "bond order":
        lines = record.split("\n")
        n_atoms = int(lines[3][:3])
        double = next(i for i in range(4 + n_atoms, len(lines)) if lines[i][6:9] == "  2")
        lines[double] = lines[double][:6] + "  1" + lines[double][9:]  # C=O to C-O.
        record = "\n".join(lines)
    elif change == "coordinate format":  # same value, more digits: not %10.4f
        record = _edit_atom_line(record, 1, lambda line: f"{float(line[:10]):10.5f}" + line[10:])
    elif change == "padded value":
        record = record.replace(">  <method>\netkdg\n", ">  <method>\netkdg  \n")
    elif change == "multi-line value":
        record = record.replace(">  <method>\netkdg\n", ">  <method>\netkdg\nsecond\n")
    elif change == "data header":
        record = record.replace(">  <method>\n", ">  DT12 <method>  (3) extra\n")
    records[2] = record
    path = tmp_path / "edited.sdf"
    path.write_text("".join(records))
    groups = _assert_same_as_rdkit(path)
    entries = groups["choline_acetate"]._entries
    if change == "data header":  # RDKit's label rule (first '<', last '>') is matched
        assert entries[2].props is not None
    else:
        assert entries[2].props is None  # read by RDKit
    assert _fast_count(groups) >= 5 * len(MOLECULES) - 2  # the others stay fast


def test_records_whose_data_items_differ_within_a_block(generated, tmp_path):
    """A block's records read with the labels of its first fast-read record in one regex;
    records with other labels, another order, labels RDKit reads by its first-'<'-last-'>'
    rule, or a value the general form refuses still read as RDKit reads them."""
    records = _records(generated)  # the first molecule's records: 0-5
    records[2] = records[2].replace(">  <method>\netkdg\n\n", "")  # an item fewer
    records[3] = records[3].replace("$$$$\n", ">  <extra>\nvalue\n\n$$$$\n")  # one more
    method = ">  <method>\netkdg\n\n"
    note = ">  <note>\ntwo words\n\n"
    assert method + note in records[4]
    records[4] = records[4].replace(method + note, note + method)  # another order
    records[5] = records[5].replace(">  <note>\n", ">  <no<te>x> (5)\n")  # label 'no<te>x'
    path = tmp_path / "items.sdf"
    path.write_text("".join(records))
    groups = _assert_same_as_rdkit(path)
    entries = groups["choline_acetate"]._entries
    assert all(entry.props is not None for entry in entries[1:])  # all read fast
    assert entries[5].props["no<te>x"] == "two words" and "extra" in entries[3].props
    assert entries[1].block.item_labels == tuple(entries[1].props)[1:]  # after _Name
    # the labels' regex accepts only what the general form accepts, with the same values
    text = records[1][records[1].index("M  END\n") + 7:-len("$$$$\n")]
    pattern = fast_sdf._items_pattern(entries[1].block.item_labels)
    assert pattern.fullmatch(text) and fast_sdf._DATA_ITEMS.fullmatch(text)
    assert dict(zip(entries[1].block.item_labels, pattern.fullmatch(text).groups(),
                    strict=True)) == dict(fast_sdf._DATA_ITEM.findall(text))
    for bad in (text.replace("etkdg\n", "etkdg \n"), text.replace("etkdg\n", "etkdg\nx\n"),
                text.replace(">  <method>", ">  <method>>")):
        assert pattern.fullmatch(bad) is None


def test_cut_file_and_unreadable_record(generated, tmp_path):
    records = _records(generated)
    cut = tmp_path / "cut.sdf"
    cut.write_text("".join(records[:8]) + records[8][:len(records[8]) // 2])
    _assert_same_as_rdkit(cut)
    cut.write_text("".join(records[:8]) + records[8][:-5])  # only the terminator missing
    _assert_same_as_rdkit(cut)
    broken = tmp_path / "broken.sdf"
    records[3] = records[3].replace(" V2000", " V2OOO", 1)
    broken.write_text("".join(records))
    errors = []
    read_record_groups(broken, key="name", errors=errors)
    assert errors == [{"record": 4, "reason": f"{broken}: record cannot be read by RDKit"}]
    _assert_same_as_rdkit(broken)
    with pytest.raises(UserInputError, match="record 4 cannot be read by RDKit"):
        read_record_groups(broken, key="name")


def test_record_boundaries_rdkit_draws_differently_read_by_rdkit(generated, tmp_path):
    """A title line "$$$$" (RDKit reads it as a title, not as a record's end) or an empty
    record: the whole file goes to RDKit."""
    records = _records(generated)
    odd = tmp_path / "odd.sdf"
    odd.write_text("".join(records[:3]) + "$$$$\n" + records[3].split("\n", 1)[1]
                   + "".join(records[4:]))
    assert _fast_count(_assert_same_as_rdkit(odd)) == 0
    odd.write_text("".join(records[:3]) + "$$$$\n" + "".join(records[3:]))
    assert _fast_count(_assert_same_as_rdkit(odd)) == 0
    # a data item named _Name wins over the title, as in RDKit
    odd.write_text("".join(records[:3]) + records[3].replace(
        ">  <method>", ">  <_Name>\nitem name\n\n>  <method>") + "".join(records[4:]))
    groups = _assert_same_as_rdkit(odd)
    assert groups["choline_acetate"].prop(3, "_Name") == "item name"
    assert groups["choline_acetate"]._entries[3].props is not None


def test_windows_line_ends_and_missing_key_fall_back_to_rdkit(generated, tmp_path):
    crlf = tmp_path / "crlf.sdf"
    crlf.write_bytes(generated.read_bytes().replace(b"\n", b"\r\n"))
    assert _fast_count(_assert_same_as_rdkit(crlf)) == 0
    with pytest.raises(UserInputError, match="record 1 has no property 'molecule'"):
        read_record_groups(generated, key="molecule")


def test_interleaved_atom_orders_keep_their_templates(tmp_path):
    """Conformers of one molecule written in two atom orders, alternating: each order's
    records are checked against their own template, not parsed again by RDKit."""
    mol = _embedded("OCC(=O)N", 6, seed=3)
    order = list(range(mol.GetNumAtoms()))[::-1]
    renumbered = Chem.RenumberAtoms(mol, order)
    path = tmp_path / "interleaved.sdf"
    writer = Chem.SDWriter(str(path))
    for conf_id in range(6):
        source = mol if conf_id % 2 else renumbered
        record = Chem.Mol(source, confId=conf_id)
        record.SetProp("molecule", "glycolamide")
        writer.write(record)
    writer.close()
    groups = _assert_same_as_rdkit(path, key="molecule")
    assert _fast_count(groups) == 4
    assert len(groups["glycolamide"].engine_molecules()) == 6  # runs of one record each


@pytest.mark.parametrize(("text", "value"), [
    (b"   -0.0000", -0.0), (b"  -12.3456", -12.3456), (b"    1.2345", 1.2345),
    (b"12345.6789", 12345.6789), (b"-9999.9999", -9999.9999),
    (b"   1.23456", None), (b"  - 1.2345", None), (b"   1.2e+00", None), (b"  --1.0000", None),
    (b" 1-23.4567", None), (b"    -.1234", None), (b"  1 2.3456", None), (b"    1.2 34", None)])
def test_fixed_coordinates_parse_exactly_or_refuse(text, value):
    parsed = fast_sdf._parse_fixed_coordinates(np.frombuffer(text, np.uint8).reshape(1, 10))
    if value is None:
        assert parsed is None
    else:
        assert parsed[0] == float(text) and np.signbit(parsed[0]) == np.signbit(float(text))


def test_records_from_molecules_and_digest(generated):
    groups = read_record_groups(generated, key="name")
    records = groups["stilbene_ol"]
    wrapped = ConformerRecords.from_molecules(list(records))
    assert ConformerRecords.from_molecules(records) is records
    np.testing.assert_array_equal(_positions(wrapped), _positions(records))
    joined = ConformerRecords.concatenate([records.select([0, 1]), list(records)[2:]])
    np.testing.assert_array_equal(_positions(joined), _positions(records))

    def digest(recs):
        import hashlib

        h = hashlib.sha256()
        recs.digest(h.update)
        return h.hexdigest()

    assert digest(records) == digest(read_record_groups(generated, key="name")["stilbene_ol"])
    assert digest(records) != digest(records.select([1, 0, 2, 3, 4, 5]))


def test_evaluate_numbers_equal_those_from_rdkit_read_records(generated, tmp_path,
                                                                monkeypatch):
    """The whole evaluate path: the fast reader and the engine's multi-conformer molecules
    give the RMSD matrices and scores that RDKit-read records give."""
    import conformer.evaluate.evaluator as evaluator

    refs = tmp_path / "refs.sdf"
    writer = Chem.SDWriter(str(refs))
    for line, (name, smiles) in enumerate(MOLECULES.items(), start=1):
        mol = _embedded(smiles, 4, seed=50 + line)
        for conf in mol.GetConformers():
            record = Chem.Mol(mol, confId=conf.GetId())
            record.SetProp("molecule", name)
            writer.write(record)
    writer.close()
    settings = evaluator.EvaluationSettings(validity_confs_per_molecule=1)
    fast = evaluator.evaluate(generated, evaluator.load_references(refs, "molecule"),
                              tmp_path / "fast", settings, progress=False)

    def rdkit_groups(path, key, errors=None):
        return {name: ConformerRecords.from_molecules(mols) for name, mols in
                read_conformer_groups(path, key=key, errors=errors).items()}

    monkeypatch.setattr(evaluator, "read_record_groups", rdkit_groups)
    slow = evaluator.evaluate(generated, evaluator.load_references(refs, "molecule"),
                              tmp_path / "slow", settings, progress=False)
    assert fast["metrics"] == slow["metrics"] and fast["validity"] == slow["validity"]
    with np.load(tmp_path / "fast" / "rmsd.npz") as a, \
            np.load(tmp_path / "slow" / "rmsd.npz") as b:
        assert list(a["names"]) == list(b["names"]) == sorted(MOLECULES)
        for i in range(len(MOLECULES)):
            assert a[f"m{i}"].shape == (4, 6)
            np.testing.assert_array_equal(a[f"m{i}"], b[f"m{i}"])


def test_plot_formats(generated, tmp_path):
    import conformer.evaluate.evaluator as evaluator

    refs = {name: list(mols)[:2] for name, mols in
            read_record_groups(generated, key="name").items()}
    settings = evaluator.EvaluationSettings(validity_confs_per_molecule=0)
    evaluator.evaluate(generated, refs, tmp_path / "svg", settings, progress=False)
    svg = (tmp_path / "svg" / "coverage.svg").read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == 4 and "cov r mean" in svg
    assert not (tmp_path / "svg" / "coverage.png").exists()
    evaluator.evaluate(generated, refs, tmp_path / "none", settings, progress=False, plot="none")
    assert not list((tmp_path / "none").glob("coverage.*"))
    evaluator.evaluate(generated, refs, tmp_path / "png", settings, progress=False, plot="png")
    assert (tmp_path / "png" / "coverage.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UserInputError, match="--plot 'pdf'"):
        evaluator.evaluate(generated, refs, tmp_path / "x", settings, progress=False,
                           plot="pdf")
