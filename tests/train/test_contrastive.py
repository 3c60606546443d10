"""Stage 0: open_clip's ClipLoss as loaded, a short alignment run on the tiny cohort, the CLI, the configs.

The runs on 2 ranks are in ``test_contrastive_distributed.py``."""

import importlib.util
import inspect
import math
import sys
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from ctvl.config import ContrastiveConfig, CTVLConfig, DataConfig, RunConfig, TrainConfig, load_config, replace
from ctvl.models.vision3d import build_image_encoder, load_merlin_image_encoder
from ctvl.train import clip_loss, contrastive
from ctvl.train.clip_loss import load_clip_loss_class
from ctvl.train.contrastive import fit_contrastive

from ..conftest import TINY_PREPROCESS, TINY_VISION

ROOT = Path(__file__).resolve().parents[2]
TRAIN_VISION = replace(TINY_VISION, frozen=False)
NEEDS_OPEN_CLIP = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                                     reason="open_clip not installed: pip install 'ctvl[clip]'")


# ------------------------------------------------------------------------------ the loss


@NEEDS_OPEN_CLIP
def test_loader_returns_open_clips_own_class():
    cls = load_clip_loss_class()
    package = Path(list(importlib.util.find_spec("open_clip").submodule_search_locations)[0])
    assert cls.__name__ == "ClipLoss" and Path(inspect.getfile(cls)) == package / "loss.py"


@NEEDS_OPEN_CLIP
def test_clip_loss_is_the_textbook_symmetric_infonce():
    torch.manual_seed(0)
    u, v = F.normalize(torch.randn(6, 16), dim=-1), F.normalize(torch.randn(6, 16), dim=-1)
    scale = torch.tensor(11.0)
    loss = load_clip_loss_class()(local_loss=False, gather_with_grad=True, cache_labels=True)(u, v, scale)
    logits = scale.double() * u.double() @ v.double().T  # (image i, report j)
    i2t = -(logits.diag() - logits.logsumexp(dim=1)).mean()  # image i picks report i among all reports
    t2i = -(logits.diag() - logits.logsumexp(dim=0)).mean()  # report j picks image j among all images
    torch.testing.assert_close(loss.double(), (i2t + t2i) / 2, rtol=0, atol=1e-6)


def test_missing_open_clip_names_the_install_line(monkeypatch):
    load_clip_loss_class.cache_clear()
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip -> ImportError
    monkeypatch.setattr(clip_loss.importlib.util, "find_spec", lambda name: None)
    try:
        with pytest.raises(ImportError, match=r"ctvl\[clip\]"):
            load_clip_loss_class()
    finally:
        load_clip_loss_class.cache_clear()


@NEEDS_OPEN_CLIP
def test_logit_scale_is_capped_and_not_decayed():
    from transformers import BertConfig, BertModel

    from ctvl.train.engine import build_optimizer

    text = BertModel(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    cfg = ContrastiveConfig(embed_dim=8, init_logit_scale=50.0, max_logit_scale=100.0)
    model = contrastive.ContrastiveModel(build_image_encoder(TRAIN_VISION), text, None, cfg, TRAIN_VISION)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(50.0)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    out = model(torch.rand(2, 1, 32, 32, 32), torch.randint(1, 32, (2, 5)), torch.ones(2, 5, dtype=torch.long))
    assert float(out.logit_scale) == 100.0 and out.image_embeds.norm(dim=-1).allclose(torch.ones(2))
    decay, no_decay = build_optimizer(model, TrainConfig(weight_decay=0.2)).param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.2, 0.0)
    assert all(p.ndim >= 2 for p in decay["params"]) and any(p is model.logit_scale for p in no_decay["params"])


# ------------------------------------------------------------------------ a short run


def make_config(tiny_data, out_dir: Path, **train) -> RunConfig:
    base = dict(stage="contrastive", out_dir=str(out_dir), micro_batch_size=8, grad_accum_steps=1, lr=1e-3,
                warmup_steps=2, max_steps=12, log_interval=1, eval_interval=12, save_interval=6, keep_last=1,
                use_deepspeed="no")
    return RunConfig(model=CTVLConfig(vision=TRAIN_VISION),
                     data=DataConfig(manifest=str(tiny_data.manifest), image_cache=str(tiny_data.image_cache)),
                     train=TrainConfig(**{**base, **train}), preprocess=TINY_PREPROCESS,
                     contrastive=ContrastiveConfig(embed_dim=64, max_text_length=64))


@pytest.fixture(scope="module")
def stage0(tiny_data, tmp_path_factory):
    cfg = make_config(tiny_data, tmp_path_factory.mktemp("s0") / "run")
    return cfg, fit_contrastive(cfg, progress=False)


