"""Both stages on 2 CPU ranks (gloo) through DeepSpeed ZeRO-2 and ZeRO-3, launched with torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ctvl.config import RunConfig, TrainConfig, to_dict

from ..conftest import TINY_PREPROCESS, free_port

DS_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"


def _launch(cfg: RunConfig, tmp_path: Path, name: str) -> pd.DataFrame:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "ctvl.cli", "train", "--config", str(path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert "DeepSpeed ZeRO" in proc.stderr
    return pd.read_csv(Path(cfg.train.out_dir) / "metrics.csv")


@pytest.mark.distributed
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_stages_on_two_ranks(zero, tiny_data, tiny_model_cfg, tmp_path):
    common = dict(micro_batch_size=4, grad_accum_steps=2, warmup_steps=1, max_steps=8, log_interval=1,
                  eval_interval=0, save_interval=0, use_deepspeed="yes",
                  deepspeed_config=str(DS_CONFIGS / f"{zero}.json"))
    data = tiny_data.data_config(max_length=80)
    s1 = RunConfig(model=tiny_model_cfg, data=data, preprocess=TINY_PREPROCESS,
                   train=TrainConfig(stage="vqa", out_dir=str(tmp_path / "s1"), lr=1e-2, **common))
    m1 = _launch(s1, tmp_path, "stage1")
    assert m1["loss"].notna().all() and m1["loss"].iloc[-2:].mean() < m1["loss"].iloc[:2].mean()
    s2 = RunConfig(model=tiny_model_cfg, data=data, preprocess=TINY_PREPROCESS,
                   train=TrainConfig(stage="survival", out_dir=str(tmp_path / "s2"), lr=5e-3,
                                     init_from=str(tmp_path / "s1" / "model"), event_aware_sampler=True, **common))
    m2 = _launch(s2, tmp_path, "stage2")
    assert m2[["loss", "surv_loss"]].notna().all().all()
    assert m2["loss"].iloc[-2:].mean() < m2["loss"].iloc[:2].mean()
    assert (tmp_path / "s2" / "model" / "survival.safetensors").is_file()
