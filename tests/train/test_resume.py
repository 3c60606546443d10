"""A run killed with SIGKILL and resumed ends with the weights of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ctvl.config import RunConfig, TrainConfig, replace, to_dict
from ctvl.train.vlm import fit_vlm as fit

from ..conftest import TINY_PREPROCESS


def _exported(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(model_dir.rglob("*.safetensors")):
        tensors.update({f"{path.relative_to(model_dir)}:{k}": v for k, v in load_file(path).items()})
    return tensors


def _config(tiny_data, tiny_model_cfg, out_dir: Path) -> RunConfig:
    train = TrainConfig(stage="vqa", out_dir=str(out_dir), micro_batch_size=4, grad_accum_steps=2, lr=3e-3,
                        warmup_steps=3, max_steps=40, log_interval=5, eval_interval=0, save_interval=4, keep_last=2,
                        use_deepspeed="no", seed=7)
    model = replace(tiny_model_cfg, lora=replace(tiny_model_cfg.lora, dropout=0.1))  # RNG matters on resume
    return RunConfig(model=model, data=tiny_data.data_config(max_length=80), preprocess=TINY_PREPROCESS,
                     train=train)


def _wait_for_checkpoint(proc, latest: Path, timeout: float = 240.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if latest.exists() and latest.read_text().strip() >= "step_0000008":
            return latest.read_text().strip()
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before a checkpoint: {proc.stderr.read()[-3000:]}")
        time.sleep(0.02)
    pytest.fail("no checkpoint within the timeout")


def test_sigkill_then_resume_equals_uninterrupted(tiny_data, tiny_model_cfg, tmp_path):
    reference = fit(_config(tiny_data, tiny_model_cfg, tmp_path / "reference"), progress=False)
    cfg = _config(tiny_data, tiny_model_cfg, tmp_path / "killed")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    cmd = [sys.executable, "-m", "ctvl.cli", "train", "--config", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    tag = _wait_for_checkpoint(proc, tmp_path / "killed" / "checkpoints" / "latest")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert tag < "step_0000040", "the run finished before it could be killed"
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step_" in resumed.stderr
    a, b = _exported(reference.out_dir / "model"), _exported(tmp_path / "killed" / "model")
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
