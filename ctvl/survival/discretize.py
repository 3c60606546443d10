"""Time discretisation for discrete-time (DeepHit) survival heads, with pycox semantics.

Entry point: :class:`TimeDiscretizer` -- ``fit(time, event)`` places ``num_bins`` cut points,
``transform(time, event)`` maps each time to a bin index. It reproduces pycox's
``LabTransDiscreteTime(num_bins, scheme)`` exactly (cuts and indices; tested against pycox):

- ``"equidistant"``: ``linspace(min_time, max(time), num_bins)``.
- ``"quantile"`` (pycox ``"quantiles"``): cuts at equally spaced levels of the Kaplan-Meier estimate,
  so each bin holds about the same share of events.
- events move to the right cut (index of the smallest cut >= t), censorings to the left cut (largest
  cut <= t); times above the last cut are censored at it.

Cut 0 is ``min_time`` (0 by default), so with positive times bin 0 receives no event: that is pycox's
layout, kept so models and numbers carry over. Used by the DeepHit loss
(:func:`ctvl.survival.losses.deephit_loss`) and head (:class:`ctvl.survival.heads.DeepHitHead`).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

__all__ = ["TimeDiscretizer"]

logger = logging.getLogger(__name__)


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _kaplan_meier_levels(time: np.ndarray, event: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier estimate at the unique times, with (0, 1.0) prepended when all times are positive.

    Follows pycox ``utils.kaplan_meier`` operation by operation so that the quantile cuts match bit for bit.
    """
    times, inverse = np.unique(time, return_inverse=True)
    deaths = np.bincount(inverse, weights=event, minlength=times.size).astype(np.int64)
    leaving = np.bincount(inverse, minlength=times.size)
    at_risk = time.size - np.concatenate(([0], np.cumsum(leaving)[:-1]))
    survive = 1 - deaths / at_risk
    surv = np.zeros_like(survive)
    zero = survive == 0
    stop = int(np.argmax(zero)) if zero.any() else survive.size
    surv[:stop] = np.exp(np.log(survive[:stop]).cumsum())
    if times.min() > 0:
        surv = np.concatenate(([1.0], surv))
        times = np.concatenate((np.array([0], dtype=times.dtype), times))
    return times, surv


def _quantile_cuts(time: np.ndarray, event: np.ndarray, num: int, start: float) -> np.ndarray:
    """pycox ``cuts_quantiles``: cuts at ``num`` equally spaced Kaplan-Meier levels (duplicates dropped)."""
    times, surv = _kaplan_meier_levels(time, event)
    levels = np.linspace(surv.min(), surv.max(), num)
    idx = np.searchsorted(surv[::-1], levels)[::-1]
    cuts = np.unique(times[::-1][idx])
    if cuts.size != num:
        logger.warning("quantile cuts are not unique: continuing with %d bins instead of %d", cuts.size, num)
    cuts[0] = start
    return cuts


class TimeDiscretizer:
    """Map continuous (time, event) pairs to time-bin indices (pycox ``LabTransDiscreteTime``).

    Args:
        num_bins: number of cut points K (the output width of a DeepHit head), >= 2.
        scheme: ``"equidistant"`` or ``"quantile"`` (Kaplan-Meier quantiles).
        min_time: the first cut.

    Attributes:
        cuts (np.ndarray | None): shape (K,), increasing; None before :meth:`fit`. Its dtype is that of the
            fitted times when floating, else float64 (as in pycox). Quantile cuts may be fewer than
            ``num_bins`` when Kaplan-Meier levels repeat (a warning is logged).

    Example:
        >>> disc = TimeDiscretizer(4, scheme="equidistant")
        >>> disc = disc.fit(np.array([1.0, 2.0, 6.0]), np.array([1, 0, 1]))
        >>> disc.cuts
        array([0., 2., 4., 6.])
        >>> disc.transform(np.array([1.0, 2.5, 6.0, 9.0]), np.array([1, 0, 1, 1]))
        (array([1, 1, 3, 3]), array([ True, False,  True, False]))
    """

    def __init__(self, num_bins: int, scheme: str = "equidistant", min_time: float = 0.0):
        if num_bins < 2:
            raise ValueError(f"`num_bins` must be >= 2, got {num_bins}")
        if scheme not in ("equidistant", "quantile"):
            raise ValueError(f"`scheme` must be 'equidistant' or 'quantile', got {scheme!r}")
        self.num_bins = num_bins
        self.scheme = scheme
        self.min_time = min_time
        self.cuts: np.ndarray | None = None

    def fit(self, time, event) -> TimeDiscretizer:
        """Place the cuts from training times (array or tensor, shape (N,)) and events (bool or 0/1, (N,))."""
        time, event = _to_numpy(time), _to_numpy(event)
        if time.ndim != 1 or time.shape != event.shape or time.size == 0:
            raise ValueError(f"`time` and `event` must be non-empty (N,), got {time.shape} and {event.shape}")
        dtype = time.dtype if np.issubdtype(time.dtype, np.floating) else np.dtype("float64")
        time = time.astype(dtype)
        if self.scheme == "equidistant":
            cuts = np.linspace(self.min_time, time.max(), self.num_bins, dtype=dtype)
        else:
            cuts = _quantile_cuts(time, event.astype(np.float64), self.num_bins, self.min_time).astype(dtype)
        if (np.diff(cuts) <= 0).any():
            raise ValueError(f"cuts are not increasing (max time {time.max()} <= min_time {self.min_time}?)")
        self.cuts = cuts
        return self

    def transform(self, time, event):
        """Bin indices and (possibly right-censored) events.

        Args:
            time (np.ndarray | torch.Tensor, float): shape (N,).
            event (np.ndarray | torch.Tensor, bool or 0/1): shape (N,).

        Returns:
            tuple: ``(bin_index, event)``, int64 in ``[0, K-1]`` and bool, both shape (N,); torch tensors
            (on the input's device) when ``time`` is a tensor, else numpy arrays. Times above the last cut
            come back censored.
        """
        if self.cuts is None:
            raise ValueError("TimeDiscretizer.transform called before fit()")
        as_tensor = isinstance(time, torch.Tensor)
        device = time.device if as_tensor else None
        time = _to_numpy(time).astype(self.cuts.dtype)
        event = _to_numpy(event).astype(bool)
        if time.shape != event.shape or time.ndim != 1:
            raise ValueError(f"`time` and `event` must both be (N,), got {time.shape} and {event.shape}")
        beyond = time > self.cuts[-1]
        time = np.where(beyond, self.cuts[-1], time)
        event = event & ~beyond
        right = np.searchsorted(self.cuts, time, side="left")  # smallest cut >= t
        exact = self.cuts[np.minimum(right, self.cuts.size - 1)] == time
        index = np.where(event, right, right - 1 + exact).astype(np.int64)
        if (index < 0).any():
            raise ValueError(f"censored times below the first cut {self.cuts[0]} cannot be binned")
        if as_tensor:
            return torch.from_numpy(index).to(device), torch.from_numpy(event).to(device)
        return index, event

    def fit_transform(self, time, event):
        """:meth:`fit` then :meth:`transform` on the same data."""
        return self.fit(time, event).transform(time, event)