@NEEDS_OPEN_CLIP
def test_loss_falls_below_chance(stage0):
    cfg, result = stage0
    metrics = pd.read_csv(result.out_dir / "metrics.csv")
    assert list(metrics["step"]) == list(range(1, 13))
    assert metrics[["loss", "logit_scale", "lr", "samples_per_s"]].notna().all().all()
    first, last = metrics["loss"].iloc[:3].mean(), metrics["loss"].iloc[-3:].mean()
    assert last < first and last < math.log(cfg.train.micro_batch_size)  # chance: uniform over the batch
    ev = result.evals[-1]
    assert ev["step"] == 12 and ev["val_cases"] > 0 and 0.0 <= ev["val_i2t_top1"] <= 1.0


@NEEDS_OPEN_CLIP
def test_encoder_is_trained_and_loads_strictly(stage0):
    cfg, result = stage0
    path = result.out_dir / "encoder" / "merlin_encoder.pt"
    trained = load_merlin_image_encoder(path, TINY_VISION).state_dict()  # strict: every key, every shape
    torch.manual_seed(cfg.train.seed)
    initial = build_image_encoder(TRAIN_VISION).state_dict()
    assert trained.keys() == initial.keys()
    changed = [k for k in initial if k.endswith("weight") and not torch.equal(initial[k], trained[k])]
    assert len(changed) == sum(k.endswith("weight") for k in initial)
    assert not torch.equal(initial["bn1.running_mean"], trained["bn1.running_mean"])
    assert (result.out_dir / "checkpoints" / "latest").read_text() == "step_0000012"


@NEEDS_OPEN_CLIP
def test_saved_towers_reproduce_the_evaluation(stage0):
    cfg, result = stage0
    model = contrastive.load_contrastive_model(result.out_dir / "encoder")
    _, eval_pairs = contrastive.load_report_pairs(cfg)
    collate = partial(contrastive.collate_pairs, image_cache=cfg.data.image_cache, tokenizer=model.tokenizer,
                      max_length=cfg.contrastive.max_text_length)
    again = contrastive.evaluate_retrieval(model, eval_pairs, collate, batch_size=8)
    assert again == {k: v for k, v in result.evals[-1].items() if k != "step"}


@NEEDS_OPEN_CLIP
def test_stage1_starts_from_the_stage0_encoder(stage0, tiny_data, tiny_model_cfg):
    from ctvl.data.datasets import load_vqa_pairs
    from ctvl.train.vlm import build_model

    _, result = stage0
    path = result.out_dir / "encoder" / "merlin_encoder.pt"
    model_cfg = replace(tiny_model_cfg, vision=replace(tiny_model_cfg.vision, checkpoint=str(path)))
    cfg = RunConfig(model=model_cfg, data=replace(tiny_data.data_config(), feature_cache=""),
                    preprocess=TINY_PREPROCESS, train=TrainConfig(stage="vqa"))
    model = build_model(cfg, load_vqa_pairs(tiny_data.vqa)[:20])
    expected = load_merlin_image_encoder(path, TINY_VISION).state_dict()
    for key, value in model.vision.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------- the CLI


@NEEDS_OPEN_CLIP
def test_cli_trains_stage0_from_the_shipped_config(tiny_data, tmp_path):
    from ctvl.cli import main

    out = tmp_path / "cli"
    status = main(["train", "--config", str(ROOT / "configs/train/stage0_tiny.yaml"),
                   "--data.manifest", str(tiny_data.manifest), "--data.image_cache", str(tiny_data.image_cache),
                   "--train.out_dir", str(out), "--train.micro_batch_size", "4", "--train.max_steps", "3",
                   "--train.log_interval", "1", "--train.eval_interval", "0", "--train.use_deepspeed", "no",
                   "--contrastive.max_text_length", "64"])
    assert status == 0
    assert len(pd.read_csv(out / "metrics.csv")) == 3
    assert load_config(RunConfig, out / "run_config.yaml").train.stage == "contrastive"
    load_merlin_image_encoder(out / "encoder" / "merlin_encoder.pt", TINY_VISION)


def test_real_stage0_config_feeds_the_real_stage1_encoder():
    stage0 = load_config(RunConfig, ROOT / "configs/train/stage0_merlin.yaml")
    stage1 = load_config(RunConfig, ROOT / "configs/train/stage1_merlin_radllama7b_zero2.yaml")
    v0, v1 = stage0.model.vision, stage1.model.vision
    assert (v0.layers, v0.base_width) == (v1.layers, v1.base_width) == ((3, 8, 36, 3), 64)
    assert not v0.frozen and v0.gradient_checkpointing and stage0.preprocess == stage1.preprocess
    assert stage0.train.stage == "contrastive" and stage0.train.precision == "bf16"
    assert stage0.train.deepspeed_config == "configs/deepspeed/zero2.json" and stage0.train.zero_stage == 2
    assert stage0.data.image_cache == stage1.data.image_cache and stage0.train.out_dir.startswith("/runs/")
