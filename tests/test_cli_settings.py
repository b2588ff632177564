"""Options from settings dataclasses: one default each, shown in --help, foreign options refused."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from conformer import cli
from conformer.cli_settings import add_settings_arguments, option_fields, settings_from_args
from conformer.errors import UserInputError
from conformer.experiments.common import option
from conformer.experiments.drugs import DrugsSettings
from conformer.experiments.nbody import NBodySettings


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
