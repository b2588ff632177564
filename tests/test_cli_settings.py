"""Options from settings dataclasses: one default each, shown in --help, foreign options refused."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

import conformer
from conformer import cli
from conformer.cli_settings import (
    add_settings_arguments,
    option_fields,
    pick_settings,
    settings_from_args,
)
from conformer.commands.build_geom import BuildCommandSettings
from conformer.commands.evaluate import EvaluateCommandSettings
from conformer.commands.generate import GenerateCommandSettings
from conformer.commands.prepare import PrepareCommandSettings
from conformer.data.build import DEFAULT_SPLIT_FRACTIONS, BuildSettings
from conformer.data.prepare import PrepareSettings
from conformer.diffusion.edm import EDMSettings
from conformer.errors import UserInputError
from conformer.evaluate.evaluator import EvaluationSettings
from conformer.evaluate.metrics import THRESHOLDS
from conformer.experiments.common import option
from conformer.experiments.drugs import DrugsSettings
from conformer.experiments.nbody import NBodySettings
from conformer.generation.options import DEFAULT_NUM_CONFS, GenerateOptions


@dataclasses.dataclass
class _Alpha:
    out: str = option(help="where")
    count: int = option(3, help="how many")
    ratio: float | None = option(None, help="scale", default_text="the preset's")
    verbose: bool = option(False, help="talk")
    keep: bool = option(True, flag="--no-keep", help="drop it")
    internal: str = "not an option"


@dataclasses.dataclass
class _Beta:
    out: str = option(help="where")
    count: int = option(5, help="how many")


def _parser(*classes, labels=()):
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, *classes, labels=labels)
    return parser


def test_missing_options_take_the_dataclass_defaults_and_types():
    parser = _parser(_Alpha)
    settings = settings_from_args(_Alpha, parser.parse_args(["--out", "x"]))
    assert settings == _Alpha(out="x")
    given = parser.parse_args(["--out", "x", "--count", "7", "--ratio", "0.5", "--verbose",
                               "--no-keep"])
    assert settings_from_args(_Alpha, given) == _Alpha(out="x", count=7, ratio=0.5,
                                                       verbose=True, keep=False)
    assert "internal" not in [f.name for f in option_fields(_Alpha)]


def test_help_shows_each_default_once_per_class():
    text = _parser(_Alpha, _Beta, labels=("alpha", "beta")).format_help()
    assert "(required)" in text
    assert "default: alpha: 3; beta: 5" in text
    assert "alpha only; default: the preset's" in text
    assert "--internal" not in text


def test_an_option_of_another_settings_class_is_refused():
    args = _parser(_Alpha, _Beta).parse_args(["--out", "x", "--verbose"])
    with pytest.raises(UserInputError, match="--verbose: not an option of beta run"):
        settings_from_args(_Beta, args, command="beta run")


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in cli.build_parser(verb)._actions
                      if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[verb]


def test_reproduce_help_shows_every_default():
    actions = {a.dest: a for a in _verb_parser("reproduce")._actions}
    for settings_class in (NBodySettings, DrugsSettings):
        for field in option_fields(settings_class):
            assert "default:" in actions[field.name].help or field.name == "out", field.name
    assert actions["out"].required
    assert "nbody: 2; drugs: the preset's: micro 1, tiny 2" in actions["seeds"].help
    assert f"default: {NBodySettings.eps}" in actions["eps"].help


def test_reproduce_refuses_another_targets_option(tmp_path, capsys):
    argv = ["reproduce", "drugs", "--out", str(tmp_path / "out"), "--eps", "0.1"]
    assert cli.main(argv) == 2
    assert "--eps: not an option of reproduce drugs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- positional, --x/--no-x, store-a-constant and parsed options --------------------------
def _pair(text: str) -> tuple[int, int]:
    first, second = text.split(",")
    return int(first), int(second)


@dataclasses.dataclass
class _Gamma:
    source: str = option(positional=True, help="what to read")
    guided: bool = option(True, negatable=True, help="steer")
    progress: bool | None = option(None, flag="--no-progress", const=False, help="no bar",
                                   default_text="a bar on a terminal")
    pair: tuple[int, int] = option((1, 2), parse=_pair, help="two numbers",
                                   default_text="1,2")


def test_positional_negatable_const_and_parsed_options():
    parser = _parser(_Gamma)
    assert settings_from_args(_Gamma, parser.parse_args(["in.txt"])) == _Gamma(source="in.txt")
    given = parser.parse_args(["in.txt", "--no-guided", "--no-progress", "--pair", "3,4"])
    assert settings_from_args(_Gamma, given) == _Gamma(source="in.txt", guided=False,
                                                       progress=False, pair=(3, 4))
    assert settings_from_args(_Gamma, parser.parse_args(["x", "--guided"])).guided is True
    text = " ".join(parser.format_help().split())
    assert "steer (default: on)" in text
    assert "no bar (default: a bar on a terminal)" in text
    assert "two numbers (default: 1,2)" in text
    assert "what to read" in text and "what to read (" not in text  # no "(required)"


def test_pick_settings_takes_only_its_own_fields():
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, _Gamma)
    add_settings_arguments(parser, _Beta)
    args = parser.parse_args(["in.txt", "--out", "o", "--no-guided"])
    assert pick_settings(_Gamma, args) == _Gamma(source="in.txt", guided=False)
    assert pick_settings(_Beta, args) == _Beta(out="o")


# -- the verbs built from settings dataclasses -------------------------------------------
def _verb_args(verb: str, argv: list[str]) -> argparse.Namespace:
    return cli.build_parser(verb).parse_args([verb, *argv])


def test_generate_options_left_out_are_generate_options_defaults():
    args = _verb_args("generate", ["in.smi", "--out", "out.sdf"])
    assert pick_settings(GenerateOptions, args) == GenerateOptions()
    command = pick_settings(GenerateCommandSettings, args)
    assert (command.input, command.out, command.overwrite, command.summary) == \
        ("in.smi", "out.sdf", False, False)


def test_generate_options_given_reach_generate_options():
    args = _verb_args("generate", [
        "in.smi", "--out", "o.sdf", "--method", "etkdg", "--ckpt", "m.pt", "--num-confs", "4",
        "--ratio", "1.5", "--steps", "7", "--batch-size", "8", "--device", "cpu", "--seed", "3",
        "--no-hydrogens", "--workers", "2", "--max-atoms", "50", "--max-resamples", "1",
        "--no-stereo-guidance", "--no-bond-check", "--relax-hydrogens", "--energies", "mmff",
        "--prune-rms", "0.2", "--no-progress", "--overwrite", "--summary",
        "--summary-json", "s.json"])
    assert pick_settings(GenerateOptions, args) == GenerateOptions(
        method="etkdg", ckpt="m.pt", num_confs=4, ratio=1.5, steps=7, batch_size=8,
        device="cpu", seed=3, hydrogens=False, workers=2, max_atoms=50, max_resamples=1,
        stereo_guidance=False, bond_check=False, relax_hydrogens=True, energies="mmff",
        prune_rms=0.2, progress=False)
    assert pick_settings(GenerateCommandSettings, args) == GenerateCommandSettings(
        input="in.smi", out="o.sdf", overwrite=True, summary=True, summary_json="s.json")


def test_generate_steps_help_names_the_model_files_sampler():
    """The default number of steps is the model file's, not a number in the help (it said 20
    while the bundled model used 10 plus 31 refinement steps)."""
    steps_help = " ".join(
        next(a for a in _verb_parser("generate")._actions if a.dest == "steps").help.split())
    assert "default: the model file's sampler" in steps_help
    sampler_fields = {f.name for f in dataclasses.fields(EDMSettings)}
    for named in ("sample_steps", "refine_steps"):  # the help names real sampler settings
        assert named in steps_help and named in sampler_fields
    assert not re.search(r"\b20\b", steps_help)


def test_api_keyword_defaults_are_generate_options_defaults():
    defaults = GenerateOptions()
    parameters = inspect.signature(conformer.generate).parameters
    shared = [name for name in parameters if name in {f.name for f in dataclasses.fields(
        GenerateOptions)} and name not in ("num_confs", "guidance")]
    assert len(shared) >= 12
    for name in shared:
        assert parameters[name].default == getattr(defaults, name), name
    assert parameters["num_confs"].default == DEFAULT_NUM_CONFS
    assert parameters["guidance"].default is None  # None: GuidanceSettings()


def test_evaluate_threshold_follows_the_dataset_unless_given():
    assert EvaluationSettings().threshold == THRESHOLDS["drugs"]
    assert EvaluationSettings(dataset="qm9").threshold == THRESHOLDS["qm9"]
    assert EvaluationSettings(dataset="qm9", threshold=1.0).threshold == 1.0
    with pytest.raises(UserInputError, match="dataset 'other': no default threshold"):
        EvaluationSettings(dataset="other")
    base = ["--generated", "g.sdf", "--references", "r.sdf", "--out", "o"]
    args = _verb_args("evaluate", base + ["--dataset", "qm9"])
    assert pick_settings(EvaluationSettings, args).threshold == THRESHOLDS["qm9"]
    args = _verb_args("evaluate", base + ["--threshold", "0.3", "--validity-confs", "0",
                                          "--no-symmetrize-terminal-groups", "--max-matches",
                                          "9", "--only-generated"])
    settings = pick_settings(EvaluationSettings, args)
    assert (settings.threshold, settings.validity_confs_per_molecule, settings.max_matches,
            settings.symmetrize_conjugated_terminal_groups, settings.only_generated) == \
        (0.3, 0, 9, False, True)
    assert pick_settings(EvaluationSettings, _verb_args("evaluate", base)) == EvaluationSettings()
    command = pick_settings(EvaluateCommandSettings, _verb_args("evaluate", base))
    assert command.generated == Path("g.sdf") and command.progress and command.workers == 1


def test_prepare_defaults_keep_the_cache_parameter_hash():
    args = _verb_args("prepare", ["geom", "--split", "split0.npy"])
    settings = pick_settings(PrepareSettings, args)
    assert settings.parameter_hash("x") == PrepareSettings().parameter_hash("x")
    command = pick_settings(PrepareCommandSettings, args)
    assert (command.geom_dir, command.split, command.out, command.shard, command.progress) == \
        (Path("geom"), Path("split0.npy"), None, "0/1", True)
    args = _verb_args("prepare", ["geom", "--split", "s.npy", "--max-confs", "5",
                                  "--min-heavy-atoms", "2", "--dataset", "qm9"])
    assert pick_settings(PrepareSettings, args) == PrepareSettings("qm9", 5, 2)


def test_build_geom_options_reach_build_settings():
    args = _verb_args("build-geom", ["in.smi", "--out", "dir"])
    assert pick_settings(BuildSettings, args) == BuildSettings()
    command = pick_settings(BuildCommandSettings, args)
    assert command.split_fractions == DEFAULT_SPLIT_FRACTIONS
    args = _verb_args("build-geom", ["in.smi", "--out", "dir", "--confs", "5", "--xtb",
                                     "--split-fractions", "0.5,0.25,0.25", "--no-progress"])
    assert pick_settings(BuildSettings, args) == BuildSettings(n_confs=5, xtb=True)
    command = pick_settings(BuildCommandSettings, args)
    assert (command.split_fractions, command.progress) == ((0.5, 0.25, 0.25), False)
