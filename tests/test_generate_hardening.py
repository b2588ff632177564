"""`conformer generate` under hostile but realistic use (issue 14): torn files, odd CSVs, bad
paths, out-of-domain chemistry, changed settings, and docking-ready output."""

from __future__ import annotations

import csv

import numpy as np
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


# -- item 2: names with line breaks ---------------------------------------------------------
def test_a_csv_name_with_a_newline_gives_readable_records_and_no_reappend(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('smiles,name\nCCO,"eth\nanol"\nCCN,"a\x0bb\r\n\tc"\n')
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


# -- item 6: binary input, SDF given as SMILES, SDF input on purpose ------------------------
@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"CCO \xff\xfe name\n",
                                     b"\x1f\x8b\x08\x00\x00\x00"])
def test_a_binary_input_is_one_clear_error_and_writes_nothing(tmp_path, capsys, content):
    path = tmp_path / "in.smi"
    path.write_bytes(content)
    out = tmp_path / "out.sdf"
    assert _etkdg(path, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "in.smi" in err and "not a text file" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.smi"]


def _sdf_text(smiles_and_names, embed=True):
    from rdkit.Chem import AllChem

    blocks = []
    for smiles, name in smiles_and_names:
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        if embed:
            AllChem.EmbedMolecule(mol, randomSeed=7)
        mol.SetProp("_Name", name)
        blocks.append(Chem.MolToMolBlock(mol) + "$$$$\n")
    return "".join(blocks)


@pytest.mark.parametrize("suffix", [".smi", ".csv"])
def test_an_sdf_given_as_smiles_is_one_clear_error(tmp_path, capsys, suffix):
    path = tmp_path / f"in{suffix}"
    path.write_text(("smiles\n" if suffix == ".csv" else "") + _sdf_text([("CCO", "x")]))
    assert _etkdg(path, tmp_path / "out.sdf") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SDF/MOL" in err and f"in{suffix}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"in{suffix}"]


@pytest.mark.parametrize("suffix", [".sdf", ".sdf.gz"])
def test_sdf_input_gives_one_molecule_per_record_with_its_name_and_stereo(tmp_path, suffix):
    import gzip

    text = _sdf_text([("C[C@H](N)C(=O)O", "L-alanine"), ("C[C@@H](N)C(=O)O", "D-alanine")])
    text += "garbage\nnot a record\n$$$$\n"
    path = tmp_path / f"in{suffix}"
    if suffix.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    out = tmp_path / "out.sdf"
    assert _etkdg(path, out) == 0
    groups = read_conformer_groups(out)
    assert sorted(groups) == ["D-alanine", "L-alanine"]
    for name, smiles in (("L-alanine", "C[C@H](N)C(=O)O"), ("D-alanine", "C[C@@H](N)C(=O)O")):
        for record in groups[name]:
            record = Chem.Mol(record)
            Chem.AssignStereochemistryFrom3D(record)
            assert Chem.MolToSmiles(Chem.RemoveHs(record)) == Chem.CanonSmiles(smiles)
    rows = _failures(tmp_path / "out.failures.csv")
    assert [row["line"] for row in rows] == ["3"] and "cannot read" in rows[0]["reason"]


# -- item 7: bad output paths and devices ---------------------------------------------------
def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def small_smi(tmp_path):
    path = tmp_path / "in" / "in.smi"
    path.parent.mkdir()
    path.write_text("CCO a\n")
    return path


def test_an_output_path_that_is_a_directory_is_one_clear_error(tmp_path, small_smi, capsys):
    out = tmp_path / "out.sdf"
    out.mkdir()
    assert _etkdg(small_smi, out) == 2
    _one_line_error(capsys, str(out), "is a directory")
    assert list(out.iterdir()) == []


def test_an_output_parent_that_is_a_file_is_one_clear_error(tmp_path, small_smi, capsys):
    (tmp_path / "file").write_text("x")
    assert _etkdg(small_smi, tmp_path / "file" / "sub" / "out.sdf") == 2
    _one_line_error(capsys, str(tmp_path / "file"), "is a file")


