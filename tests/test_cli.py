"""The console script: verbs listed, help for each, clear errors."""

import argparse
import subprocess
import sys

import pytest

from conformer import cli
from conformer.versions import environment_info, stable_hash


def test_help_lists_every_verb(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for verb in cli.VERBS:
        assert verb in out


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_every_verb_has_help_for_every_option(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([verb, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"conformer {verb}" in out
    parser = cli.build_parser(verb)
    verb_parser = parser._subparsers._group_actions[0].choices[verb]
    for action in verb_parser._actions:
        if action.dest in ("help", "_run"):
            continue
        name = f"option {action.option_strings or action.dest} of {verb}"
        assert action.help, f"{name} has no help"
        # every option that takes a value and may be left out says what it is when left out
        is_switch = action.nargs == 0
        if action.option_strings and not is_switch and not action.required:
            assert "default:" in action.help, f"{name}: its help hides its default"


@pytest.mark.parametrize("verb", list(cli.VERBS))
def test_no_verb_keeps_a_second_copy_of_a_default_in_argparse(verb):
    """Options left out stay out of the namespace, so each default is read from its settings
    dataclass (conformer.cli_settings), never from a number repeated in add_argument."""
    parser = cli.build_parser(verb)
    verb_parser = parser._subparsers._group_actions[0].choices[verb]
    for action in verb_parser._actions:
        if action.option_strings and action.dest != "help" and not action.required:
            assert action.default is argparse.SUPPRESS, \
                f"option {action.option_strings} of {verb} has its own default {action.default!r}"


def test_console_entry_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "conformer.cli", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "conformer" in result.stdout


def test_environment_info_records_versions():
    info = environment_info()
    assert info["libraries"]["torch"] and info["libraries"]["rdkit"]
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
