r"""Survival curves and time-dependent metrics: Kaplan-Meier, log-rank, IPCW Brier score and AUC.

All functions take numpy arrays (``event`` bool, ``time`` float) and work in float64 with
O(n log n) or O(n·T) cost; none builds an n×n matrix. Each one is checked against its
reference implementation in ``tests/survival/test_metrics.py``:

- :func:`kaplan_meier` — scikit-survival ``kaplan_meier_estimator`` / lifelines ``KaplanMeierFitter``.
- :func:`logrank_test` — lifelines ``logrank_test`` / ``multivariate_logrank_test``.
- :func:`risk_groups` — median split of a risk score, KM curve per group and the log-rank p-value.
- :func:`censoring_survival` — the censoring distribution :math:`\hat G` used by every IPCW metric.
- :func:`brier_score`, :func:`integrated_brier_score` — scikit-survival ``brier_score`` /
  ``integrated_brier_score``.
- :func:`cumulative_dynamic_auc` — scikit-survival ``cumulative_dynamic_auc``.

IPCW convention (shared with :func:`ctvl.survival.metrics.uno_c`): :math:`\hat G` is the
Kaplan-Meier estimate of the censoring distribution on the *training* data, with events
ordered before censorings at tied times, evaluated right-continuously, i.e.
:math:`\hat G(t) = P(C > t)`, exactly as scikit-survival's ``CensoringDistributionEstimator``.
R's ``survC1``/``pec`` weight events by the left limit :math:`\hat G(t-)` instead, so results
differ from R when an event and a censoring share a time (scikit-survival #428).

Beyond the last training time, :math:`\hat G` is held at its last value. scikit-survival raises
``ValueError: time must be smaller than largest observed time point`` there (#511); ctvl returns
the value scikit-survival returns wherever it returns one. Where :math:`\hat G = 0` the weight
is undefined: those terms get weight 0 and a warning is logged.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
from scipy import stats

logger = logging.getLogger(__name__)

__all__ = [
    "LogRankResult",
    "brier_score",
    "censoring_survival",
    "check_survival",
    "cumulative_dynamic_auc",
    "integrated_brier_score",
    "kaplan_meier",
    "logrank_test",
    "risk_groups",
]

_MAX_CHUNK = 4_000_000  # elements of an (n, T) temporary; bounds memory at ~32 MB per array
_DENSE_MAX = 1 << 18  # up to this many predictions the Brier score is one vectorised expression


def check_survival(event, time, name: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert survival targets.

    Args:
        event (array-like, bool or 0/1): shape (n,), True where the event was observed.
        time (array-like, float): shape (n,), event or censoring time; finite.
        name: prefix for error messages (e.g. ``"train_"``).

    Returns:
        ``(event, time)`` as ``bool`` and ``float64`` arrays of shape (n,).
    """
    event, time = np.asarray(event), np.asarray(time, dtype=np.float64)
    if event.ndim != 1 or time.ndim != 1 or event.shape != time.shape:
        raise ValueError(f"`{name}event` and `{name}time` must be 1-D of equal length, "
                         f"got {event.shape} and {time.shape}")
    if event.dtype != np.bool_:
        if not np.isin(event, (0, 1)).all():
            raise ValueError(f"`{name}event` must be boolean or 0/1")
        event = event.astype(bool)
    if time.size == 0:
        raise ValueError(f"`{name}time` is empty")
    if not np.isfinite(time).all():
        raise ValueError(f"`{name}time` must be finite (found NaN or inf)")
    return event, time


def _check_times(times, name: str = "times") -> np.ndarray:
    times = np.atleast_1d(np.asarray(times, dtype=np.float64))
    if times.ndim != 1 or times.size == 0 or not np.isfinite(times).all():
        raise ValueError(f"`{name}` must be a non-empty 1-D array of finite values")
    if np.any(np.diff(times) <= 0):
        raise ValueError(f"`{name}` must be strictly increasing")
    return times


def _counts(event: np.ndarray, time: np.ndarray):
    """Unique times, events, censorings and number at risk at each unique time."""
    order = np.argsort(time, kind="stable")
    uniq, first, counts = np.unique(time[order], return_index=True, return_counts=True)
    n_events = np.add.reduceat(event[order].astype(np.int64), first) if time.size else first
    at_risk = time.size - np.cumsum(counts) + counts
    return uniq, n_events, counts - n_events, at_risk