def test_a_read_only_output_directory_is_one_clear_error(tmp_path, small_smi, capsys,
                                                         monkeypatch):
    import os

    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the check see what a user would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False
                            if str(p).startswith(str(directory)) else real_access(p, mode, **kw))
    try:
        assert _etkdg(small_smi, directory / "out.sdf") == 2
        _one_line_error(capsys, str(directory), "not writable")
        assert list(directory.iterdir()) == []
    finally:
        directory.chmod(0o755)


def test_a_missing_device_is_one_clear_error_and_leaves_no_file(tmp_path, small_smi, capsys):
    out = tmp_path / "out.sdf"
    assert cli.main(["generate", str(small_smi), "--out", str(out), "--device", "cuda:99",
                     "--num-confs", "1", "--no-progress"]) == 2
    _one_line_error(capsys, "--device cuda:99")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_run_without_failures_leaves_no_failures_file(tmp_path, small_smi):
    assert _etkdg(small_smi, tmp_path / "out.sdf") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out.sdf", "out.settings.json"]


# -- item 8: settings kept beside the output, compared on resume ----------------------------
def test_a_rerun_with_other_settings_stops_unless_overwrite(tmp_path, small_smi, capsys):
    import json

    out = tmp_path / "out.sdf"
    assert _etkdg(small_smi, out) == 0
    stored = json.loads((tmp_path / "out.settings.json").read_text())
    assert stored["method"] == "etkdg" and stored["num_confs"] == 2 and stored["seed"] == 0
    before = out.read_bytes()
    assert _etkdg(small_smi, out) == 0  # same settings: resumed (nothing left to do)
    assert out.read_bytes() == before
    capsys.readouterr()
    for changed in (["--num-confs", "3"], ["--method", "etkdg-mmff"], ["--seed", "1"]):
        argv = ["generate", str(small_smi), "--out", str(out), "--method", "etkdg",
                "--num-confs", "2", "--no-progress", *changed]
        assert cli.main(argv) == 2
        err = _one_line_error(capsys, str(out), "other settings", "--overwrite")
        assert changed[0].lstrip("-").replace("-", "_") in err
        assert out.read_bytes() == before
    assert cli.main(["generate", str(small_smi), "--out", str(out), "--method", "etkdg",
                     "--num-confs", "3", "--no-progress", "--overwrite"]) == 0
    assert len(read_conformer_groups(out)["a"]) == 3
    assert json.loads((tmp_path / "out.settings.json").read_text())["num_confs"] == 3


def test_the_model_file_hash_is_part_of_the_settings(tmp_path):
    from conformer.generation import GenerateOptions
    from conformer.generation.runner import run_settings

    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    first.write_bytes(b"one")
    second.write_bytes(b"two")
    a = run_settings(GenerateOptions(ckpt=str(first)))
    b = run_settings(GenerateOptions(ckpt=str(second)))
    assert a["model_sha256"] != b["model_sha256"] and len(a["model_sha256"]) == 64
    assert {k: v for k, v in a.items() if k != "model_sha256"} == \
        {k: v for k, v in b.items() if k != "model_sha256"}


