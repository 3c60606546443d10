r"""Piecewise-constant hazards: cuts, exposures, the likelihood and survival curves.

Time is cut at :math:`0 = \tau_0 < \tau_1 < \dots < \tau_J`; in interval :math:`j = (\tau_j, \tau_{j+1}]`
patient :math:`i` has hazard :math:`\lambda_{ij} = \exp(\eta_{ij})`. With exposure
:math:`E_{ij} = |[0, t_i] \cap (\tau_j, \tau_{j+1}]|` and :math:`\kappa_i` the interval holding
:math:`t_i`, the (weighted) negative log-likelihood of right-censored data is

.. math::
    \ell = -\frac{1}{\sum_i w_i}\sum_i w_i \Big[d_i\,\eta_{i\kappa_i} - \sum_j e^{\eta_{ij}} E_{ij}\Big]

(PC-Hazard; Friedman 1982, Kvamme & Borgan 2021). A multiplicative effect on the hazard is additive on
:math:`\eta`, so a log hazard ratio is a difference of :math:`\eta` -- the reason the treatment models
(:mod:`ctvl.survival.treatment`) use this scale rather than a discrete-time logistic hazard (odds).
Survival: :math:`S(t) = \exp(-\sum_j e^{\eta_j} E_j(t))`, the last interval extended beyond
:math:`\tau_J`.

Entry points: :func:`hazard_cuts`, :func:`interval_index`, :func:`interval_exposure`, :func:`pc_hazard_nll`,
:func:`pc_survival`.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["hazard_cuts", "interval_index", "interval_exposure", "pc_hazard_nll", "pc_survival",
           "interval_midpoints"]


def hazard_cuts(time, event, num_intervals: int) -> np.ndarray:
    """Cuts ``(J + 1,)``: 0, the event-time quantiles at 1/J .. (J-1)/J, and the largest time.

    Each interval then holds about the same number of events. Duplicate quantiles (heavy ties) merge,
    so fewer than ``num_intervals`` may come back.

    >>> hazard_cuts(np.arange(1.0, 11.0), np.ones(10, bool), 2).tolist()
    [0.0, 5.5, 10.0]
    """
    time, event = np.asarray(time, np.float64), np.asarray(event, bool)
    if num_intervals < 1:
        raise ValueError(f"`num_intervals` must be >= 1, got {num_intervals}")
    if not event.any():
        raise ValueError("no events: the hazard cannot be cut at event-time quantiles")
    inner = np.quantile(time[event], np.arange(1, num_intervals) / num_intervals)
    cuts = np.unique(np.concatenate([[0.0], inner, [time.max()]]))
    return cuts if cuts.size > 1 else np.array([0.0, max(float(time.max()), 1.0)])


def interval_midpoints(cuts) -> np.ndarray:
    """(J,) centre of each interval: the time at which a per-interval estimate is read."""
    cuts = np.asarray(cuts, np.float64)
    return 0.5 * (cuts[:-1] + cuts[1:])


def interval_index(time, cuts) -> np.ndarray:
    """(n,) int64 interval j of each time: :math:`\\tau_j < t \\le \\tau_{j+1}`, 0 for t <= 0 and the last
    interval beyond the last cut.

    >>> interval_index(np.array([0.0, 1.0, 1.5, 9.0]), np.array([0.0, 1.0, 3.0])).tolist()
    [0, 0, 1, 1]
    """
    cuts = np.asarray(cuts, np.float64)
    index = np.searchsorted(cuts, np.asarray(time, np.float64), side="left") - 1
    return np.clip(index, 0, cuts.size - 2).astype(np.int64)


def interval_exposure(time, cuts, extend_last: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(interval (n,) int64, exposure (n, J) float64)`` of times ``t`` against ``cuts``.

    ``interval[i]`` is the j with :math:`\\tau_j < t_i \\le \\tau_{j+1}` (0 for t = 0);
    ``exposure[i, j]`` the time spent in interval j up to :math:`t_i`. Times beyond the last cut count in
    the last interval when ``extend_last``, else they are clipped to it (train on events up to
    :math:`\\tau_J` only: see :func:`pc_hazard_nll`).

    >>> interval_exposure(np.array([0.5, 2.0]), np.array([0.0, 1.0, 3.0]))[1].tolist()
    [[0.5, 0.0], [1.0, 1.0]]
    """
    cuts = np.asarray(cuts, np.float64)
    time = np.asarray(time, np.float64)
    if not extend_last:
        time = np.minimum(time, cuts[-1])
    widths = np.diff(cuts)
    exposure = np.clip(time[:, None] - cuts[None, :-1], 0.0, widths[None, :])
    if extend_last:
        exposure[:, -1] = np.maximum(time - cuts[-2], 0.0)
    return interval_index(time, cuts), exposure


def pc_hazard_nll(log_hazard: torch.Tensor, interval: torch.Tensor, event: torch.Tensor, exposure: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean negative log-likelihood of the piecewise-constant hazard (formula in the module doc).

    Args:
        log_hazard: :math:`\\eta`, (n, J).
        interval: :math:`\\kappa`, (n,) int64 from :func:`interval_exposure`.
        event: :math:`d`, (n,) bool or 0/1 (events after the last cut must be passed as censored).
        exposure: :math:`E`, (n, J).
        weight: :math:`w`, (n,) sample weights (e.g. inverse propensity); None = 1.

    Returns:
        scalar tensor.
    """
    at_event = log_hazard.gather(1, interval[:, None]).squeeze(1)  # (n, J) -> (n,)
    per_row = -(event.to(log_hazard.dtype) * at_event - (log_hazard.exp() * exposure).sum(1))
    if weight is None:
        return per_row.mean()
    return (weight * per_row).sum() / weight.sum()


def pc_survival(log_hazard, cuts, times) -> np.ndarray:
    """(n, T) survival :math:`S(t) = \\exp(-\\sum_j e^{\\eta_j} E_j(t))` at ``times`` (T,) from
    ``log_hazard`` (n, J); beyond the last cut the last interval's hazard continues."""
    eta = np.asarray(log_hazard, np.float64)
    _, exposure = interval_exposure(np.asarray(times, np.float64), cuts, extend_last=True)  # (T, J)
    return np.exp(-(np.exp(eta) @ exposure.T))
