"""Stages 1 and 2: the CT vision-language model on VQA pairs (paper section 2.3), trained by ``loop.fit``.

Stage 1 and stage 2 differ only in config: what trains (:func:`ctvl.train.stages.set_trainable`),
which losses have targets, the learning rate. This module builds what the loop needs: the model
(stage 1 from scratch or a local decoder, stage 2 from ``train.init_from``), the train/eval datasets
split by the manifest, the survival targets (DeepHit time bins fitted on the training split), the
evaluation (validation LM loss and Harrell's C) and the export (``model/`` + ``time_bins.json``).

Run it with ``ctvl train --config configs/train/<stage>.yaml`` (one process) or under ``torchrun`` /
``deepspeed`` (DeepSpeed engine, several ranks). A rerun with the same ``out_dir`` resumes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from ctvl.config import RunConfig
from ctvl.data.datasets import VQASurvivalDataset, collate, load_vqa_pairs
from ctvl.data.model_prompts import training_prompt_config
from ctvl.data.sampler import EpochBatchSampler
from ctvl.train.engine import build_engine, is_main_process, rank, world_size
from ctvl.train.loop import (
    FitResult,
    TrainingTask,
    batch_stream,
    export_pretrained,
    fit,
    require_micro_batch,
    start_run,
)
from ctvl.train.stages import set_trainable

LOGGED = ("loss", "lm_loss", "surv_loss", "disp_loss", "align_loss")
"""Output fields of ``CTVLModel.forward`` written to ``metrics.csv``."""


def _training_texts(pairs) -> list[str]:
    return [" ".join(filter(None, (p.context, p.question, p.answer))) for p in pairs]


def build_model(cfg: RunConfig, pairs):
    """Stage 1 from scratch (or a local decoder), stage 2 from ``train.init_from``; same seed on every rank."""
    from ctvl.models.ctvl import CTVLModel, SurvivalBranch, build_ctvl_model
    from ctvl.models.tokenizer import load_tokenizer, make_tokenizer

    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    if cfg.train.init_from:
        model = CTVLModel.from_pretrained(cfg.train.init_from)
        if model.cfg.survival != cfg.model.survival:  # stage 2 may pick another head than stage 1 carried
            from ctvl.models.decoder import base_model

            model.survival = SurvivalBranch(cfg.model.survival, base_model(model.decoder).config.hidden_size)
            model.cfg = replace(model.cfg, survival=cfg.model.survival)
        return model.train()
    dec = cfg.model.decoder
    tokenizer = None
    if dec.tokenizer:
        tokenizer = load_tokenizer(dec.tokenizer, cfg.model.image_token, dec.trust_remote_code)
    elif dec.path is None:
        tokenizer = make_tokenizer(_training_texts(pairs), vocab_size=dec.tokenizer_vocab_size,
                                   image_token=cfg.model.image_token)
    return build_ctvl_model(cfg.model, tokenizer).train()


def _image_loader(cfg: RunConfig):
    """``case_id -> array`` from the feature cache (encoder skipped) or the preprocessed-volume cache."""
    if cfg.data.feature_cache:
        from ctvl.data.feature_cache import load_features

        return (lambda cid: load_features(cfg.data.feature_cache, cid)), "image_features"
    if not cfg.data.image_cache:
        raise ValueError("set data.image_cache (ctvl preprocess) or data.feature_cache (ctvl encode)")
    from ctvl.data.preprocess import load_cached

    return (lambda cid: load_cached(cfg.data.image_cache, cid)), "image"


def load_targets(cfg: RunConfig) -> Optional[pd.DataFrame]:
    """Manifest -> DataFrame indexed by case_id with time, event, split (and DeepHit bin_index)."""
    if not cfg.data.manifest:
        return None
    from ctvl.data.manifest import load_manifest

    df = load_manifest(cfg.data.manifest).set_index("case_id")
    if cfg.model.survival.head == "discrete":
        from ctvl.survival.discretize import TimeDiscretizer

        train = df[df["split"] == cfg.data.train_split]
        disc = TimeDiscretizer(cfg.model.survival.num_bins, cfg.model.survival.cuts)
        disc.fit(train["time"].to_numpy(), train["event"].to_numpy().astype(bool))
        df["bin_index"], _ = disc.transform(df["time"].to_numpy(), df["event"].to_numpy().astype(bool))
        df.attrs["cuts"] = [float(c) for c in disc.cuts]
    return df


def build_datasets(cfg: RunConfig, pairs, model, targets):
    """Train/eval datasets split by the manifest's ``split`` column (all pairs train without a manifest)."""
    from ctvl.models.projector import num_image_tokens

    load_image, key = _image_loader(cfg)
    first = np.asarray(load_image(pairs[0].case_id))
    grid = first.shape[1:] if key == "image_features" else _encoder_grid(first.shape[1:], model)
    n_tokens = num_image_tokens(model.cfg.projector, grid)
    use_targets = targets if cfg.train.stage == "survival" else None

    def subset(split):
        if targets is None:
            return pairs if split == cfg.data.train_split else []
        ids = set(targets.index[targets["split"] == split])
        return [p for p in pairs if p.case_id in ids]

    def dataset(split):
        return VQASurvivalDataset(subset(split), model.tokenizer, n_tokens, load_image, image_key=key,
                                  targets=use_targets, max_length=cfg.data.max_length + n_tokens)

    return dataset(cfg.data.train_split), dataset(cfg.data.eval_split)


