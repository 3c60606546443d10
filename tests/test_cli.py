"""`ctvl --help` lists the sub-commands; options come from the config dataclasses."""

import subprocess
import sys

import pytest

from ctvl.cli import COMMANDS, build_parser


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "ctvl.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in COMMANDS:
        assert name in out


def test_config_fields_become_options_with_docstrings(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["preprocess", "--help"])
    out = capsys.readouterr().out
    assert "--preprocess.spacing" in out
    assert "Target voxel spacing in mm" in out


def test_invalid_choice_is_refused(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["preprocess", "--cache", "c", "--preprocess.interpolation", "cubic"])
