"""Phenotype pre-training of the 3D image encoder (Merlin's supervised half), for encoders without CT weights.

Merlin's encoder was trained with EHR phenotype labels next to its contrastive report loss. Users
whose encoder has no CT pre-training (a new architecture, a random-init tiny model in the demo)
can give it the same kind of supervision from any table of per-volume labels: binary columns
(0/1 or bool) get a binary cross-entropy, other numeric columns a mean squared error after
standardisation; missing values are masked. The result is saved in Merlin's checkpoint layout,
so everything downstream loads it exactly like Merlin's weights.

Entry points: :func:`run_pretrain_encoder` (a label table and a preprocessed-volume cache in, a
checkpoint out; ``ctvl pretrain-encoder``) and :func:`pretrain_encoder` (any encoder, any loader).

Example:
    >>> history = pretrain_encoder(encoder, load_image, labels, epochs=10, holdout=0.1)  # doctest: +SKIP
    >>> save_merlin_checkpoint(encoder, "encoder.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ctvl.config import TrainConfig, VisionConfig
from ctvl.train.engine import TorchEngine
from ctvl.train.loop import BatchStream, TrainingTask, fit

log = logging.getLogger(__name__)


def label_matrix(labels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Numeric/bool columns -> (values (n, k) float32 with NaN kept, is_binary (k,), column names).

    Non-binary columns are standardised; constant columns are dropped.
    """
    cols, values, binary = [], [], []
    for name in labels.columns:
        col = labels[name]
        if col.dtype == bool or col.dtype == object and set(col.dropna().unique()) <= {True, False}:
            col = col.astype(float)
        if not pd.api.types.is_numeric_dtype(col):
            continue
        v = col.to_numpy(dtype=np.float64)
        finite = v[np.isfinite(v)]
        if finite.size < 2 or finite.std() == 0:
            continue
        is_binary = set(np.unique(finite)) <= {0.0, 1.0}
        if not is_binary:
            v = (v - finite.mean()) / finite.std()
        cols.append(name)
        values.append(v)
        binary.append(is_binary)
    if not cols:
        raise ValueError("no usable label columns (numeric or bool, not constant)")
    return np.stack(values, axis=1).astype(np.float32), np.array(binary), cols


def phenotype_loss(logits: torch.Tensor, target: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
    """Masked mean of BCE (binary columns) and MSE (standardised columns); ``(B, k)`` each."""
    mask = torch.isfinite(target)
    target = torch.where(mask, target, torch.zeros_like(target))
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    mse = (logits - target) ** 2
    per = torch.where(binary, bce, mse) * mask
    return per.sum() / mask.sum().clamp(min=1)


@dataclass
class PretrainHistory:
    """Mean phenotype loss per epoch on the training cases and, with a hold-out, on the held-out cases."""

    train: list[float] = field(default_factory=list)
    holdout: list[float] = field(default_factory=list)
    best_epoch: int = 0
    """1-based epoch whose weights the encoder keeps (the last one without a hold-out)."""


class PhenotypeOutput(NamedTuple):
    loss: torch.Tensor
    """Scalar :func:`phenotype_loss` of the batch."""


class PhenotypeModel(nn.Module):
    """Encoder + linear phenotype head on globally pooled features:
    ``(B, 1, x, y, z) -> (B, C, x', y', z') -> mean -> (B, C) -> Linear -> (B, k)`` logits."""

    def __init__(self, encoder: nn.Module, binary: np.ndarray):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_channels, len(binary))
        self.register_buffer("binary", torch.from_numpy(binary), persistent=False)

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> PhenotypeOutput:
        feats = self.encoder(image.to(torch.float32)).mean(dim=(2, 3, 4))
        return PhenotypeOutput(phenotype_loss(self.head(feats), target, self.binary))