def _encoder_grid(roi: tuple[int, ...], model) -> tuple[int, int, int]:
    from ctvl.models.vision3d import compute_feature_shape

    return compute_feature_shape(tuple(roi), num_stages=len(model.cfg.vision.layers))


@torch.no_grad()
def evaluate(engine, dataset: VQASurvivalDataset, batch_size: int, pad_id: int) -> dict:
    """Validation LM loss and (stage 2) Harrell's C of the per-case risk averaged over questions."""
    if len(dataset) == 0:
        return {}
    engine.eval()
    lm, risks, cases = [], [], []
    sampler = EpochBatchSampler(len(dataset), batch_size, drop_last=False, shuffle=False)
    for indices in sampler:
        inputs, meta = collate([dataset[i] for i in indices], pad_id)
        # No survival targets: the Cox loss would gather across ranks, and only risks are needed here.
        out = engine(**{k: v for k, v in inputs.items() if k not in ("event", "time", "bin_index")})
        lm.append(float(out.lm_loss))
        risks.extend(out.risk.float().tolist())
        cases.extend(meta["case_id"])
    engine.train()
    result = {"val_lm_loss": float(np.mean(lm)) if lm else None}
    if dataset.targets is not None:
        from ctvl.survival.metrics import harrell_c

        per_case = pd.DataFrame({"case_id": cases, "risk": risks}).groupby("case_id")["risk"].mean()
        t = dataset.targets.loc[per_case.index]
        c = harrell_c(per_case.to_numpy(), t["event"].to_numpy().astype(bool), t["time"].to_numpy())
        result["val_c_index"] = float(c[0] if isinstance(c, tuple) else c)
    return result


def export_model(model, out_dir: Path, targets: Optional[pd.DataFrame]) -> None:
    """``out_dir/model`` (``save_pretrained``) and, for a DeepHit head, ``model/time_bins.json`` (rank 0)."""
    export_pretrained(model, out_dir / "model")
    if is_main_process() and targets is not None and "cuts" in targets.attrs:
        (out_dir / "model" / "time_bins.json").write_text(json.dumps({"cuts": targets.attrs["cuts"]}))


def fit_vlm(cfg: RunConfig, progress: bool = True) -> FitResult:
    """Train stage 1 or 2 as configured; resumes from ``train.out_dir`` when it holds a checkpoint.

    Returns:
        FitResult: ``history`` rows (step, loss, lm_loss, surv_loss, ..., lr, samples_per_s,
        tokens_per_s) as in ``metrics.csv``, ``evals`` rows (step, val_lm_loss, val_c_index).
    """
    tc = cfg.train
    if tc.stage not in ("vqa", "survival"):
        raise ValueError(f"fit_vlm trains stage 'vqa' or 'survival', got train.stage={tc.stage!r}")
    out_dir = start_run(cfg)
    targets = load_targets(cfg)
    if not cfg.data.vqa:
        raise ValueError("set data.vqa (the LLaVA JSONL from `ctvl build-vqa`)")
    pairs = load_vqa_pairs(cfg.data.vqa, None if targets is None else set(targets.index))
    if not pairs:
        raise ValueError(f"{cfg.data.vqa}: no VQA pairs (for cases of the manifest)")
    model = build_model(cfg, pairs)
    model.prompts = training_prompt_config(cfg.data.vqa, cfg.data.clinical_template, cfg.data.questions)
    set_trainable(model, tc.stage)
    train_ds, eval_ds = build_datasets(cfg, pairs, model, targets)
    require_micro_batch(len(train_ds), tc)
    engine = build_engine(model, tc)
    pad_id = model.tokenizer.pad_token_id
    events = train_ds.events if (tc.event_aware_sampler and train_ds.events is not None) else None
    sampler = EpochBatchSampler(len(train_ds), tc.micro_batch_size, rank=rank(), world_size=world_size(),
                                seed=tc.seed, events=events)
    collate_fn = partial(collate, pad_token_id=pad_id)
    task = TrainingTask(
        engine=engine, name=f"train {tc.stage}", logged=LOGGED, count_tokens=True,
        batches=lambda epoch, position: batch_stream(train_ds, sampler, epoch, position, collate_fn),
        evaluate=lambda step: evaluate(engine, eval_ds, tc.micro_batch_size, pad_id),
        export=lambda run_dir: export_model(model, run_dir, targets))
    return fit(task, tc, out_dir, progress)
