"""The recipe-ablation harness: arms files, configs, one tiny arm end to end, resume, table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conformer.errors import UserInputError
from conformer.experiments import ablation
from conformer.experiments.ablation import (
    AblationSettings,
    Arm,
    arm_config,
    read_arms,
    run_arm,
    select,
    table_markdown,
    write_table,
)

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "geom_mini"


def test_shipped_arms_resolve_to_configs_with_the_cpu_budget(tmp_path):
    from conformer.diffusion import FlowSettings

    arms = read_arms(ROOT / "scripts" / "recipe_ablation_arms.yaml")
    assert [a.name for a in arms][:2] == ["edm", "flow"]
    settings = AblationSettings(out=str(tmp_path), geom_dir="g", cache_dir="c",
                                budget_cpu_minutes=20)
    configs = {a.name: arm_config(a, settings) for a in arms}
    assert all(c.trainer.max_cpu_seconds == 1200.0 for c in configs.values())
    assert configs["edm"].diffusion.kind == "edm" and configs["edm"].data.cache_dir == "c"
    assert isinstance(configs["flow"].diffusion, FlowSettings)
    # same network in both arms: only the generative process differs
    assert configs["edm"].model == configs["flow"].model


@pytest.mark.parametrize("text,message", [
    ("arms: []", "non-empty list"),
    ("arms: [{name: a, config: x.yaml}]", "needs name, change and config"),
    ("arms: [{name: a, change: c, config: x, colour: red}]", "unknown key"),
    ("arms: [{name: a, change: c, config: x}, {name: a, change: d, config: y}]", "repeated"),
    ("arms: [{name: 'a b', change: c, config: x}]", "repeated or not"),
    ("arms: [{name: a, change: c, config: x, sampler_of: b}, {name: b, change: d, config: y}]",
     "names no arm above it"),
])
def test_bad_arms_files_are_one_clear_error(tmp_path, text, message):
    path = tmp_path / "arms.yaml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=message):
        read_arms(path)


def test_another_validation_set_needs_a_name_and_gets_its_own_folder(tmp_path):
    with pytest.raises(UserInputError, match="give it a validation_name"):
        AblationSettings(out=str(tmp_path), geom_dir="g", cache_dir="c", validation_dir="v")
    with pytest.raises(UserInputError, match="letters, digits"):
        AblationSettings(out=str(tmp_path), geom_dir="g", cache_dir="c", validation_name="a/b")
    default = AblationSettings(out=str(tmp_path), geom_dir="g", cache_dir="c")
    named = AblationSettings(out=str(tmp_path), geom_dir="g", cache_dir="c",
                             validation_dir="v", validation_name="druglike")
    assert default.score_dir == tmp_path
    assert named.score_dir == tmp_path / "scored" / "druglike"
    # the training (run folder) is the same for both: one training, scored on both sets
    arm = Arm("a", "x", str(ROOT / "configs/experiment/tiny.yaml"))
    assert arm_config(arm, default).run_path == arm_config(arm, named).run_path


def test_select_names_unknown_arms():
    arms = [Arm("a", "x", "c.yaml"), Arm("b", "y", "c.yaml")]
    assert [a.name for a in select(arms, "b")] == ["b"] and select(arms, None) == arms
    with pytest.raises(UserInputError, match="no arm named z"):
        select(arms, "a,z")


def test_table_has_one_row_per_arm_with_every_column():
    row = {"arm": "flow", "change": "harmonic prior", "budget_cpu_minutes": 20,
           "training": {"global_step": 4000, "wall_seconds_last_sitting": 1500.0,
                        "cpu_seconds": 1203.0,
                        "val_loss": 0.5, "sampling_evaluations": 20},
           "metrics": {"cov_r_mean": 0.5, "cov_r_median": 0.4, "mat_r_mean": 0.9,
                       "mat_r_median": 0.8, "cov_p_mean": 0.3, "mat_p_mean": 1.1},
           "validity": {"bonds_ok_fraction_mean": 0.95}}
    text = table_markdown([row])
    lines = text.strip().splitlines()
    assert len(lines) == 3 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert "| flow | harmonic prior | 20 | 4000 | 20.1 | 25.0 | 0.5000 | 50.0 / 40.0 | 0.900 / 0.800 " \
           "| 30.0 | 1.100 | 95.0 | 20 |" in text


@pytest.mark.slow
def test_one_tiny_arm_trains_to_its_cpu_budget_is_scored_and_not_rerun(tmp_path, monkeypatch):
    import torch

    from conformer.data.prepare import prepare

    torch.set_num_threads(1)
    cache = tmp_path / "cache"
    prepare(FIXTURE, FIXTURE / "split.npy", cache, progress=False)
    arms_file = tmp_path / "arms.yaml"
    arms_file.write_text(
        f"arms:\n  - name: tinyflow\n    change: tiny flow\n"
        f"    config: {ROOT / 'configs/experiment/tiny.yaml'}\n"
        "    overrides: [trainer.max_steps=100000, diffusion.kind=flow, "
        "diffusion.sample_steps=2, data.max_molecules=0]\n"
        "  - name: tinyflow3\n    change: three steps\n    config: unused.yaml\n"
        "    sampler_of: tinyflow\n    sampler: {sample_steps: 3}\n")
    arms = read_arms(arms_file)
    settings = AblationSettings(out=str(tmp_path / "out"), geom_dir=str(FIXTURE),
                                cache_dir=str(cache), budget_cpu_minutes=0.03,
                                val_molecules=1)
    row = run_arm(arms[0], settings, arms)
    training = row["training"]
    assert 0 < training["global_step"] < 100000 and training["cpu_seconds"] >= 1.8
    assert training["diffusion_kind"] == "flow" and training["sampling_evaluations"] == 2
    assert row["metrics"]["n_molecules"] == 1 and "cov_r_mean" in row["metrics"]
    assert row["validity"]["n_conformers"] > 0
    saved = json.loads((tmp_path / "out" / "arms" / "tinyflow.json").read_text())
    assert saved["metrics"] == row["metrics"]
    # a finished arm is not trained or scored again
    monkeypatch.setattr(ablation, "train_arm", lambda *a: pytest.fail("retrained"))
    assert run_arm(arms[0], settings)["metrics"] == row["metrics"]
    # a sampler-only arm samples the trained arm's model with its own sampler, untrained
    # ... and reports the budget that model was trained under, not this invocation's
    later = dataclasses.replace(settings, budget_cpu_minutes=99.0)
    resampled = run_arm(arms[1], later, arms)
    assert resampled["budget_cpu_minutes"] == pytest.approx(0.03)
    assert resampled["training"]["sampling_evaluations"] == 3
    assert resampled["training"]["trained_by_arm"] == "tinyflow"
    assert resampled["training"]["global_step"] == training["global_step"]
    table = write_table(settings, arms).read_text()
    assert "| tinyflow | tiny flow |" in table and "| tinyflow3 | three steps |" in table
    # scored on another validation set: the trained model is reused, the row is its own
    monkeypatch.undo()
    monkeypatch.setattr("conformer.train.run.train", lambda *a, **k: pytest.fail("retrained"))
    other = dataclasses.replace(settings, validation_dir=str(FIXTURE), validation_name="other")
    rescored = run_arm(arms[0], other, arms)
    assert rescored["training"]["global_step"] == training["global_step"]
    scored = tmp_path / "out" / "scored" / "other"
    assert (scored / "arms" / "tinyflow.json").exists()
    assert (scored / "validation" / "molecules.csv").exists()
    assert (scored / "eval" / "tinyflow" / "results.json").exists()
    assert "| tinyflow | tiny flow |" in write_table(other, arms).read_text()