def _epoch_batches(cases: list[str], images: torch.Tensor, targets: torch.Tensor, train_idx: torch.Tensor,
                   batch_size: int, seed: int, epoch: int, skip: int) -> BatchStream:
    """Endless stream of shuffled training batches (a seeded permutation per epoch; the last one short)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epoch):
        torch.randperm(len(train_idx), generator=g)
    while True:
        batches = train_idx[torch.randperm(len(train_idx), generator=g)].split(batch_size)
        for pos, idx in enumerate(batches):
            if pos >= skip:
                yield epoch, pos + 1, ({"image": images[idx], "target": targets[idx]},
                                       {"case_id": [cases[i] for i in idx.tolist()]})
        epoch, skip = epoch + 1, 0


def pretrain_encoder(encoder: nn.Module, load_image: Callable[[str], np.ndarray], labels: pd.DataFrame, *,
                     epochs: int = 10, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
                     holdout: float = 0.0, device: str | torch.device = "cpu",
                     progress: bool = True) -> PretrainHistory:
    """Train ``encoder`` (in place) with a linear phenotype head on globally pooled features.

    AdamW (weight decay 0.01) at a constant ``lr``, one optimiser step per batch, in ctvl's training
    loop (``ctvl.train.loop.fit``). With ``holdout > 0`` that fraction of the cases (a seeded draw) is
    kept out of training, scored after every epoch, and the encoder ends with the weights of the
    epoch with the lowest held-out loss, as a 3D CNN trained on few volumes can memorise its labels
    before the last epoch.

    Args:
        encoder: ``(B, 1, x, y, z) -> (B, C, x', y', z')`` with an ``out_channels`` attribute; trained in
            place on ``device`` and left there, frozen and in eval mode.
        load_image: ``case_id -> (1, x, y, z)`` array (e.g. ``ctvl.data.preprocess.load_cached``); the
            volumes are held in memory in their own dtype (float16 from the cache) and cast per batch.
        labels: DataFrame indexed by case_id; see :func:`label_matrix`.
        holdout: fraction of cases for early stopping, in [0, 1); 0 trains on all and keeps the last epoch.
        device: where to train (``"cuda"`` on a GPU machine).

    Returns:
        PretrainHistory: losses per epoch and the epoch kept.
    """
    if epochs < 1 or not 0.0 <= holdout < 1.0:
        raise ValueError(f"need epochs >= 1 and a hold-out in [0, 1), got {epochs} and {holdout}")
    values, binary, cols = label_matrix(labels)
    cases = [str(c) for c in labels.index]
    order = np.random.default_rng(seed).permutation(len(cases))
    n_held = int(round(holdout * len(cases)))
    if holdout and not 0 < n_held < len(cases):
        raise ValueError(f"a hold-out of {holdout} leaves no case on one side of {len(cases)}")
    held_idx, train_idx = torch.from_numpy(np.sort(order[:n_held])), torch.from_numpy(np.sort(order[n_held:]))

    torch.manual_seed(seed)
    encoder.requires_grad_(True)
    model = PhenotypeModel(encoder, binary)
    steps_per_epoch = -(-len(train_idx) // batch_size)
    tc = TrainConfig(micro_batch_size=batch_size, grad_accum_steps=1, lr=lr, weight_decay=0.01,
                     lr_schedule="constant", max_steps=epochs * steps_per_epoch, grad_clip=0.0, precision="fp32",
                     use_deepspeed="no", seed=seed, log_interval=steps_per_epoch, eval_interval=steps_per_epoch,
                     save_interval=0)
    engine = TorchEngine(model, tc, device=device)
    images = torch.stack([torch.as_tensor(np.asarray(load_image(c))) for c in cases])
    targets = torch.from_numpy(values)
    history, best = PretrainHistory(), {}

    @torch.no_grad()
    def end_of_epoch(step: int) -> dict:
        epoch = step // steps_per_epoch
        engine.eval()
        held = sum(float(engine(image=images[b], target=targets[b]).loss) * len(b) for b in held_idx.split(batch_size))
        engine.train()
        history.holdout.append(held / n_held)
        if history.holdout[-1] <= min(history.holdout):
            history.best_epoch = epoch
            best["state"] = {k: v.detach().to("cpu", copy=True) for k, v in encoder.state_dict().items()}
        return {"holdout_loss": history.holdout[-1]}

    task = TrainingTask(
        engine=engine, name="encoder pre-training", evaluate=end_of_epoch if n_held else None,
        batches=lambda epoch, position: _epoch_batches(cases, images, targets, train_idx, batch_size, seed,
                                                       epoch, position))
    result = fit(task, tc, out_dir=None, progress=progress)
    history.train = [row["loss"] for row in result.history]
    if not n_held:
        history.best_epoch = epochs
    if "state" in best:
        encoder.load_state_dict(best["state"])
    encoder.requires_grad_(False)
    encoder.eval()
    held_note = f", held-out loss {history.holdout[0]:.4f} -> {min(history.holdout):.4f}" if n_held else ""
    log.info("encoder pre-training on %d labels (%s), %d cases (%d held out): train loss %.4f -> %.4f%s; "
             "kept epoch %d", len(cols), ", ".join(cols), len(train_idx), n_held, history.train[0],
             history.train[-1], held_note, history.best_epoch)
    return history


def save_merlin_checkpoint(encoder: nn.Module, path: str | Path) -> Path:
    """Write ``encoder``'s state dict under Merlin's ``encode_image.i3_resnet.`` prefix (loadable with weights_only)."""
    from ctvl.models.vision3d import MERLIN_IMAGE_PREFIX

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({MERLIN_IMAGE_PREFIX + k: v.detach().cpu() for k, v in encoder.state_dict().items()}, path)
    return path


def run_pretrain_encoder(labels: str | Path | pd.DataFrame, image_cache: str | Path, out: str | Path,
                         vision: VisionConfig, *, split: Optional[str] = "train", epochs: int = 10,
                         batch_size: int = 8, lr: float = 1e-3, holdout: float = 0.1, seed: int = 0,
                         device: str = "cpu", progress: bool = True) -> tuple[Path, PretrainHistory]:
    """Phenotype-train an encoder of architecture ``vision`` on a label table and save it in Merlin's layout.

    Args:
        labels: table (CSV/Parquet path or DataFrame) with ``case_id`` and one column per label, e.g. a
            synthetic cohort's ``findings.csv``; text columns are ignored (see :func:`label_matrix`).
        image_cache: a ``ctvl preprocess`` cache holding the cases.
        out: checkpoint path to write.
        vision: the encoder; with ``vision.checkpoint`` set, training starts from those weights.
        split: keep the rows whose ``split`` column equals this (``None``: all rows); the column is dropped.
        epochs, batch_size, lr, holdout, seed, device: see :func:`pretrain_encoder`.

    Cases missing from the cache are skipped with a warning naming the first few.

    Returns:
        (checkpoint path, :class:`PretrainHistory`).
    """
    from ctvl.data.preprocess import load_cache_index, load_cached
    from ctvl.data.tables import read_table
    from ctvl.models.vision3d import build_image_encoder

    table = labels if isinstance(labels, pd.DataFrame) else read_table(labels, "label table")
    if "case_id" not in table.columns:
        source = "the label table" if isinstance(labels, pd.DataFrame) else str(labels)
        raise ValueError(f"{source}: no case_id column")
    if split is not None and "split" in table.columns:
        table = table[table["split"] == split]
    table = table.drop(columns="split", errors="ignore").set_index("case_id")
    table.index = table.index.astype(str)
    cached = set(load_cache_index(image_cache)["case_id"].astype(str))
    missing = [c for c in table.index if c not in cached]
    if missing:
        log.warning("%d of %d labelled cases are not in %s and are skipped (first: %s)", len(missing),
                    len(table), image_cache, ", ".join(missing[:5]))
        table = table[~table.index.isin(missing)]
    if table.empty:
        raise ValueError(f"no labelled case of split {split!r} is in {image_cache}")
    torch.manual_seed(seed)
    trainable = replace(vision, frozen=False)
    encoder = build_image_encoder(trainable)
    history = pretrain_encoder(encoder, lambda c: load_cached(image_cache, c), table, epochs=epochs,
                               batch_size=batch_size, lr=lr, holdout=holdout, seed=seed, device=device,
                               progress=progress)
    return save_merlin_checkpoint(encoder, out), history
