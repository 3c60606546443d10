"""fit() on the tiny cohort: both stages run, write their outputs, and stage 2 starts from stage 1."""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from ctvl.config import RunConfig, TrainConfig
from ctvl.models.ctvl import CTVLModel
from ctvl.train.vlm import fit_vlm as fit

from ..conftest import TINY_PREPROCESS


def _run(tmp_path, data, model_cfg, stage, **train):
    base = dict(out_dir=str(tmp_path / stage), micro_batch_size=8, grad_accum_steps=2, lr=3e-3, warmup_steps=1,
                max_steps=4, log_interval=1, eval_interval=4, save_interval=2, keep_last=1, use_deepspeed="no")
    cfg = RunConfig(model=model_cfg, data=data.data_config(max_length=80), preprocess=TINY_PREPROCESS,
                    train=TrainConfig(stage=stage, **{**base, **train}))
    return fit(cfg, progress=False)


@pytest.fixture(scope="module")
def stage1(tiny_data, tiny_model_cfg, tmp_path_factory):
    return _run(tmp_path_factory.mktemp("s1"), tiny_data, tiny_model_cfg, "vqa")


def test_stage1_writes_checkpoints_export_and_metrics(stage1):
    out = stage1.out_dir
    assert stage1.steps == 4
    assert (out / "run_config.yaml").is_file() and (out / "model" / "ctvl_model.json").is_file()
    assert (out / "checkpoints" / "latest").read_text() == "step_0000004"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_0000004"]  # keep_last=1
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics["step"]) == [1, 2, 3, 4]
    assert np.isfinite(metrics["lm_loss"]).all() and "surv_loss" not in metrics
    assert stage1.evals[-1]["val_lm_loss"] > 0


def test_stage2_starts_from_stage1_and_trains_the_survival_branch(stage1, tiny_data, tiny_model_cfg, tmp_path):
    result = _run(tmp_path, tiny_data, tiny_model_cfg, "survival", init_from=str(stage1.out_dir / "model"),
                  event_aware_sampler=True)
    row = result.history[-1]
    assert all(np.isfinite(row[k]) for k in ("loss", "lm_loss", "surv_loss", "disp_loss", "align_loss"))
    assert 0.0 <= result.evals[-1]["val_c_index"] <= 1.0
    s1 = load_file(stage1.out_dir / "model" / "projector.safetensors")
    s2 = load_file(result.out_dir / "model" / "projector.safetensors")
    for k in s1:  # the projector is frozen in stage 2
        torch.testing.assert_close(s1[k], s2[k], rtol=0, atol=0)
    surv1 = load_file(stage1.out_dir / "model" / "survival.safetensors")
    surv2 = load_file(result.out_dir / "model" / "survival.safetensors")
    assert any(not torch.equal(surv1[k], surv2[k]) for k in surv1)
    reloaded = CTVLModel.from_pretrained(result.out_dir / "model")
    assert reloaded.cfg.survival.head == "cox"


def test_feature_cache_gives_the_loss_of_the_encoder_path(stage1, tiny_data):
    """Reading cached float16 encoder maps instead of encoding volumes changes the loss by fp16 rounding only."""
    from ctvl.data.datasets import VQASurvivalDataset, collate, load_vqa_pairs
    from ctvl.data.feature_cache import load_features
    from ctvl.data.preprocess import load_cached

    model = CTVLModel.from_pretrained(stage1.out_dir / "model")
    pairs = load_vqa_pairs(tiny_data.vqa)[:6]
    from ctvl.models.projector import num_image_tokens
    from ctvl.models.vision3d import compute_feature_shape

    grid = load_features(tiny_data.feature_cache, pairs[0].case_id).shape[1:]
    assert grid == compute_feature_shape((32, 32, 32))
    n_tokens = num_image_tokens(model.cfg.projector, grid)
    common = dict(targets=None, max_length=200)
    with_images = VQASurvivalDataset(pairs, model.tokenizer, n_tokens,
                                     lambda c: load_cached(tiny_data.image_cache, c), image_key="image", **common)
    with_feats = VQASurvivalDataset(pairs, model.tokenizer, n_tokens,
                                    lambda c: load_features(tiny_data.feature_cache, c), image_key="image_features",
                                    **common)
    pad = model.tokenizer.pad_token_id
    with torch.no_grad():
        a = model(**collate([with_images[i] for i in range(6)], pad)[0])
        b = model(**collate([with_feats[i] for i in range(6)], pad)[0])
    torch.testing.assert_close(a.lm_loss, b.lm_loss, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(a.risk, b.risk, rtol=2e-3, atol=2e-3)