def kaplan_meier(event, time, conf_level: float | None = None):
    r"""Kaplan-Meier estimate of the survival function (Kaplan & Meier, 1958).

    .. math::
        \hat S(t) = \prod_{t_k \le t} \Big(1 - \frac{d_k}{r_k}\Big), \qquad
        \widehat{\mathrm{Var}}\,\log \hat S(t) = \sum_{t_k \le t} \frac{d_k}{r_k (r_k - d_k)}

    with :math:`d_k` events and :math:`r_k` subjects at risk at the unique time :math:`t_k`
    (Greenwood). The optional interval is the log-minus-log one of scikit-survival
    (``conf_type="log-log"``), which lifelines calls the exponential Greenwood interval.

    Args:
        event (array-like, bool): shape (n,).
        time (array-like, float): shape (n,).
        conf_level: e.g. 0.95 to also return the pointwise confidence interval.

    Returns:
        ``(times, survival)``, each (n_unique,) float64, or ``(times, survival, ci)`` with
        ``ci`` of shape (2, n_unique) (lower, upper) when ``conf_level`` is given.

    Example:
        >>> kaplan_meier([True, False, True, True], [1.0, 2.0, 2.0, 3.0])
        (array([1., 2., 3.]), array([0.75, 0.5 , 0.  ]))
    """
    event, time = check_survival(event, time)
    uniq, d, _, r = _counts(event, time)
    surv = np.cumprod(1.0 - d / r)
    if conf_level is None:
        return uniq, surv
    if not 0.0 < conf_level < 1.0:
        raise ValueError(f"`conf_level` must be in (0, 1), got {conf_level}")
    ratio = np.divide(d, r * (r - d), out=np.zeros(d.shape), where=(d > 0) & (r > d))
    sigma = np.sqrt(np.cumsum(ratio))
    eps = np.finfo(np.float64).eps
    log_s = np.log(surv, out=np.zeros_like(surv), where=surv > eps)
    theta = np.divide(sigma, log_s, out=np.zeros_like(surv), where=log_s < -eps)
    z = stats.norm.isf((1.0 - conf_level) / 2.0)
    ci = np.exp(np.exp(z * np.multiply.outer([-1.0, 1.0], theta)) * log_s)
    ci[:, surv <= eps] = 0.0
    return uniq, surv, ci


class LogRankResult(NamedTuple):
    """Result of :func:`logrank_test`."""

    statistic: float
    """Chi-squared statistic."""
    p_value: float
    """Upper tail of chi-squared with ``dof`` degrees of freedom."""
    dof: int
    """Number of groups minus one."""


def calibration_table(predicted, event, time, horizon: float, n_bins: int = 10) -> dict:
    """Predicted vs Kaplan-Meier observed probability of an event by ``horizon``, in quantile bins.

    Args:
        predicted: (n,) predicted P(event by horizon) = 1 - S(horizon | x).
        event, time: (n,) observed outcomes.
        horizon: the time point.
        n_bins: quantile bins of ``predicted`` (fewer when its values tie).

    Returns:
        dict: ``horizon`` and per bin ``predicted`` (mean), ``observed`` (1 - KM at horizon), ``n``.
    """
    pred = np.asarray(predicted, dtype=np.float64)
    event, time = check_survival(event, time)
    edges = np.unique(np.quantile(pred, np.linspace(0, 1, n_bins + 1)))
    bins = np.clip(np.searchsorted(edges, pred, side="right") - 1, 0, max(edges.size - 2, 0))
    rows: dict[str, list] = {"predicted": [], "observed": [], "n": []}
    for b in np.unique(bins):
        m = bins == b
        t, s = kaplan_meier(event[m], time[m])
        at = np.searchsorted(t, horizon, side="right") - 1
        rows["predicted"].append(float(pred[m].mean()))
        rows["observed"].append(float(1.0 - (s[at] if at >= 0 else 1.0)))
        rows["n"].append(int(m.sum()))
    return {"horizon": float(horizon), **rows}


