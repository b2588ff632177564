"""`conformer generate` under hostile but realistic use (issue 14): torn files, odd CSVs, bad
paths, out-of-domain chemistry, changed settings, and docking-ready output."""

from __future__ import annotations

import csv

import pytest

from conformer import cli
from conformer.sdf_io import completed_input_lines, read_conformer_groups


def _failures(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _etkdg(smi, out, *extra):
    return cli.main(["generate", str(smi), "--out", str(out), "--method", "etkdg",
                     "--num-confs", "2", "--no-progress", *extra])


# -- item 1: a record cut before its $$$$ is not counted as done ----------------------------
def test_a_molecule_cut_mid_record_is_generated_again_on_resume(tmp_path):
    smi = tmp_path / "in.smi"
    smi.write_text("CCO a\nCCN b\n")
    out = tmp_path / "out.sdf"
    assert _etkdg(smi, out) == 0
    whole = out.read_bytes()
    # a kill while writing the last record of b: everything but its "$$$$\n" is on disk
    out.write_bytes(whole[: whole.rindex(b"$$$$")])
    assert completed_input_lines(out) == {1}
    assert _etkdg(smi, out) == 0
    groups = read_conformer_groups(out)
    assert sorted(groups) == ["a", "b"] and len(groups["b"]) == 2
    assert out.read_bytes() == whole


# -- item 2: names with line breaks ---------------------------------------------------------
def test_a_csv_name_with_a_newline_gives_readable_records_and_no_reappend(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('smiles,name\nCCO,"eth\nanol"\nCCN,"a\\x00b\tc"\n'.replace("\\x00", "\x00"))
    out = tmp_path / "out.sdf"
    assert _etkdg(path, out) == 0
    groups = read_conformer_groups(out)
    assert sorted(groups) == ["a b c", "eth anol"]
    assert all(len(v) == 2 for v in groups.values())
    before = out.read_bytes()
    assert _etkdg(path, out) == 0
    assert out.read_bytes() == before


# -- item 3: physical line numbers in failures.csv ------------------------------------------
def test_failure_lines_are_physical_lines_after_blank_rows_and_multiline_fields(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('smiles,name\n\nCCO,"two\nlines"\n\nnot_a_smiles,bad\nCCN,ok\n')
    out = tmp_path / "out.sdf"
    assert _etkdg(path, out) == 0
    rows = _failures(tmp_path / "out.failures.csv")
    assert [row["line"] for row in rows] == ["6"]
    assert {m[0].GetProp("input_line") for m in read_conformer_groups(out).values()} == {"3", "7"}


# -- item 4: Unicode whitespace inside a SMILES ---------------------------------------------
@pytest.mark.parametrize("suffix", [".smi", ".csv"])
def test_unicode_whitespace_inside_a_smiles_is_an_invalid_smiles(tmp_path, suffix):
    path = tmp_path / f"in{suffix}"
    body = "C\u00a0CO nbsp\nCCO\u2003emsp\n"
    if suffix == ".csv":
        body = "smiles,name\nC\u00a0CO,nbsp\nCCO\u2003,emsp\n"
    path.write_text(body, encoding="utf-8")
    out = tmp_path / "out.sdf"
    assert _etkdg(path, out) == 0
    rows = _failures(tmp_path / "out.failures.csv")
    assert len(rows) == 2
    assert not out.exists() or not read_conformer_groups(out)
    assert "U+00A0" in rows[0]["reason"] and "invalid SMILES" in rows[0]["reason"]
    assert "U+2003" in rows[1]["reason"]
