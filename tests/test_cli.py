"""The console script: verbs listed, help for each, clear errors."""

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
        assert action.help, f"option {action.option_strings or action.dest} of {verb} has no help"


def test_console_entry_runs_as_module():
    result = subprocess.run([sys.executable, "-m", "conformer.cli", "--version"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "conformer" in result.stdout


def test_environment_info_records_versions():
    info = environment_info()
    assert info["libraries"]["torch"] and info["libraries"]["rdkit"]
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})