def logrank_test(event, time, group) -> LogRankResult:
    r"""Log-rank test that all groups share one survival function (Mantel, 1966).

    .. math::
        U = (O - E)_{1..k-1}^\top\, V_{1..k-1}^{+}\, (O - E)_{1..k-1} \sim \chi^2_{k-1},

    with observed minus expected events per group and the hypergeometric covariance
    :math:`V_{gh} = \sum_t \frac{d_t (r_t - d_t)}{r_t^2 (r_t - 1)} r_{gt} (r_t\delta_{gh} - r_{ht})`.
    Equals lifelines ``logrank_test`` (two groups) and ``multivariate_logrank_test``.

    Args:
        event (array-like, bool): shape (n,).
        time (array-like, float): shape (n,).
        group (array-like): shape (n,), any labels; at least two distinct values.

    Returns:
        :class:`LogRankResult` ``(statistic, p_value, dof)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> g = np.repeat([0, 1], 50)
        >>> t = rng.exponential(1.0 + g)
        >>> round(logrank_test(np.ones(100, bool), t, g).p_value, 4)
        0.0001
    """
    event, time = check_survival(event, time)
    group = np.asarray(group)
    if group.shape != time.shape:
        raise ValueError(f"`group` must have shape {time.shape}, got {group.shape}")
    labels, g = np.unique(group, return_inverse=True)
    if labels.size < 2:
        raise ValueError("`group` must hold at least two distinct values")
    uniq, t_idx = np.unique(time, return_inverse=True)
    removed = np.zeros((uniq.size, labels.size))
    died = np.zeros((uniq.size, labels.size))
    np.add.at(removed, (t_idx, g), 1.0)
    np.add.at(died, (t_idx, g), event.astype(np.float64))
    r_g = removed.sum(0) - np.cumsum(removed, 0) + removed  # at risk per group, (U, k)
    r, d = r_g.sum(1), died.sum(1)
    o_minus_e = (died - r_g * (d / r)[:, None]).sum(0)
    factor = np.where(r > 1, (r - d) / np.maximum(r - 1, 1), 1.0) * d / r**2
    cov = np.diag((factor * r) @ r_g) - (r_g * factor[:, None]).T @ r_g
    z = o_minus_e[:-1]
    stat = float(z @ np.linalg.pinv(cov[:-1, :-1]) @ z)
    dof = labels.size - 1
    return LogRankResult(stat, float(stats.chi2.sf(stat, dof)), dof)


def risk_groups(estimate, event, time, threshold: float | None = None) -> dict:
    """Split patients at the median risk and compare the two groups (KM curves, log-rank).

    Patients with ``estimate > threshold`` form the high-risk group; ties with the threshold go
    to the low-risk group.

    Args:
        estimate (array-like, float): shape (n,), risk score (higher = earlier event).
        event (array-like, bool): shape (n,).
        time (array-like, float): shape (n,).
        threshold: cut-off; the median of ``estimate`` by default (pass the training median
            to stratify a test set).

    Returns:
        dict with ``threshold``, ``high`` (bool mask, shape (n,)), ``n_high``, ``n_low``,
        ``km_high``/``km_low`` (``(times, survival)`` tuples), ``statistic`` and ``p_value``.
    """
    event, time = check_survival(event, time)
    estimate = np.asarray(estimate, dtype=np.float64)
    if estimate.shape != time.shape or not np.isfinite(estimate).all():
        raise ValueError(f"`estimate` must be finite with shape {time.shape}")
    threshold = float(np.median(estimate)) if threshold is None else float(threshold)
    high = estimate > threshold
    if high.all() or not high.any():
        raise ValueError(f"threshold {threshold} puts every patient in one group")
    result = logrank_test(event, time, high)
    return {
        "threshold": threshold,
        "high": high,
        "n_high": int(high.sum()),
        "n_low": int((~high).sum()),
        "km_high": kaplan_meier(event[high], time[high]),
        "km_low": kaplan_meier(event[~high], time[~high]),
        "statistic": result.statistic,
        "p_value": result.p_value,
    }


def censoring_survival(train_event, train_time, times) -> np.ndarray:
    r"""Kaplan-Meier estimate :math:`\hat G(t) = P(C > t)` of the censoring distribution.

    Fitted on ``(train_event, train_time)`` with censorings as the "events" and, at tied times,
    events removed from the risk set first (scikit-survival ``CensoringDistributionEstimator``).
    1 before the first training time; held at its last value after the last one.

    Args:
        train_event (array-like, bool): shape (n_train,).
        train_time (array-like, float): shape (n_train,).
        times (array-like, float): shape (m,), where to evaluate.

    Returns:
        np.ndarray (m,) float64.
    """
    return read_step(*_censoring_curve(train_event, train_time), times)


def _censoring_curve(train_event, train_time) -> tuple[np.ndarray, np.ndarray]:
    """Unique training times and the censoring Kaplan-Meier curve at them."""
    event, time = check_survival(train_event, train_time, "train_")
    uniq, d, c, r = _counts(event, time)
    return uniq, np.cumprod(1.0 - np.divide(c, r - d, out=np.zeros(c.shape), where=c > 0))


def read_step(uniq: np.ndarray, g: np.ndarray, times) -> np.ndarray:
    """Right-continuous step curve (uniq, g) at ``times``: 1 before ``uniq[0]``, last value after."""
    idx = np.searchsorted(uniq, np.asarray(times, dtype=np.float64), side="right") - 1
    return np.where(idx >= 0, g[np.maximum(idx, 0)], 1.0)