# -- item 5: the model's domain, and conformers with impossible bonds -----------------------
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained tiny equivariant denoiser as a model file (plumbing, not quality)."""
    import torch

    from conformer.diffusion import EDMSettings
    from conformer.model_io import save_model
    from conformer.nn import build_denoiser

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_model(build_denoiser("tiny", "equivariant"),
               {"preset": "tiny", "mode": "equivariant", "overrides": {}},
               vars(EDMSettings(sample_steps=3)), path)
    return path


OUT_OF_DOMAIN = {
    "C[Hg]Cl": "unsupported element Hg",
    "[H][H]": "no heavy atom",
    "FS(F)(F)(F)(F)F": "unsupported valence: S with 6 neighbours",
    "CC[Pt](Cl)(Cl)N": "unsupported element Pt",
    "C[C-](C)C": "unsupported formal charge -1 on C",
    "C[Fe]C": "unsupported element Fe",
}


def test_out_of_domain_molecules_go_to_the_failures_file_with_their_reason(tmp_path,
                                                                          model_file):
    import torch

    torch.set_num_threads(1)
    smi = tmp_path / "in.smi"
    smi.write_text("".join(f"{s} m{i}\n" for i, s in enumerate(OUT_OF_DOMAIN)) + "CCO ok\n")
    out = tmp_path / "out.sdf"
    assert cli.main(["generate", str(smi), "--out", str(out), "--ckpt", str(model_file),
                     "--num-confs", "2", "--no-progress", "--no-bond-check"]) == 0
    rows = _failures(tmp_path / "out.failures.csv")
    assert [row["input"].split()[0] for row in rows] == list(OUT_OF_DOMAIN)
    for row, reason in zip(rows, OUT_OF_DOMAIN.values(), strict=True):
        assert reason in row["reason"], row
    assert list(read_conformer_groups(out)) == ["ok"]


def test_the_api_applies_the_same_domain(model_file):
    import conformer

    mols = conformer.generate(["C[Hg]Cl", "CCO"], num_confs=1, model=str(model_file),
                              device="cpu", bond_check=False)  # untrained: raw samples
    assert mols[0].GetNumConformers() == 0
    assert "unsupported element Hg" in mols[0].GetProp("failure_reason")
    assert mols[1].GetNumConformers() == 1


def test_implausible_bond_lengths_are_found():
    from conformer.generation.domain import implausible_bonds

    hydrogen = Chem.AddHs(Chem.MolFromSmiles("[H][H]"))
    assert implausible_bonds(hydrogen, [[[0, 0, 0], [0.02, 0, 0]]]).tolist() == [True]
    assert implausible_bonds(hydrogen, [[[0, 0, 0], [0.74, 0, 0]]]).tolist() == [False]
    chloro = Chem.MolFromSmiles("CCl")  # C-Cl 1.78 A; radii sum 1.78
    positions = [[[0, 0, 0], [1.78, 0, 0]], [[0, 0, 0], [2.9, 0, 0]], [[0, 0, 0], [1.0, 0, 0]]]
    assert implausible_bonds(chloro, positions).tolist() == [False, True, True]


def test_conformers_with_implausible_bonds_are_counted_and_never_written(tmp_path,
                                                                         monkeypatch, capsys):
    import numpy as np

    from conformer.generation import ensemble

    real = ensemble.rdkit_conformers

    def one_broken(mol, count, method, seed):
        positions = real(mol, count, method, seed)
        positions[0, 1] = positions[0, 0] + 0.05  # atom 1 on top of atom 0 (bonded in CCO)
        return positions

    monkeypatch.setattr(ensemble, "rdkit_conformers", one_broken)
    smi = tmp_path / "in.smi"
    smi.write_text("CCO a\nC[H] b\n")
    out = tmp_path / "out.sdf"
    # one worker: the patched sampler lives in this process only
    assert cli.main(["generate", str(smi), "--out", str(out), "--method", "etkdg",
                     "--num-confs", "3", "--no-progress", "--summary", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    groups = read_conformer_groups(out)
    assert len(groups["a"]) == 2 and groups["a"][0].GetProp("n_conformers") == "2"
    for record in groups["a"] + groups.get("b", []):
        xyz = record.GetConformer().GetPositions()
        assert np.linalg.norm(xyz[1] - xyz[0]) > 1.0
    assert "rejected for implausible bond lengths" in text


# -- item 11: docking-ready output ----------------------------------------------------------
def _rdkit_rmsd(mol, i, j, heavy):
    from rdkit.Chem import rdMolAlign

    probe = Chem.Mol(mol)
    return rdMolAlign.AlignMol(probe, mol, prbCid=i, refCid=j,
                               atomMap=[(a, a) for a in heavy])


def test_output_is_kekulized_and_aligned_to_the_first_conformer(tmp_path):
    smi = tmp_path / "in.smi"
    smi.write_text("c1ccccc1CCO phenethyl\n")
    out = tmp_path / "out.sdf"
    assert cli.main(["generate", str(smi), "--out", str(out), "--method", "etkdg",
                     "--num-confs", "4", "--no-progress"]) == 0
    bond_types = set()
    for block in out.read_text().split("$$$$\n")[:-1]:
        lines = block.splitlines()
        atoms, bonds = int(lines[3][:3]), int(lines[3][3:6])  # V2000 counts line
        bond_types |= {int(line[6:9]) for line in lines[4 + atoms: 4 + atoms + bonds]}
    assert bond_types == {1, 2}  # Kekule: no type 4 (aromatic)
    records = read_conformer_groups(out)["phenethyl"]
    assert any(b.GetBondType() == Chem.BondType.AROMATIC for b in records[0].GetBonds())
    first = records[0]
    heavy = [a.GetIdx() for a in first.GetAtoms() if a.GetAtomicNum() > 1]
    import numpy as np

    for record in records[1:]:
        moved = np.sqrt(((record.GetConformer().GetPositions()[heavy]
                          - first.GetConformer().GetPositions()[heavy]) ** 2).sum(1).mean())
        joint = Chem.Mol(first)
        joint.AddConformer(record.GetConformer(), assignId=True)
        # already superposed: the in-place RMSD is the best-fit RMSD
        assert moved == pytest.approx(_rdkit_rmsd(joint, 1, 0, heavy), abs=2e-3)


def test_mmff_energies_sort_the_conformers_and_prune_rms_follows_rdkit(tmp_path):
    import numpy as np

    smi = tmp_path / "in.smi"
    smi.write_text("CCCCCCO hexanol\n")
    out = tmp_path / "out.sdf"
    assert cli.main(["generate", str(smi), "--out", str(out), "--method", "etkdg",
                     "--num-confs", "12", "--no-progress", "--energies", "mmff",
                     "--prune-rms", "0.5"]) == 0
    records = read_conformer_groups(out)["hexanol"]
    energies = [float(r.GetProp("mmff94_energy")) for r in records]
    assert energies == sorted(energies)
    assert float(records[0].GetProp("mmff94_relative_energy")) == 0.0
    pruned = int(records[0].GetProp("pruned_conformers"))
    assert len(records) + pruned == 12 and pruned > 0
    heavy = [a.GetIdx() for a in records[0].GetAtoms() if a.GetAtomicNum() > 1]
    joint = Chem.Mol(records[0])
    for record in records[1:]:
        joint.AddConformer(record.GetConformer(), assignId=True)
    for i in range(len(records)):
        for j in range(i):
            assert _rdkit_rmsd(joint, i, j, heavy) >= 0.5 - 1e-3
    # recomputed MMFF94 energies agree with the written ones
    from rdkit.Chem import AllChem

    props = AllChem.MMFFGetMoleculeProperties(records[0])
    again = [AllChem.MMFFGetMoleculeForceField(r, props).CalcEnergy() for r in records]
    assert np.allclose(again, energies, atol=0.05)


def test_prune_by_rms_keeps_the_first_of_each_cluster():
    import numpy as np

    from conformer.generation.output import prune_by_rms

    base = np.array([[0.0, 0, 0], [1.5, 0, 0], [1.5, 1.5, 0], [0, 1.5, 0.5]])
    rotation = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=float)
    near = base + 0.05
    far = base.copy()
    far[3] += [0, 0, 3.0]
    positions = np.stack([base, base @ rotation.T + 4.0, near, far, far + 0.01])
    assert prune_by_rms(positions, 0.5) == [0, 3]


def test_the_api_gives_energies_pruning_and_aligned_conformers():
    import conformer

    (mol,) = conformer.generate(["CCCCCCO"], method="etkdg", num_confs=8, seed=1,
                                energies="mmff", prune_rms=0.5)
    energies = [c.GetDoubleProp("mmff94_energy") for c in mol.GetConformers()]
    assert energies == sorted(energies) and len(energies) + mol.GetIntProp(
        "pruned_conformers") == 8


def test_bad_energy_and_prune_settings_are_one_clear_error(tmp_path, small_smi, capsys):
    assert _etkdg(small_smi, tmp_path / "o.sdf", "--prune-rms", "0") == 2
    _one_line_error(capsys, "--prune-rms 0")
    with pytest.raises(SystemExit) as exit_info:  # argparse's own choices check
        _etkdg(small_smi, tmp_path / "o.sdf", "--energies", "uff")
    assert exit_info.value.code == 2 and "--energies" in capsys.readouterr().err


# -- item 11: PoseBusters as an optional check ----------------------------------------------
def _posebusters_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("posebusters") is not None


def _generated_and_references(tmp_path):
    smi = tmp_path / "in.smi"
    smi.write_text("CCO a\nCCN b\n")
    generated, references = tmp_path / "gen.sdf", tmp_path / "ref.sdf"
    assert _etkdg(smi, generated) == 0
    assert _etkdg(smi, references, "--seed", "3") == 0
    return generated, references


@pytest.mark.skipif(_posebusters_importable(), reason="posebusters is installed")
def test_evaluate_posebusters_without_the_package_is_one_clear_line(tmp_path, capsys):
    generated, references = _generated_and_references(tmp_path)
    capsys.readouterr()
    assert cli.main(["evaluate", "--generated", str(generated), "--references",
                     str(references), "--out", str(tmp_path / "eval"), "--posebusters",
                     "--no-progress"]) == 2
    _one_line_error(capsys, "--posebusters", "not installed", "conformer[posebusters]")
    assert not (tmp_path / "eval").exists()


@pytest.mark.skipif(not _posebusters_importable(), reason="posebusters is not installed")
def test_evaluate_posebusters_writes_its_table(tmp_path, capsys):
    generated, references = _generated_and_references(tmp_path)
    assert cli.main(["evaluate", "--generated", str(generated), "--references",
                     str(references), "--out", str(tmp_path / "eval"), "--posebusters",
                     "--no-progress"]) == 0
    assert "PoseBusters: 4 conformers" in capsys.readouterr().out
    assert (tmp_path / "eval" / "posebusters.csv").exists()


def test_conformers_rejected_for_bond_lengths_are_replaced_by_resamples():
    """A conformer with implausible bonds is never written; a fresh sample takes its place, so
    the molecule still gets the count asked for, and the rejection is counted."""
    from rdkit.Chem import AllChem

    from conformer.generation.ensemble import MoleculeGenerator
    from conformer.generation.inputs import lines_from_molecules, prepare_molecule
    from conformer.generation.options import GenerateOptions

    line = lines_from_molecules(["CCO"])[0]
    generator = MoleculeGenerator(GenerateOptions(method="etkdg", device="cpu", num_confs=3))
    mol = prepare_molecule(line, 400)
    embedded = Chem.Mol(mol)
    AllChem.EmbedMultipleConfs(embedded, numConfs=6, randomSeed=11)
    good = np.stack([c.GetPositions() for c in embedded.GetConformers()])
    good -= good.mean(axis=1, keepdims=True)
    first = good[:3].copy()
    first[1] *= 3.0  # every bond three times too long
    calls = []

    def resample(count):
        calls.append(count)
        return good[3:3 + count]

    result = generator._finish(line, mol, first, resample)
    assert result.failure is None
    assert result.rejected == 1 and calls == [1]
    written = result.as_mol()
    assert written.GetNumConformers() == 3
    def distances(x):  # the written conformers are aligned to the first: compare shapes
        return np.linalg.norm(x[:, None] - x[None], axis=-1)

    np.testing.assert_allclose(distances(written.GetConformer(1).GetPositions()),
                               distances(good[3]), atol=1e-6)

    no_resampling = generator._finish(line, mol, first, None)
    assert no_resampling.rejected == 1 and no_resampling.as_mol().GetNumConformers() == 2
