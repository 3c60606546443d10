"""A resumed run's metrics.csv goes on from the checkpoint's step: no step is listed twice."""

from pathlib import Path

import pandas as pd

from ctvl.config import RunConfig, TrainConfig
from ctvl.train import checkpoint as ckpt
from ctvl.train.loop import truncate_metrics
from ctvl.train.vlm import fit_vlm as fit

from ..conftest import TINY_PREPROCESS

HEADER = "step,loss,lr\r\n"


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def test_rows_after_the_step_are_dropped_atomically(tmp_path):
    path = _write(tmp_path / "metrics.csv", HEADER + "".join(f"{s},0.{s},0.1\r\n" for s in range(1, 7)))
    assert truncate_metrics(path, 4) == 2
    assert list(pd.read_csv(path)["step"]) == [1, 2, 3, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # the temp file was renamed over it


def test_a_row_cut_short_by_the_kill_is_dropped(tmp_path):
    # The kill hit mid-row: the last line has no newline and too few fields; the next append would join it.
    path = _write(tmp_path / "metrics.csv", HEADER + "1,0.5,0.1\r\n2,0.4,0.1\r\n3,0.3")
    assert truncate_metrics(path, 4) == 1
    assert path.read_bytes().decode() == HEADER + "1,0.5,0.1\r\n2,0.4,0.1\r\n"


def test_nothing_to_drop_leaves_the_file_untouched(tmp_path):
    path = _write(tmp_path / "metrics.csv", HEADER + "1,0.5,0.1\r\n")
    mtime = path.stat().st_mtime_ns
    assert truncate_metrics(path, 1) == 0 and truncate_metrics(tmp_path / "absent.csv", 1) == 0
    assert path.stat().st_mtime_ns == mtime


def test_a_run_without_a_checkpoint_starts_its_metrics_over(tmp_path):
    path = _write(tmp_path / "metrics.csv", HEADER + "1,0.5,0.1\r\n2,0.4,0.1\r\n")
    assert truncate_metrics(path, 0) == 2
    assert path.read_bytes().decode() == HEADER


def test_resumed_fit_lists_each_step_once(tiny_data, tiny_model_cfg, tmp_path):
    train = TrainConfig(stage="vqa", out_dir=str(tmp_path / "run"), micro_batch_size=8, grad_accum_steps=1,
                        lr=3e-3, warmup_steps=1, max_steps=6, log_interval=1, eval_interval=0,
                        save_interval=4, keep_last=2, use_deepspeed="no", seed=3)
    cfg = RunConfig(model=tiny_model_cfg, data=tiny_data.data_config(max_length=80),
                    preprocess=TINY_PREPROCESS, train=train)
    first = fit(cfg, progress=False)
    # As if killed after logging steps 5 and 6 but before step 6's checkpoint became "latest".
    ckpt.mark_latest(first.out_dir / "checkpoints", ckpt.step_tag(4))
    resumed = fit(cfg, progress=False)
    assert [row["step"] for row in resumed.history] == [5, 6]
    metrics = pd.read_csv(first.out_dir / "metrics.csv")
    assert list(metrics["step"]) == [1, 2, 3, 4, 5, 6]