def _inverse(g: np.ndarray, what: str) -> np.ndarray:
    """1/g with 0 where g == 0 (undefined weight), logging how many were dropped."""
    zero = g <= 0.0
    if zero.any():
        logger.warning("censoring survival is 0 at %d %s: those terms get weight 0 "
                       "(truncate the evaluation times below the last training time)", zero.sum(), what)
    return np.divide(1.0, g, out=np.zeros_like(g), where=~zero)


def _event_weights(curve: tuple[np.ndarray, np.ndarray], event: np.ndarray, time: np.ndarray) -> np.ndarray:
    """IPCW of each test sample from the censoring ``curve``: 1/G(y_i) for events, 0 if censored."""
    weights = np.zeros(time.size)
    weights[event] = _inverse(read_step(*curve, time[event]), "test event times")
    return weights


def _check_surv_matrix(surv, n: int, n_times: int, name: str) -> np.ndarray:
    surv = np.asarray(surv, dtype=np.float64)
    if surv.ndim == 1 and n_times == 1:
        surv = surv[:, None]
    if surv.shape != (n, n_times) or not np.isfinite(surv).all():
        raise ValueError(f"`{name}` must be finite with shape (n, len(times)) = {(n, n_times)}, "
                         f"got {surv.shape}")
    return surv


def brier_score(train_event, train_time, event, time, surv, times) -> np.ndarray:
    r"""Time-dependent Brier score with inverse probability of censoring weights (Graf et al., 1999).

    .. math::
        \mathrm{BS}(t) = \frac{1}{n}\sum_{i=1}^n
        \frac{\hat S_i(t)^2\, 1(y_i \le t, \delta_i = 1)}{\hat G(y_i)}
        + \frac{(1 - \hat S_i(t))^2\, 1(y_i > t)}{\hat G(t)}

    Equals scikit-survival ``brier_score``; unlike it, test times beyond the last training time
    are allowed (see the module docstring) and ``times`` is not re-sorted behind your back:
    it must be strictly increasing, matching the columns of ``surv``.

    Args:
        train_event (array-like, bool): shape (n_train,), fits :math:`\hat G`.
        train_time (array-like, float): shape (n_train,).
        event (array-like, bool): shape (n,), test events.
        time (array-like, float): shape (n,), test times.
        surv (array-like, float): shape (n, T), predicted :math:`\hat S_i(t_k)`.
        times (array-like, float): shape (T,), strictly increasing.

    Returns:
        np.ndarray (T,) float64.
    """
    event, time = check_survival(event, time)
    times = _check_times(times)
    surv = _check_surv_matrix(surv, time.size, times.size, "surv")
    curve = _censoring_curve(train_event, train_time)
    w_case = _event_weights(curve, event, time)
    w_ctrl = _inverse(read_step(*curve, times), "evaluation times")
    if time.size * times.size <= _DENSE_MAX:
        past = time[:, None] <= times  # (n, T); products with the mask beat np.where on random masks
        miss = np.square(1.0 - surv)
        miss *= ~past
        return ((np.square(surv) * past).T @ w_case + miss.sum(axis=0) * w_ctrl) / time.size
    # Patient i is a case for the columns k >= first[i] (y_i <= t_k) and a control before them.
    # Grouping patients by `first` touches every prediction once, in cache-sized row blocks.
    first = np.searchsorted(times, time, side="left")
    order = np.argsort(first, kind="stable")
    bounds = np.searchsorted(first[order], np.arange(times.size + 2), side="left")
    case_sum, ctrl_sum = np.zeros(times.size), np.zeros(times.size)
    for k in np.flatnonzero(np.diff(bounds)):
        rows = order[bounds[k]:bounds[k + 1]]
        block = surv[rows]  # (r, T)
        case_sum[k:] += w_case[rows] @ np.square(block[:, k:])
        ctrl_sum[:k] += np.square(1.0 - block[:, :k]).sum(axis=0)
    return (case_sum + w_ctrl * ctrl_sum) / time.size


def integrated_brier_score(train_event, train_time, event, time, surv, times) -> float:
    r"""Integrated Brier score: trapezoidal mean of :func:`brier_score` over ``times``.

    .. math::
        \mathrm{IBS} = \frac{1}{t_T - t_1} \int_{t_1}^{t_T} \mathrm{BS}(t)\,dt

    Equals scikit-survival ``integrated_brier_score``. Arguments as in :func:`brier_score`;
    at least two time points.

    Example:
        >>> t = np.array([1.0, 2.0, 3.0, 4.0]); e = np.array([True, False, True, False])
        >>> round(integrated_brier_score(e, t, e, t, np.full((4, 2), 0.5), [1.5, 3.5]), 6)
        0.25
    """
    times = _check_times(times)
    if times.size < 2:
        raise ValueError("`times` needs at least two points to integrate")
    scores = brier_score(train_event, train_time, event, time, surv, times)
    return float(np.trapezoid(scores, times) / (times[-1] - times[0]))


