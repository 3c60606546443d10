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
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ctvl.config import VisionConfig

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


def pretrain_encoder(encoder: nn.Module, load_image: Callable[[str], np.ndarray], labels: pd.DataFrame, *,
                     epochs: int = 10, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
                     holdout: float = 0.0, device: str | torch.device = "cpu",
                     progress: bool = True) -> PretrainHistory:
    """Train ``encoder`` (in place) with a linear phenotype head on globally pooled features.

    With ``holdout > 0`` that fraction of the cases (a seeded draw) is kept out of training, scored
    after every epoch, and the encoder ends with the weights of the epoch with the lowest held-out
    loss, as a 3D CNN trained on few volumes can memorise its labels before the last epoch.

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
    from tqdm.auto import tqdm

    if epochs < 1 or not 0.0 <= holdout < 1.0:
        raise ValueError(f"need epochs >= 1 and a hold-out in [0, 1), got {epochs} and {holdout}")
    values, binary, cols = label_matrix(labels)
    cases = list(labels.index)
    order = np.random.default_rng(seed).permutation(len(cases))
    n_held = int(round(holdout * len(cases)))
    if holdout and not 0 < n_held < len(cases):
        raise ValueError(f"a hold-out of {holdout} leaves no case on one side of {len(cases)}")
    held_idx, train_idx = torch.from_numpy(np.sort(order[:n_held])), torch.from_numpy(np.sort(order[n_held:]))

    torch.manual_seed(seed)
    head = nn.Linear(encoder.out_channels, len(cols))
    encoder.to(device).requires_grad_(True)
    head.to(device)
    optimizer = torch.optim.AdamW(list(encoder.parameters()) + list(head.parameters()), lr=lr)
    images = torch.stack([torch.as_tensor(np.asarray(load_image(c))) for c in cases])
    targets, is_binary = torch.from_numpy(values).to(device), torch.from_numpy(binary).to(device)

    def loss_of(idx: torch.Tensor) -> torch.Tensor:
        feats = encoder(images[idx].to(device, torch.float32)).mean(dim=(2, 3, 4))  # (B, C, x, y, z)->(B, C)
        return phenotype_loss(head(feats), targets[idx.to(device)], is_binary)

    g = torch.Generator().manual_seed(seed)
    history, best_state = PretrainHistory(), None
    for epoch in tqdm(range(1, epochs + 1), disable=not progress, desc="encoder pre-training", unit="epoch"):
        encoder.train()
        total = 0.0
        for batch in train_idx[torch.randperm(len(train_idx), generator=g)].split(batch_size):
            loss = loss_of(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        history.train.append(total / len(train_idx))
        if n_held:
            encoder.eval()
            with torch.no_grad():
                held_loss = sum(loss_of(b).item() * len(b) for b in held_idx.split(batch_size))
            history.holdout.append(held_loss / n_held)
            if history.holdout[-1] <= min(history.holdout):
                history.best_epoch = epoch
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in encoder.state_dict().items()}
        else:
            history.best_epoch = epoch
    if best_state is not None:
        encoder.load_state_dict(best_state)
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
