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


# ------------------------------------------------------------------ version and help


def test_version_is_the_installed_distributions(capsys):
    import importlib.metadata

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"ctvl {importlib.metadata.version('ctvl')}"


def _help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", *args])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_train_help_indexes_the_groups_in_a_screen(capsys):
    out = _help(capsys, "--help")
    assert len(out.splitlines()) < 60  # was 442 lines
    for key in ("model.vision", "model.lora", "data", "train", "preprocess", "contrastive"):
        assert f"\n  {key} " in out
    assert "LoRAConfig (5 options)" in out  # a dataclass without a docstring: its name, not its signature
    assert "--model.lora.r" not in out and "--help all" in out and "--print_config" in out


def test_train_help_of_a_group_documents_it_and_its_subgroups(capsys):
    out = _help(capsys, "--help", "model.lora")
    assert "--model.lora.r" in out and "Rank of the update matrices" in out
    assert "--train.lr" not in out
    out = _help(capsys, "--help", "model")
    assert "--model.lora.r" in out and "--model.survival.head" in out and "--data.vqa" not in out


def test_train_help_all_documents_every_option(capsys):
    from ctvl.cli import _train_parser

    out = _help(capsys, "--help", "all")
    options = [s for a in _train_parser()._actions for s in a.option_strings if s.startswith("--")]
    assert len(options) > 100
    assert [s for s in options if s not in out] == []


def test_train_help_of_an_unknown_group_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["train", "--help", "lora"])
    assert exit_.value.code == 2
    assert "model.lora" in capsys.readouterr().err


# ------------------------------------------------------------------ predict / generate


@pytest.mark.parametrize("command", ["predict", "generate"])
def test_allow_missing_context_reaches_the_runner(command, monkeypatch, tmp_path):
    import types

    from ctvl.cli import main

    module = __import__(f"ctvl.infer.{command}", fromlist=["run_" + command])
    seen = []
    summary = types.SimpleNamespace(exit_code=0, n_predicted=0, n_skipped=0, n_failed=0, n_cases=0)
    monkeypatch.setattr(module, f"run_{command}", lambda *a, **kw: seen.append(kw) or summary)
    base = [command, "--model", "m", "--inputs", "i", "--out", str(tmp_path / "o")]
    assert main(base) == 0 and main([*base, "--allow_missing_context"]) == 0
    assert [kw["allow_missing_context"] for kw in seen] == [False, True]


def test_predict_out_help_names_predicts_output_only(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["predict", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--out OUT Output table (.csv or .parquet)" in out and "generate" not in out
    assert "--allow_missing_context" in out and "such a run is an error" in out


# ------------------------------------------------------------------ log noise

NOTES = ("NumExpr defaulting to", "Setting accelerator to CPU", "pixdim[0] (qfac)")


def _run_with_notes(tmp_path, log_level: str) -> str:
    """stdout + stderr of `ctvl synth` in a fresh process that then imports DeepSpeed and reads a NIfTI
    whose qfac (pixdim[0]) is 0, which nibabel fixes with a note."""
    import os

    import nibabel as nib
    import numpy as np

    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    img.header["pixdim"][0] = 0
    nib.save(img, tmp_path / "qfac0.nii.gz")
    script = ("from ctvl.cli import main\n"
              f"assert main(['--log_level', '{log_level}', 'synth', '--out', r'{tmp_path / 'cohort'}', "
              "'--cohort.n_cases', '2']) == 0\n"
              "import deepspeed\n"
              "from ctvl.data.io import load_volume\n"
              f"load_volume(r'{tmp_path / 'qfac0.nii.gz'}')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMEXPR_", "OMP_NUM_THREADS"))}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_commands_print_no_library_notes(tmp_path):
    out = _run_with_notes(tmp_path, "INFO")
    assert [note for note in NOTES if note in out] == []
    lines = out.splitlines()
    assert any("wrote 2 cases" in line for line in lines)  # ctvl's own INFO lines still show
    assert all(" INFO ctvl" in line for line in lines), lines


def test_debug_shows_the_library_notes_once(tmp_path):
    out = _run_with_notes(tmp_path, "DEBUG")
    assert out.count("NumExpr defaulting to") == 1
    assert out.count("pixdim[0] (qfac)") == 1  # nibabel's own handler only, not propagated a second time

