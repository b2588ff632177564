"""`conformer generate` under hostile but realistic use (issue 14): torn files, odd CSVs, bad
paths, out-of-domain chemistry, changed settings, and docking-ready output."""

from __future__ import annotations

import csv

import pytest
from rdkit import Chem

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
