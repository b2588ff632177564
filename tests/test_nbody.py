"""The N-body property run: data symmetry, network symmetry, and the CLI end to end."""

import dataclasses
import json

import pytest
import torch

from conformer import cli
from conformer.experiments import nbody
from conformer.recm import RECMConfig
from conformer.recm.haar import random_orthogonal
from tests.equivariance import single_thread

one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)

PRESET = nbody.PRESETS["tiny"]


def systems(count=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return nbody.simulate(count, 0.0, PRESET, generator)[:3]


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_targets_are_equivariant_only_without_a_field(eps):
    pos, vel, charge = systems()
    rotation = -random_orthogonal(torch.Generator().manual_seed(3))  # a reflection
    shift = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    plain = nbody.integrate(pos, vel, charge, eps, PRESET)
    moved = nbody.integrate(pos @ rotation.T + shift, vel @ rotation.T, charge, eps, PRESET)
    error = float((moved - plain @ rotation.T).abs().max())
    if eps == 0:
        assert error < 1e-10
    else:
        assert error > 1e-2


def test_equivariant_nbody_net_is_equivariant_and_unconstrained_is_not():
    pos, vel, charge = systems()
    torch.manual_seed(0)
    equivariant = nbody.NBodyNet(PRESET, RECMConfig(mode="equivariant"))
    assert nbody.equivariance_error(equivariant, pos, vel, charge) < 1e-12
    unconstrained = nbody.NBodyNet(PRESET, RECMConfig(mode="unconstrained"))
    assert nbody.equivariance_error(unconstrained, pos, vel, charge) > 1e-4


def test_reproduce_nbody_writes_results_table_plot_and_resumes(tmp_path, capsys, monkeypatch):
    # the real entry point on a smaller data set, so the test takes seconds
    small_data = dataclasses.replace(PRESET, num_train=200, num_test=50, integration_steps=10)
    monkeypatch.setitem(nbody.PRESETS, "tiny", small_data)
    out = tmp_path / "nbody"
    argv = ["reproduce", "nbody", "--out", str(out), "--seeds", "1", "--eps", "0,0.5",
            "--modes", "equivariant,recm", "--steps", "3"]
    assert cli.main(argv) == 0
    payload = json.loads((out / "results.json").read_text())
    assert len(payload["runs"]) == 4
    for run in payload["runs"]:
        assert set(run) >= {"mode", "eps", "seed", "test_mse", "gamma_final",
                            "export_equivariance_error"}
        assert len(run["gamma_final"]) == PRESET.num_layers + 1
        # the export's gamma: 0 for a dropped branch, never negative
        assert len(run["gamma_export"]) == len(run["gamma_final"])
        for gamma, dropped in zip(run["gamma_export"], run["dropped"], strict=True):
            assert gamma >= 0 and (gamma == 0 or not dropped)
        if run["mode"] == "equivariant":
            assert not any(run["gamma_export"] + run["reflection_gamma_export"])
    equivariant = [r for r in payload["runs"] if r["mode"] == "equivariant"]
    assert all(r["export_equivariance_error"] < 1e-12 for r in equivariant)
    assert "environment" in payload and "settings" in payload
    assert "| recm |" in (out / "table.md").read_text()
    assert (out / "gamma.png").stat().st_size > 0
    # rerunning the same command finds every run done and trains nothing
    stamp = (out / "results.json").read_text()
    assert cli.main(argv) == 0
    assert json.loads((out / "results.json").read_text())["runs"] == json.loads(stamp)["runs"]


@pytest.mark.parametrize("option, value", [("--eps", "0,abc"), ("--modes", "recm,magic"),
                                           ("--preset", "huge"), ("--seeds", "0")])
def test_reproduce_nbody_rejects_bad_options(tmp_path, capsys, option, value):
    argv = ["reproduce", "nbody", "--out", str(tmp_path), option, value]
    assert cli.main(argv) == 2
    assert option in capsys.readouterr().err
