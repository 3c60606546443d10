"""Input checks shared by the survival losses: shapes, event masks, choices, zero losses with a graph."""

from __future__ import annotations

import torch

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _as_1d(x, name: str, n: int | None = None, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor of shape (N,) from (N,) or (N, 1) input; raise ``ValueError`` naming ``name`` otherwise."""
    x = torch.as_tensor(x, device=None if like is None else like.device)
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 1:
        raise ValueError(f"`{name}` must have shape (N,) or (N, 1), got {tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"`{name}` has {x.shape[0]} entries, expected {n} (the length of the first input)")
    return x


def _as_event(event, n: int, like: torch.Tensor) -> torch.Tensor:
    event = _as_1d(event, "event", n, like=like)
    return event if event.dtype == torch.bool else event != 0


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that stays connected to ``x`` so ``backward()`` gives a zero (not missing) gradient."""
    return (x * 0).sum()
