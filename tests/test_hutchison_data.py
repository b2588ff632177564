"""The shipped Hutchison reference file: energies relative per molecule, README accurate."""

import gzip
import re
from collections import defaultdict
from pathlib import Path

HUTCHISON = Path(__file__).resolve().parent.parent / "data" / "hutchison"


def _records():
    data = gzip.open(HUTCHISON / "hutchison_conformers.sdf.gz", "rb").read().decode()
    return [r for r in data.split("$$$$\n") if r.strip()]


def _prop(record, key):
    match = re.search(r"^>\s*<" + key + r">[^\n]*\n([^\n]*)", record, re.M)
    return match.group(1).strip() if match else None


def test_dlpno_energies_are_relative_to_each_molecules_minimum():
    energies = defaultdict(list)
    for record in _records():
        value = _prop(record, "dlpno_ccsdt_rel_kcal")
        if value is not None:
            energies[_prop(record, "molecule")].append(float(value))
    assert len(energies) > 600
    for name, values in energies.items():
        assert min(values) == 0.0, name
        assert max(values) < 100.0, (name, max(values))  # kcal/mol: conformer energy range


def test_fix_script_is_idempotent_on_the_shipped_file():
    from tests.scripts_import import load_script

    fix = load_script("fix_hutchison_energies")
    data = gzip.open(HUTCHISON / "hutchison_conformers.sdf.gz", "rb").read()
    assert fix.relative_energies(data) == data
    # a raw (offset) file is made relative, touching only the value lines
    offset = re.sub(rb"(<dlpno_ccsdt_rel_kcal>[^\n]*\n)0\.0000\n", rb"\g<1>1484.2780\n", data)
    assert offset != data
    assert fix.relative_energies(offset).count(b"\n0.0000\n") == data.count(b"\n0.0000\n")


def test_readme_does_not_say_the_smiles_have_no_stereo():
    smiles = {_prop(r, "smiles") for r in _records()}
    with_marks = sum("@" in s for s in smiles)
    readme = " ".join((HUTCHISON / "README.md").read_text().split())
    assert with_marks > 0 and "no stereo marks" not in readme
    assert f"{with_marks} of the {len(smiles)} carry tetrahedral stereo marks" in readme, readme
