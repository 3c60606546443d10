"""Training of the survival layer's small scikit-learn-style networks (DeepSurv, DeepHit, treatment models).

Entry point: :func:`fit_network` -- AdamW on shuffled mini-batches of row-aligned tensors, with optional
early stopping on a validation loss. It is the survival layer's one optimisation loop: this layer sits
below ``ctvl.train`` and cannot use its ``fit``. Deterministic given ``seed`` (batch order) and the
caller's ``torch.manual_seed`` (initialisation, dropout).
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Optional, Sequence

import torch

__all__ = ["fit_network"]

logger = logging.getLogger(__name__)


def fit_network(
    net: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    tensors: Sequence[torch.Tensor],
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    validation: Optional[Sequence[torch.Tensor]] = None,
    patience: int = 20,
    min_batch: int = 2,
    param_groups: Optional[list[dict]] = None,
) -> dict:
    """Minimise ``loss_fn(*batch)`` over ``epochs`` passes; ``batch`` = each tensor of ``tensors`` at the
    batch's rows (all share dimension 0).

    Args:
        net: the module whose parameters are trained (``loss_fn`` calls it).
        loss_fn: ``loss_fn(*row_slices) -> scalar``.
        tensors: (n, ...) row-aligned tensors.
        seed: seeds the batch order.
        epochs, batch_size, lr, weight_decay: AdamW on shuffled mini-batches.
        validation: row-aligned tensors of held-out rows: after each epoch ``loss_fn(*validation)`` is
            computed in eval mode; training stops ``patience`` epochs after its minimum and the weights
            of the best epoch are restored. None: all ``epochs`` run.
        patience: see ``validation``.
        min_batch: batches with fewer rows are skipped (a lone sample has no Cox risk set).
        param_groups: AdamW parameter groups (``[{"params": [...], "lr": ...}, ...]``) covering every
            trainable parameter of ``net``; None = one group at ``lr``.

    Returns:
        dict with ``epochs`` (run) and ``best_epoch`` / ``best_validation_loss`` (with ``validation``).
    """
    gen = torch.Generator().manual_seed(seed)
    n = tensors[0].shape[0]
    opt = torch.optim.AdamW(param_groups or net.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, best_epoch, epoch = float("inf"), None, -1, 0
    for epoch in range(1, epochs + 1):
        net.train()
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            if idx.numel() < min_batch:
                continue
            loss = loss_fn(*(t[idx] for t in tensors))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if validation is None:
            continue
        net.eval()
        with torch.no_grad():
            value = float(loss_fn(*validation))
        if value < best:
            best, best_state, best_epoch = value, copy.deepcopy(net.state_dict()), epoch
        elif epoch - best_epoch >= patience:
            break
    net.eval()
    if best_state is None:
        return {"epochs": epoch}
    net.load_state_dict(best_state)
    return {"epochs": epoch, "best_epoch": best_epoch, "best_validation_loss": best}
