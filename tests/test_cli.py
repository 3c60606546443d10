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


def test_encode_without_encoder_weights_is_refused(tmp_path):
    """Features of a random-init encoder would be meaningless: `ctvl encode` stops before writing any."""
    from ctvl.cli import main

    with pytest.raises(SystemExit, match="--vision.checkpoint is required"):
        main(["encode", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "features")])
    assert not (tmp_path / "features").exists()


def test_a_config_group_read_from_its_own_file(tmp_path):
    # `--cohort file.yaml` (as --help offers) loads the group; options after it override single fields.
    import yaml

    from ctvl.cli import main

    (tmp_path / "cohort.yaml").write_text("n_cases: 5\nseed: 11\nshape: [16, 16, 16]\nspacing: [20.0, 20.0, 20.0]\n")
    assert main(["synth", "--out", str(tmp_path / "out"), "--cohort", str(tmp_path / "cohort.yaml"),
                 "--cohort.n_cases", "3"]) == 0
    written = yaml.safe_load((tmp_path / "out" / "cohort.yaml").read_text())
    assert (written["n_cases"], written["seed"], written["shape"]) == (3, 11, [16, 16, 16])
