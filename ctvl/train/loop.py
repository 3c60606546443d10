"""``fit()``: one explicit training loop for both stages (paper section 2.3).

Order per optimiser step: ``grad_accum_steps`` x (``inputs, meta = batch`` -> ``out = engine(**inputs)``
-> ``engine.backward(out.loss)`` -> ``engine.step()``), then log every ``log_interval``, evaluate every
``eval_interval`` and save every ``save_interval``. Stage 1 and stage 2 differ only in config: what
trains (:func:`ctvl.train.stages.set_trainable`), which losses have targets, the learning rate.

Run it with ``ctvl train --config configs/train/<stage>.yaml`` (one process) or under ``torchrun`` /
``deepspeed`` (DeepSpeed engine, several ranks). A rerun with the same ``out_dir`` resumes from the
newest checkpoint: model, optimiser, scheduler, RNG and data position; ``metrics.csv`` goes on from
the checkpoint's step (rows logged after it, before the interruption, are dropped).
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from ctvl.config import RunConfig, TrainConfig, save_config
from ctvl.data.datasets import VQASurvivalDataset, collate, load_vqa_pairs
from ctvl.data.model_prompts import training_prompt_config
from ctvl.data.sampler import EpochBatchSampler
from ctvl.train import checkpoint as ckpt
from ctvl.train.engine import build_engine, init_distributed, is_main_process, rank, world_size
from ctvl.train.stages import set_trainable

log = logging.getLogger(__name__)


def log0(msg: str, *args) -> None:
    """Log on rank 0 only."""
    if is_main_process():
        log.info(msg, *args)


@dataclass
class FitResult:
    out_dir: Path
    steps: int
    history: list[dict] = field(default_factory=list)
    """One row per log step: step, loss, lm_loss, surv_loss, lr, samples/s, tokens/s."""
    evals: list[dict] = field(default_factory=list)
    """One row per evaluation: step, val_lm_loss, val_c_index."""


# ---------------------------------------------------------------------- building


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


# ----------------------------------------------------------------------- looping


def batch_stream(dataset, sampler: EpochBatchSampler, epoch: int, skip: int, collate_fn):
    """Endless (epoch, position, ``collate_fn(items)``) stream starting at ``epoch``, skipping ``skip`` batches."""
    while True:
        sampler.set_epoch(epoch)
        for pos, indices in enumerate(sampler):
            if pos < skip:
                continue
            yield epoch, pos + 1, collate_fn([dataset[i] for i in indices])
        epoch, skip = epoch + 1, 0


def resume_latest(engine, out_dir: Path, seed: int) -> tuple[int, int, int]:
    """(step, epoch, batch position) of the newest checkpoint under ``out_dir``, loaded into ``engine``
    with its RNG state; (0, 0, 0) and the seed ``seed + rank`` when there is none."""
    tag = ckpt.latest_tag(out_dir / "checkpoints")
    if tag is None:
        torch.manual_seed(seed + rank())
        return 0, 0, 0
    state = engine.load_checkpoint(out_dir / "checkpoints", tag)
    ckpt.set_rng_state(state["rng"])
    log0("resumed from %s: step %d, epoch %d, batch %d", tag, state["step"], state["epoch"], state["position"])
    return state["step"], state["epoch"], state["position"]


def _to_float(x) -> Optional[float]:
    return None if x is None else float(x.detach())  # CPU-GPU sync: log steps only


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


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the rows of ``path`` (a metrics.csv) logged after ``step``; returns how many were dropped.

    A run killed between two checkpoints has logged rows past the last one; resumed from it, the run
    logs those steps again. Rows cut short by the kill (not one field per header column, or no integer
    step) go too. The file is replaced atomically (temp file + rename), so a second kill leaves the
    old or the new file, never half of one.
    """
    if not path.is_file():
        return 0
    with open(path, newline="") as fh:
        header, *rows = list(csv.reader(fh)) or [[]]
    if "step" not in header:
        return 0
    col = header.index("step")
    kept = [r for r in rows if len(r) == len(header) and r[col].isdigit() and int(r[col]) <= step]
    if len(kept) < len(rows):
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *kept])
        tmp.replace(path)
    return len(rows) - len(kept)


class MetricsWriter:
    """metrics.csv + TensorBoard on rank 0, continuing a resumed run's file from ``resume_step``.

    Args:
        out_dir: the run folder.
        resume_step: step of the checkpoint the run resumed from (0: a fresh run); rows logged after
            it are dropped (:func:`truncate_metrics`), as the run logs those steps again. The
            TensorBoard events of those steps are kept, so TensorBoard may draw them twice.
    """

    def __init__(self, out_dir: Path, resume_step: int):
        self.enabled = is_main_process()
        self.path = out_dir / "metrics.csv"
        self.tb = None
        if self.enabled:
            dropped = truncate_metrics(self.path, resume_step)
            if dropped:
                log.info("%s: dropped %d rows logged after step %d (the checkpoint resumed from)",
                         self.path, dropped, resume_step)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is a core dependency; tolerate slim installs
                log.warning("tensorboard not installed: metrics go to metrics.csv only")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()


