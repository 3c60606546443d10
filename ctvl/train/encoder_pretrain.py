"""Phenotype pre-training of the 3D image encoder (Merlin's supervised half), for encoders without CT weights.

Merlin's encoder was trained with EHR phenotype labels next to its contrastive report loss. Users
whose encoder has no CT pre-training (a new architecture, a random-init tiny model in the demo)
can give it the same kind of supervision from any table of per-volume labels: binary columns
(0/1 or bool) get a binary cross-entropy, other numeric columns a mean squared error after
standardisation; missing values are masked. The result is saved in Merlin's checkpoint layout,
so everything downstream loads it exactly like Merlin's weights.

Example:
    >>> encoder = pretrain_encoder(encoder, load_image, labels, epochs=10)  # doctest: +SKIP
    >>> save_merlin_checkpoint(encoder, "encoder.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

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


def pretrain_encoder(encoder: nn.Module, load_image: Callable[[str], np.ndarray], labels: pd.DataFrame, *,
                     epochs: int = 10, batch_size: int = 8, lr: float = 1e-3, seed: int = 0,
                     progress: bool = True) -> list[float]:
    """Train ``encoder`` (in place) with a linear phenotype head on globally pooled features.

    Args:
        encoder: ``(B, 1, x, y, z) -> (B, C, x', y', z')`` with an ``out_channels`` attribute; trained in place.
        load_image: ``case_id -> (1, x, y, z)`` array (e.g. ``ctvl.data.preprocess.load_cached``).
        labels: DataFrame indexed by case_id; see :func:`label_matrix`.

    Returns:
        list[float]: mean training loss per epoch.
    """
    from tqdm.auto import tqdm

    values, binary, cols = label_matrix(labels)
    torch.manual_seed(seed)
    head = nn.Linear(encoder.out_channels, len(cols))
    encoder.requires_grad_(True)
    encoder.train()
    params = list(encoder.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr)
    cases = list(labels.index)
    images = torch.stack([torch.as_tensor(np.asarray(load_image(c), dtype=np.float32)) for c in cases])
    targets, is_binary = torch.from_numpy(values), torch.from_numpy(binary)
    g = torch.Generator().manual_seed(seed)
    history = []
    for _ in tqdm(range(epochs), disable=not progress, desc="encoder pre-training", unit="epoch"):
        order, total = torch.randperm(len(cases), generator=g), 0.0
        for start in range(0, len(cases), batch_size):
            idx = order[start:start + batch_size]
            feats = encoder(images[idx]).mean(dim=(2, 3, 4))  # (B, C, x, y, z) -> (B, C)
            loss = phenotype_loss(head(feats), targets[idx], is_binary)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        history.append(total / len(cases))
    encoder.requires_grad_(False)
    encoder.eval()
    log.info("encoder pre-training on %d labels (%s): loss %.4f -> %.4f", len(cols), ", ".join(cols),
             history[0], history[-1])
    return history


def save_merlin_checkpoint(encoder: nn.Module, path: str | Path) -> Path:
    """Write ``encoder``'s state dict under Merlin's ``encode_image.i3_resnet.`` prefix (loadable with weights_only)."""
    from ctvl.models.vision3d import MERLIN_IMAGE_PREFIX

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({MERLIN_IMAGE_PREFIX + k: v.detach().cpu() for k, v in encoder.state_dict().items()}, path)
    return path
