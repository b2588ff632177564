"""Train, generate and evaluate on an accelerator (tests marked ``gpu``).

The device comes from ``CONFORMER_TEST_DEVICE`` (default ``cuda``); without that device the
tests skip. ``scripts/gpu_check.sh`` runs them on a GPU, and its ``--dry-run`` (run by the test
suite) runs them with ``CONFORMER_TEST_DEVICE=cpu``, so the same code is exercised everywhere.
On CUDA, training uses bf16 mixed precision, as the GPU recipe does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from rdkit import Chem

from conformer import cli

pytestmark = pytest.mark.gpu

FIXTURE = Path(__file__).parent / "fixtures" / "geom_mini"
DEVICE = os.environ.get("CONFORMER_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE.startswith("cuda")
if ON_CUDA and not torch.cuda.is_available():
    pytest.skip(f"CONFORMER_TEST_DEVICE={DEVICE}: CUDA is not available",
                allow_module_level=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A few training steps of the tiny config on DEVICE (mixed precision on CUDA)."""
    root = tmp_path_factory.mktemp("gpu_train")
    cache = root / "cache"
    assert cli.main(["prepare", str(FIXTURE), "--split", str(FIXTURE / "split.npy"),
                     "--out", str(cache), "--no-progress"]) == 0
    precision = "bf16-mixed" if ON_CUDA else "32-true"
    accelerator = "gpu" if ON_CUDA else "cpu"
    assert cli.main(["train", "--config", "configs/experiment/tiny.yaml",
                     f"data.cache_dir={cache}", f"logging.run_dir={root / 'runs'}",
                     f"trainer.accelerator={accelerator}", "trainer.devices=1",
                     f"trainer.precision={precision}", "trainer.max_steps=3"]) == 0
    return root / "runs" / "tiny"


def test_training_steps_on_the_device(trained_run: Path):
    checkpoint = trained_run / "checkpoints" / "last.ckpt"
    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert data["global_step"] == 3
    weights = [v for k, v in data["state_dict"].items() if v.is_floating_point()]
    assert weights and all(torch.isfinite(w).all() for w in weights)


def _generate(tmp_path: Path, extra: list[str]) -> Path:
    smiles = tmp_path / "in.smi"
    smiles.write_text("CC(=O)Nc1ccc(O)cc1 paracetamol\nC[C@H](N)C(=O)O alanine\n")
    out = tmp_path / "out.sdf"
    assert cli.main(["generate", str(smiles), "--out", str(out), "--num-confs", "3",
                     "--device", DEVICE, "--seed", "1", *extra]) == 0
    return out


def test_generate_with_the_bundled_model_on_the_device(tmp_path: Path):
    out = _generate(tmp_path, [])
    mols = [m for m in Chem.SDMolSupplier(str(out), removeHs=False)]
    assert len(mols) == 6 and all(m is not None for m in mols)
    for mol in mols:
        positions = mol.GetConformer().GetPositions()
        assert torch.isfinite(torch.as_tensor(positions)).all()


def test_generate_and_evaluate_a_trained_checkpoint_on_the_device(trained_run, tmp_path):
    """The checkpoint trained on DEVICE generates on DEVICE, and the evaluator scores it
    against the fixture's reference conformers (GEOM layout)."""
    summary = json.loads((FIXTURE / "summary_drugs.json").read_text())
    chosen = sorted(summary, key=len)[:2]
    smiles = tmp_path / "in.smi"
    smiles.write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(chosen)))
    generated = tmp_path / "gen.sdf"
    assert cli.main(["generate", str(smiles), "--out", str(generated), "--num-confs", "2",
                     "--device", DEVICE, "--seed", "1", "--ckpt",
                     str(trained_run / "checkpoints" / "last.ckpt"),
                     # three training steps: its samples are not chemistry, keep them anyway
                     "--no-bond-check"]) == 0
    test_csv = tmp_path / "test.csv"
    test_csv.write_text("smiles,n_conformers\n" + "".join(f"{s},1\n" for s in chosen))
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--generated", str(generated), "--references", str(FIXTURE),
                     "--test-csv", str(test_csv), "--out", str(out), "--no-progress",
                     "--validity-confs", "1"]) == 0
    document = json.loads((out / "results.json").read_text())
    metrics = document["metrics"]
    assert metrics["n_molecules"] == 2
    assert 0.0 <= metrics["cov_r_mean"] <= 1.0 and metrics["mat_r_mean"] > 0.0
