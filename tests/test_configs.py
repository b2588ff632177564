"""Every config file instantiates (config, network, LightningModule, Trainer); overrides work."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformer.config import load_config
from conformer.errors import UserInputError

ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted(p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*.yaml"))
BENCHMARK_ROWS = ["tiny", "drugs_recm", "drugs_equivariant", "drugs_unconstrained",
                  "drugs_scheduled", "drugs_ace"]


def test_one_config_per_benchmark_row():
    names = {p.stem for p in CONFIG_FILES if p.parent.name == "experiment"}
    assert set(BENCHMARK_ROWS) <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=str)
def test_config_file_instantiates(path, tmp_path):
    """Config, LightningModule and Trainer of every file (the network at the tiny preset so
    this stays fast; the slow test below builds each real size)."""
    from conformer.train.run import build_module, build_trainer

    config = load_config(ROOT / path, [f"logging.run_dir={tmp_path}", "logging.wandb=false"])
    assert config.model.preset in ("tiny", "small", "base")
    small = load_config(ROOT / path, [f"logging.run_dir={tmp_path}", "logging.wandb=false",
                                      "model.preset=tiny"])
    module = build_module(small)
    assert module.net.recm.mode == config.model.mode
    if path.parent.name != "slurm":  # the SLURM example asks for GPUs this machine lacks
        build_trainer(config, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIG_FILES, ids=str)
def test_config_file_builds_its_real_network(path):
    from conformer.train.run import build_module

    module = build_module(load_config(ROOT / path, ["logging.wandb=false"]))
    assert sum(p.numel() for p in module.net.parameters()) > 0


def test_drugs_rows_differ_only_in_mode():
    configs = {row: load_config(ROOT / f"configs/experiment/{row}.yaml").to_dict()
               for row in BENCHMARK_ROWS[1:]}
    for config in configs.values():
        config.pop("name")
        config["model"].pop("mode")
    first = next(iter(configs.values()))
    assert all(config == first for config in configs.values())


def test_dotted_overrides_are_typed_and_validated():
    config = load_config(ROOT / "configs/experiment/tiny.yaml",
                         ["optim.lr=3e-4", "trainer.devices=2", "model.overrides.num_layers=3",
                          "data.max_molecules=5"])
    assert config.optim.lr == 3e-4 and config.trainer.devices == 2
    assert config.model.overrides == {"num_layers": 3} and config.data.max_molecules == 5
    with pytest.raises(UserInputError, match="unknown key.*lrr"):
        load_config(ROOT / "configs/experiment/tiny.yaml", ["optim.lrr=1"])
    with pytest.raises(UserInputError, match="expected int"):
        load_config(ROOT / "configs/experiment/tiny.yaml", ["trainer.max_steps=many"])
    with pytest.raises(UserInputError, match="key.sub=value"):
        load_config(ROOT / "configs/experiment/tiny.yaml", ["optim.lr"])
    with pytest.raises(UserInputError, match="no such file"):
        load_config(ROOT / "configs/experiment/nope.yaml")


def test_unknown_model_setting_is_a_clear_error():
    from conformer.train.run import build_module

    config = load_config(ROOT / "configs/experiment/tiny.yaml", ["model.overrides.layerz=3"])
    with pytest.raises(UserInputError, match="layerz"):
        build_module(config)


def _train_help() -> str:
    import argparse

    from conformer import cli

    subparsers = next(a for a in cli.build_parser("train")._actions
                      if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["train"].format_help()


def test_train_help_shows_every_option_default_and_every_config_key_default():
    import dataclasses

    from conformer.cli_settings import default_text, option_fields
    from conformer.config import ExperimentConfig, TrainCommandSettings

    text = " ".join(_train_help().split())  # argparse wraps lines
    for field in option_fields(TrainCommandSettings):
        flag = "--" + field.name.replace("_", "-")
        assert flag in text, flag
        if field.name != "config":
            assert f"(default: {default_text(field)})" in text, field.name
    assert "(required)" in text  # --config
    defaults = ExperimentConfig()
    for section in dataclasses.fields(ExperimentConfig):
        value = getattr(defaults, section.name)
        if not dataclasses.is_dataclass(value):
            assert f"{section.name} = {value}" in text
            continue
        for field in dataclasses.fields(value):
            shown = getattr(value, field.name)
            shown = "null" if shown is None else "{}" if shown == {} else shown
            assert f"{section.name}.{field.name} = {shown}" in text, field.name


def test_train_print_config_takes_the_file_and_dotted_overrides(capsys):
    import json

    from conformer import cli

    code = cli.main(["train", "--config", str(ROOT / "configs/experiment/tiny.yaml"),
                     "--print-config", "optim.lr=3e-4", "trainer.max_steps=7"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["optim"]["lr"] == 3e-4 and printed["trainer"]["max_steps"] == 7
    assert printed["model"]["preset"] == load_config(
        ROOT / "configs/experiment/tiny.yaml").model.preset
    assert cli.main(["train", "--config", str(ROOT / "configs/experiment/tiny.yaml"),
                     "--print-config", "optim.lrr=1"]) == 2
    assert "unknown key(s) lrr" in capsys.readouterr().err