def _auc_columns(est: np.ndarray, case_w: np.ndarray, control: np.ndarray, tied_tol: float) -> np.ndarray:
    """AUC per column of risk ``est`` (n, T) already sorted descending along axis 0.

    Each control counts the case weight ranked strictly above its tie group plus half the
    case weight inside it; tie groups chain consecutive differences <= ``tied_tol`` (sksurv).
    """
    diff = np.abs(np.diff(est, axis=0)) <= tied_tol
    start = np.vstack([np.ones((1, est.shape[1]), bool), ~diff])  # (n, T)
    end = np.vstack([~diff, np.ones((1, est.shape[1]), bool)])
    cum = np.cumsum(case_w, axis=0)
    before = np.maximum.accumulate(np.where(start, cum - case_w, -np.inf), axis=0)
    through = np.minimum.accumulate(np.where(end, cum, np.inf)[::-1], axis=0)[::-1]
    credit = (control * (before + through)).sum(axis=0) / 2.0
    return credit / (cum[-1] * control.sum(axis=0))


def cumulative_dynamic_auc(train_event, train_time, event, time, estimate, times,
                           tied_tol: float = 1e-8) -> tuple[np.ndarray, float]:
    r"""Cumulative/dynamic AUC with IPCW (Uno et al., 2007; Hung & Chiang, 2010).

    .. math::
        \widehat{\mathrm{AUC}}(t) = \frac{\sum_{i,j} 1(y_j > t)\, 1(y_i \le t)\, \omega_i\,
        [1(\hat f_i > \hat f_j) + \tfrac12 1(\hat f_i \approx \hat f_j)]}
        {\big(\sum_j 1(y_j > t)\big)\big(\sum_i 1(y_i \le t)\, \omega_i\big)},
        \qquad \omega_i = \delta_i / \hat G(y_i)

    The summary is the AUC averaged with weights :math:`-d\hat S(t)` of the test Kaplan-Meier
    curve (Lambert & Chevret, 2014). Equals scikit-survival ``cumulative_dynamic_auc``.

    Args:
        train_event, train_time: training targets, shape (n_train,), fit :math:`\hat G`.
        event (array-like, bool): shape (n,), test events.
        time (array-like, float): shape (n,), test times.
        estimate (array-like, float): shape (n,) or (n, T), risk (higher = earlier event).
        times (array-like, float): shape (T,), strictly increasing, inside
            ``[min(time), max(time))`` (otherwise there are no cases or no controls).
        tied_tol: risks closer than this count as tied (½).

    Returns:
        ``(auc, mean_auc)``: np.ndarray (T,) and float.
    """
    event, time = check_survival(event, time)
    times = _check_times(times)
    if times[0] < time.min() or times[-1] >= time.max():
        raise ValueError(f"`times` must lie within [{time.min()}, {time.max()}) (test follow-up)")
    estimate = np.asarray(estimate, dtype=np.float64)
    if estimate.ndim == 1:
        estimate = estimate[:, None]
    if estimate.shape not in ((time.size, 1), (time.size, times.size)) or not np.isfinite(estimate).all():
        raise ValueError(f"`estimate` must be finite with shape (n,) or (n, T), got {estimate.shape}")
    ipcw = _event_weights(_censoring_curve(train_event, train_time), event, time)
    auc = np.empty(times.size)
    step = max(1, _MAX_CHUNK // max(time.size, 1))
    for a in range(0, times.size, step):
        t = times[a:a + step]
        est = estimate if estimate.shape[1] == 1 else estimate[:, a:a + step]
        order = np.argsort(-est, axis=0, kind="stable")
        est_s = np.take_along_axis(est, order, axis=0)
        y, w = time[order], ipcw[order]  # (n, 1) or (n, chunk)
        case_w = w * (y <= t)
        auc[a:a + step] = _auc_columns(np.broadcast_to(est_s, case_w.shape), case_w, y > t, tied_tol)
    if times.size == 1:
        return auc, float(auc[0])
    km_t, km_s = kaplan_meier(event, time)
    s_at = km_s[np.searchsorted(km_t, times, side="right") - 1]
    weights = -np.diff(np.r_[1.0, s_at])
    return auc, float((auc * weights).sum() / (1.0 - s_at[-1]))
