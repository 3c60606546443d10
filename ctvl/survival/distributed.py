r"""Gather survival batches across data-parallel ranks, with gradients: the Cox loss sees the global risk set.

Entry points: :func:`gather_with_grad` (any tensor, autograd-aware all-gather) and
:func:`gather_survival_batch` (``log_hz, event, time`` and optional per-sample ``weight`` in one call). Both
are the identity when ``torch.distributed`` is not initialised or has a single rank, so the same training code
runs in one process.

Why: the partial likelihood of a sample depends on every sample in its risk set. With per-rank micro-batches
of a few CT volumes, a rank-local Cox loss sees tiny risk sets (often no event at all). Gathering gives every
rank the global batch of ``world_size * B`` samples.

Gradient scaling (checked numerically in ``tests/survival/test_distributed.py``). Every rank computes the same
global loss :math:`L` on the gathered batch. The backward of the gather sums, over ranks, the gradient that
each rank's copy of :math:`L` sends to rank r's slice, so rank r receives
:math:`\sum_{\text{ranks}} \partial L / \partial x_r = W\, \partial L / \partial x_r` (W = world size).
Data-parallel training (DDP, DeepSpeed) then averages parameter gradients over the W ranks:
:math:`\frac{1}{W} \sum_r W\, \frac{\partial L}{\partial x_r} \frac{\partial x_r}{\partial \theta}
= \frac{\partial L}{\partial \theta}`, exactly the single-process gradient on the concatenated batch. So
no extra scaling is needed, and none may be added: the per-sample gradient seen on a rank is W times the
single-process one, by design. Every rank must run backward through the gathered tensor (as with
``torch.distributed.nn.functional.all_gather``), since the backward is a collective.

Ranks may hold different numbers of samples (e.g. the last, short batch): sizes are exchanged first and the
tensors padded to the largest before the all-gather.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["gather_with_grad", "gather_survival_batch", "is_distributed"]


def is_distributed(group=None) -> bool:
    """True when torch.distributed is initialised with more than one rank in ``group``."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _gather_sizes(n: int, device: torch.device, group) -> list[int]:
    size = torch.tensor([n], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, size, group=group)
    return [int(s) for s in sizes]


def _all_gather_padded(tensor: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0 (no autograd); rows may differ between ranks."""
    n_max = max(sizes)
    padded = tensor.new_zeros((n_max, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients over ranks and returns this rank's slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        sizes = _gather_sizes(tensor.shape[0], tensor.device, group)
        ctx.group, ctx.sizes, ctx.rank = group, sizes, dist.get_rank(group)
        return _all_gather_padded(tensor.contiguous(), sizes, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()  # all_reduce works in place
        # A sum-all_reduce (not reduce_scatter): gloo lacks reduce_scatter and these tensors are tiny.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_with_grad(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """All-gather ``tensor`` along dim 0 from every rank (rank order), differentiable.

    Args:
        tensor (torch.Tensor): shape (N_r, ...) on rank r; trailing dims and dtype equal on all ranks.
        group: process group (default: the world).

    Returns:
        torch.Tensor: shape (sum_r N_r, ...). Identity without an initialised multi-rank process group.
        Gradients follow the module docstring: W times the single-process slice, which DDP's averaging
        turns into the exact global gradient.
    """
    if not is_distributed(group):
        return tensor
    if tensor.dim() == 0:
        raise ValueError("gather_with_grad needs a tensor with a batch dimension, got a scalar")
    if not tensor.requires_grad:
        sizes = _gather_sizes(tensor.shape[0], tensor.device, group)
        return _all_gather_padded(tensor.contiguous(), sizes, group)
    return _GatherWithGrad.apply(tensor, group)


def gather_survival_batch(
    log_hz: torch.Tensor, event: torch.Tensor, time: torch.Tensor, group=None, *,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Gather ``(log_hz, event, time)`` and optional ``weight`` from all ranks.

    Gradients flow back into ``log_hz`` and, when it requires one, into ``weight``; never into ``time``.

    Args:
        log_hz (torch.Tensor, float): shape (B,) or (B, 1) on this rank.
        event (torch.Tensor, bool): shape (B,).
        time (torch.Tensor, float): shape (B,).
        group: process group (default: the world).
        weight (torch.Tensor, float, optional): per-sample weights, shape (B,) (e.g. inverse propensity
            weights for the weighted Cox loss).

    Returns:
        tuple: ``(log_hz, event, time)`` of the global batch, in rank order, ``event`` still bool; with
        ``weight`` given, ``(log_hz, event, time, weight)``.

    Example (a training step; ``neg_partial_log_likelihood`` from :mod:`ctvl.survival.losses`)::

        log_hz, event, time = gather_survival_batch(out.log_hz, batch["event"], batch["time"])
        loss = neg_partial_log_likelihood(log_hz, event, time)  # the same global loss on every rank
        log_hz, event, time, w = gather_survival_batch(out.log_hz, event, time, weight=batch["weight"])
        loss = neg_partial_log_likelihood(log_hz, event, time, weight=w)  # weighted (IPW) global loss
    """
    if not is_distributed(group):
        return (log_hz, event, time) if weight is None else (log_hz, event, time, weight)
    event_all = gather_with_grad(event.to(torch.uint8), group).bool()  # bool collectives vary by backend
    out = (gather_with_grad(log_hz, group), event_all, gather_with_grad(time.detach(), group))
    return out if weight is None else (*out, gather_with_grad(weight, group))