def _export(engine, model, out_dir: Path, targets, name: str = "model") -> None:
    """Rank 0 writes ``out_dir/name`` (``model.save_pretrained``); ZeRO-3 parameters are gathered first."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if params:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if is_main_process():
                model.save_pretrained(out_dir / name)
    elif is_main_process():
        model.save_pretrained(out_dir / name)
    if is_main_process() and targets is not None and "cuts" in targets.attrs:
        import json

        (out_dir / name / "time_bins.json").write_text(json.dumps({"cuts": targets.attrs["cuts"]}))


def save_step(engine, model, out_dir: Path, step: int, epoch: int, pos: int, cfg: RunConfig, targets,
              name: str = "model") -> None:
    """Checkpoint ``step`` (engine state + data position + RNG) under ``out_dir/checkpoints``, export
    ``out_dir/name``, then mark it latest and keep the last ``cfg.train.keep_last`` (rank 0)."""
    ckpt_dir = out_dir / "checkpoints"
    tag = ckpt.step_tag(step)
    engine.save_checkpoint(ckpt_dir, tag, {"step": step, "epoch": epoch, "position": pos, "rng": ckpt.rng_state()})
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    _export(engine, model, out_dir, targets, name)
    if is_main_process():
        ckpt.mark_latest(ckpt_dir, tag)
        ckpt.prune(ckpt_dir, cfg.train.keep_last)


def start_run(cfg: RunConfig) -> Path:
    """Join the process group (when launched with ranks), create ``train.out_dir`` and write
    ``run_config.yaml`` there (rank 0); returns the folder."""
    init_distributed()
    out_dir = Path(cfg.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        save_config(cfg, out_dir / "run_config.yaml")
    return out_dir


def require_micro_batch(n_train: int, tc: TrainConfig) -> None:
    """Raise unless ``n_train`` training pairs fill one micro-batch on every rank."""
    if n_train < tc.micro_batch_size * world_size():
        raise ValueError(f"{n_train} training pairs < one micro-batch per rank "
                         f"({tc.micro_batch_size} x {world_size()})")


def fit(cfg: RunConfig, progress: bool = True) -> FitResult:
    """Train one stage as configured; resumes from ``out_dir`` when it holds a checkpoint."""
    tc = cfg.train
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
    step, epoch, position = resume_latest(engine, out_dir, tc.seed)
    result = FitResult(out_dir, step)
    metrics = MetricsWriter(out_dir, resume_step=step)
    stream = batch_stream(train_ds, sampler, epoch, position, partial(collate, pad_token_id=pad_id))
    from tqdm.auto import tqdm

    bar = tqdm(total=tc.max_steps, initial=step, disable=not (progress and is_main_process()), desc=f"train {tc.stage}")
    engine.train()
    t0, samples, tokens = time.perf_counter(), 0, 0
    while step < tc.max_steps:
        sums: dict[str, float] = {}
        for _ in range(tc.grad_accum_steps):
            epoch, position, (inputs, meta) = next(stream)
            out = engine(**inputs)
            engine.backward(out.loss)
            engine.step()
            samples += len(meta["case_id"])
            tokens += int(inputs["attention_mask"].sum())
            for name in ("loss", "lm_loss", "surv_loss", "disp_loss", "align_loss"):
                value = getattr(out, name)
                if value is not None:
                    sums[name] = sums.get(name, 0.0) + value.detach()
        step += 1
        bar.update(1)
        if step % tc.log_interval == 0 or step == tc.max_steps:
            elapsed = time.perf_counter() - t0
            row = {"step": step, **{k: float(v) / tc.grad_accum_steps for k, v in sums.items()},  # CPU-GPU sync
                   "lr": engine.get_lr(), "samples_per_s": samples * world_size() / elapsed,
                   "tokens_per_s": tokens * world_size() / elapsed}
            result.history.append(row)
            metrics.write(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            t0, samples, tokens = time.perf_counter(), 0, 0
        if tc.eval_interval and (step % tc.eval_interval == 0 or step == tc.max_steps):
            ev = {"step": step, **evaluate(engine, eval_ds, tc.micro_batch_size, pad_id)}
            result.evals.append(ev)
            log0("step %d eval %s", step, ev)
        if (tc.save_interval and step % tc.save_interval == 0) or step == tc.max_steps:
            save_step(engine, model, out_dir, step, epoch, position, cfg, targets)
    bar.close()
    result.steps = step
    return result
