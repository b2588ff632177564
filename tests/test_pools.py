"""The process pools of ``generate --method etkdg`` (conformer.parallel.parallel_map): two
workers write what one writes, in input order."""

from __future__ import annotations

import numpy as np

from conformer.generation import GenerateOptions, generate_file
from conformer.sdf_io import read_conformer_groups


def test_etkdg_generation_with_two_workers_matches_one_in_order(tmp_path):
    smiles = tmp_path / "in.smi"
    smiles.write_text("CCO ethanol\nc1ccccc1O phenol\nC[C@H](N)C(=O)O alanine\nnot_a_smiles bad\n")
    groups = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}.sdf"
        generate_file(smiles, out, GenerateOptions(method="etkdg", num_confs=2, seed=3,
                                                   workers=workers, progress=False))
        groups[workers] = read_conformer_groups(out)
    assert list(groups[1]) == list(groups[2]) == ["ethanol", "phenol", "alanine"]
    for name, mols in groups[1].items():
        assert len(mols) == len(groups[2][name]) == 2
        for one, two in zip(mols, groups[2][name], strict=True):
            assert np.array_equal(one.GetConformer().GetPositions(),
                                  two.GetConformer().GetPositions())
