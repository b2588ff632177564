"""scripts/gpu_check.sh --dry-run: the GPU machine's script runs end to end on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_report(tmp_path: Path):
    out = tmp_path / "report"
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(out), "--python",
         sys.executable, "--train-minutes", "0.15", "--bench-seconds", "0.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["dry_run"] is True and summary["gpu_tests_exit_code"] == 0
    rates = summary["throughput_fp32"]["rates"]
    assert set(rates) == {"shipped", "plain_uvu"}
    assert all(r["train_molecules_per_s"] > 0 and r["sample_conformers_per_s"] > 0
               for r in rates.values())
    assert summary["training"]["last_step"] > 0 and summary["training"]["val_losses"]
    report = (out / "gpu.md").read_text()
    assert "dry run on the CPU" in report and "| shipped |" in report
    assert "3 passed" in (out / "gpu_tests.log").read_text()


def test_gpu_check_refuses_a_real_run_without_cuda(tmp_path: Path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--out", str(tmp_path),
                             "--python", sys.executable],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
    assert not (tmp_path / "gpu.md").exists()


def test_gpu_check_rejects_unknown_options():
    result = subprocess.run(["bash", "scripts/gpu_check.sh", "--bogus"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown option --bogus" in result.stderr
