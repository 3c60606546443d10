r"""Concordance indices in O(n log n): Harrell's C, Uno's IPCW C and Antolini's time-dependent C.

Entry points: :func:`harrell_c`, :func:`uno_c`, :func:`antolini_c`. Curves, Brier score and AUC
live in :mod:`ctvl.survival.curves` and are re-exported here, so
``from ctvl.survival.metrics import integrated_brier_score`` works too.

Why ctvl owns these (timings on 2 cores at n = 10⁵, see ``scripts/bench_survival.py``):
scikit-survival's ``concordance_index_censored`` loops over events (~20 s), lifelines uses a
Python tree (~2 s), pycox builds O(n²) pairs in numba (~50 s) and torchsurv an n×n mask (~125 s,
23 GB). Here every comparable pair is counted without enumerating pairs:

1. sort by time, events before censorings at tied times; the patients comparable to an event
   :math:`i` are then exactly a *suffix* of that order (later times, plus censorings at
   :math:`t_i`), as in scikit-survival's ``concordance_index_censored``;
2. "how many of that suffix have a risk below :math:`\hat f_i`" is a 2-D dominance count, answered
   for all events at once by a wavelet matrix over the risk ranks in time order
   (:math:`\lceil \log_2 n \rceil` vectorised levels). O(n log n) time, O(n) memory, pure numpy.

Risk ties use scikit-survival's tolerance rule :math:`|\hat f_i - \hat f_j| \le` ``tied_tol``
evaluated in the same floating-point arithmetic, so the counts match it exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ctvl.survival.curves import (
    brier_score,
    calibration_table,
    censoring_survival,
    check_survival,
    cumulative_dynamic_auc,
    integrated_brier_score,
    kaplan_meier,
    logrank_test,
    risk_groups,
    _inverse,
)

__all__ = [
    "Concordance",
    "antolini_c",
    "brier_score",
    "calibration_table",
    "censoring_survival",
    "cumulative_dynamic_auc",
    "harrell_c",
    "integrated_brier_score",
    "kaplan_meier",
    "logrank_test",
    "risk_groups",
    "uno_c",
]


class Concordance(NamedTuple):
    """A concordance index with its pair counts; unpacks like scikit-survival's 5-tuple."""

    cindex: float
    """Weighted fraction of concordant comparable pairs, tied risks counting ½."""
    concordant: int
    """Comparable pairs whose earlier event has the higher risk."""
    discordant: int
    """Comparable pairs whose earlier event has the lower risk."""
    tied_risk: int
    """Comparable pairs with risks within ``tied_tol``."""
    tied_time: int
    """Comparable pairs of an event and a censoring at the same time."""


def _count_dominated(pos: np.ndarray, rank: np.ndarray, limit: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """For each query q, count points j with ``pos[j] < limit[q]`` and ``rank[j] < bound[q]``.

    ``pos`` and ``rank`` are permutations of ``0..n-1``. A wavelet matrix (Claude et al., 2015)
    over the ranks in position order answers all queries together, one bit level at a time: per
    level a stable partition by the bit and one gather per query end.
    O((n + m) log n) time, O(n + m) memory.
    """
    n, m = pos.size, limit.size
    itype = np.int32 if n < 2**30 else np.int64  # halves memory traffic
    seq = np.empty(n, dtype=itype)
    seq[pos] = rank
    ends = np.concatenate((np.zeros(m, dtype=itype), limit.astype(itype)))  # [lo | hi) per query
    bits = np.tile(bound.astype(itype), 2)
    zeros = np.zeros(n + 1, dtype=itype)  # zeros[i]: 0-bits among the first i entries
    counts = np.zeros(m, dtype=np.int64)
    for shift in range(int(n).bit_length() - 1, -1, -1):
        one = ((seq >> shift) & 1).astype(bool)
        np.cumsum(~one, out=zeros[1:])
        seq = np.concatenate((np.compress(~one, seq), np.compress(one, seq)))  # stable partition
        b = (bits >> shift) & 1
        z = zeros[ends]
        counts += (z[m:] - z[:m]) * b[:m]  # bound has a 1 here: entries with a 0 are smaller
        ends = z + b * (zeros[-1] + ends - 2 * z)  # follow the bound's bit into its half
    return counts


def _boundary(vals: np.ndarray, x: np.ndarray, passes, guess: np.ndarray, fallback) -> np.ndarray:
    """Number of leading sorted ``vals`` for which the monotone predicate ``passes(v, x)`` holds.

    ``guess`` (exact unless a value lies within the tie tolerance of a group boundary) is checked;
    the wrong ones restart from ``fallback(indices)`` (a ``searchsorted`` on ``x ± tol``) and are
    moved by whole groups of equal values until exact, so rounding in ``x ± tol`` never changes
    a count.
    """
    r = guess.copy()
    wrong = _misplaced(vals, x, passes, r, np.arange(r.size))
    if wrong.size:
        r[wrong] = fallback(wrong)
    while wrong.size:
        wrong = _misplaced(vals, x, passes, r, wrong)
        left = wrong[(r[wrong] > 0) & ~passes(vals[np.maximum(r[wrong] - 1, 0)], x[wrong])]
        right = np.setdiff1d(wrong, left, assume_unique=True)
        r[left] = np.searchsorted(vals, vals[r[left] - 1], side="left")
        r[right] = np.searchsorted(vals, vals[r[right]], side="right")
    return r


def _misplaced(vals: np.ndarray, x: np.ndarray, passes, r: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The ``idx`` whose boundary ``r`` is wrong: the value before fails, or the one at ``r`` passes."""
    n, ri = vals.size, r[idx]
    left_fails = (ri > 0) & ~passes(vals[np.maximum(ri - 1, 0)], x[idx])
    right_passes = (ri < n) & passes(vals[np.minimum(ri, n - 1)], x[idx])
    return idx[left_fails | right_passes]


def _time_order(event: np.ndarray, time: np.ndarray):
    """Order by time with events first at ties, and each position's comparable-suffix start.

    Returns ``order`` (n,), ``start`` (n,) — for an event at sorted position p, the patients
    comparable to it are sorted positions ``start[p]:`` — and ``n_censored_tied`` (n,), the
    censorings at the same time as position p.
    """
    n = time.size
    by_time = np.argsort(time)
    t_sorted = time[by_time]
    dense = np.zeros(n, dtype=np.int64)
    np.cumsum(t_sorted[1:] != t_sorted[:-1], out=dense[1:])
    key = 2 * dense + ~event[by_time]  # (time rank, censored): events first at tied times
    regroup = np.argsort(key, kind="stable")  # nearly sorted already: cheap
    order, key = by_time[regroup], key[regroup]
    bounds = np.flatnonzero(key[1:] != key[:-1]) + 1  # starts of runs of equal key
    run = np.zeros(n, dtype=np.int64)
    run[bounds] = 1
    np.cumsum(run, out=run)
    run_end = np.append(bounds, n)
    start = run_end[run]  # an event's suffix starts after the events at its time
    nxt = np.minimum(run + 1, run_end.size - 1)
    censored_next = (run + 1 < run_end.size) & (key[np.minimum(run_end[run], n - 1)] == key + 1)
    return order, start, np.where(censored_next, run_end[nxt] - run_end[run], 0)


def _sort_and_rank(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted values and each value's position in that order (a permutation of 0..n-1).

    Equal values get distinct ranks in arbitrary order; every count below compares ranks with
    boundaries between groups of equal values, so that order never matters.
    """
    perm = np.argsort(values)
    rank = np.empty(values.size, dtype=np.int64)
    rank[perm] = np.arange(values.size)
    return values[perm], rank


def _pair_counts(est_sorted: np.ndarray, start: np.ndarray, rows: np.ndarray, tied_tol: float):
    """(less, tied, comparable) risk counts of the suffix ``start[p]:`` for each row p.

    ``less`` counts ranks below the first value within ``tied_tol`` of the row's risk; ``tied``
    the ranks up to the last such value, minus ``less``. Rows whose tie window holds only their
    own risk cannot have a tie in their suffix (they are not in it), so they skip the second count.
    """
    n = est_sorted.size
    vals, rank = _sort_and_rank(est_sorted)
    x, own = est_sorted[rows], rank[rows]
    new_value = np.r_[True, vals[1:] != vals[:-1]]  # starts of runs of equal values
    group_start, run = np.flatnonzero(new_value), np.cumsum(new_value) - 1
    group_end = np.append(group_start[1:], n)
    below = _boundary(vals, x, lambda v, xi: xi - v > tied_tol, group_start[run[own]],
                      lambda i: np.searchsorted(vals, x[i] - tied_tol, side="left"))
    upto = _boundary(vals, x, lambda v, xi: v - xi <= tied_tol, group_end[run[own]],
                     lambda i: np.searchsorted(vals, x[i] + tied_tol, side="right"))
    suffix = (n - start[rows]).astype(np.int64)
    maybe_tied = np.flatnonzero(upto - below > 1)
    counts = _count_dominated(n - 1 - np.arange(n), rank, np.r_[suffix, suffix[maybe_tied]],
                              np.r_[below, upto[maybe_tied]])
    less = counts[: rows.size]
    tied = np.zeros_like(less)
    tied[maybe_tied] = counts[rows.size:] - less[maybe_tied]
    return less, tied, suffix


def _concordance(event, time, estimate, weights, tied_tol) -> Concordance:
    """Weighted Harrell-type concordance; ``weights`` (n,) apply to the earlier (event) patient."""
    order, start, censored_tied = _time_order(event, time)
    rows = np.flatnonzero(event[order])
    less, tied, comparable = _pair_counts(estimate[order], start, rows, tied_tol)
    w = weights[order][rows]
    denominator = float(np.sum(w * comparable))
    if comparable.sum() == 0 or denominator == 0.0:
        raise ValueError("no comparable pairs (every patient censored, or all events tied at the last time)")
    numerator = float(np.sum(w * (less + 0.5 * tied)))
    return Concordance(numerator / denominator, int(less.sum()), int((comparable - less - tied).sum()),
                       int(tied.sum()), int(censored_tied[rows].sum()))


def _check_tol(tied_tol: float) -> float:
    if not tied_tol >= 0:
        raise ValueError(f"`tied_tol` must be >= 0, got {tied_tol}")
    return float(tied_tol)


def _check_estimate(estimate, n: int, name: str = "estimate") -> np.ndarray:
    estimate = np.asarray(estimate, dtype=np.float64)
    if estimate.shape != (n,) or not np.isfinite(estimate).all():
        raise ValueError(f"`{name}` must be finite with shape ({n},), got shape {estimate.shape}")
    return estimate


def harrell_c(estimate, event, time, tied_tol: float = 1e-8) -> Concordance:
    r"""Harrell's concordance index (Harrell et al., 1996).

    .. math::
        C = \frac{\sum_{i \ne j} \delta_i\, A_{ij}\,
                  [1(\hat f_i > \hat f_j) + \tfrac12 1(\hat f_i \approx \hat f_j)]}
                 {\sum_{i \ne j} \delta_i\, A_{ij}},
        \qquad A_{ij} = 1(t_i < t_j) + 1(t_i = t_j,\ \delta_j = 0)

    i.e. a pair is comparable when the earlier time is an event, and an event is also comparable
    with a censoring at the same time; two events at the same time are not. Tied risks
    (:math:`|\hat f_i - \hat f_j| \le` ``tied_tol``) count ½. Equals scikit-survival
    ``concordance_index_censored`` (all five outputs) and lifelines
    ``concordance_index(time, -estimate, event)`` (with ``tied_tol=0``: lifelines ties only equal
    risks); O(n log n) time, O(n) memory.

    Args:
        estimate (array-like, float): shape (n,), risk score (higher = earlier event).
        event (array-like, bool): shape (n,).
        time (array-like, float): shape (n,).
        tied_tol: risk tie tolerance (scikit-survival's default 1e-8; 0 for exact ties as lifelines).

    Returns:
        :class:`Concordance` ``(cindex, concordant, discordant, tied_risk, tied_time)``.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> time = rng.exponential(size=200); event = rng.random(200) < 0.6
        >>> round(harrell_c(-time + rng.normal(size=200), event, time).cindex, 4)
        0.709
    """
    event, time = check_survival(event, time)
    estimate = _check_estimate(estimate, time.size)
    return _concordance(event, time, estimate, np.ones(time.size), _check_tol(tied_tol))


def uno_c(train_event, train_time, event, time, estimate, tau: float | None = None,
          tied_tol: float = 1e-8) -> Concordance:
    r"""Uno's concordance index with inverse probability of censoring weights (Uno et al., 2011).

    .. math::
        C_\tau = \frac{\sum_{i \ne j} \delta_i\, \hat G(t_i)^{-2}\, 1(t_i < \tau)\, A_{ij}\,
                 [1(\hat f_i > \hat f_j) + \tfrac12 1(\hat f_i \approx \hat f_j)]}
                 {\sum_{i \ne j} \delta_i\, \hat G(t_i)^{-2}\, 1(t_i < \tau)\, A_{ij}}

    with :math:`A_{ij}` as in :func:`harrell_c` and :math:`\hat G` the censoring Kaplan-Meier
    curve of the *training* data (:func:`ctvl.survival.curves.censoring_survival`). Equals
    scikit-survival ``concordance_index_ipcw``, including its convention
    :math:`\hat G(t_i)` rather than R's :math:`\hat G(t_i-)` (they differ when an event and a
    censoring share a time, scikit-survival #428). Where scikit-survival raises because a test
    event lies beyond the last training time, :math:`\hat G` is held at its last value; events
    with :math:`\hat G = 0` get weight 0 (logged). Counts are unweighted, as in scikit-survival.

    Args:
        train_event (array-like, bool): shape (n_train,).
        train_time (array-like, float): shape (n_train,).
        event (array-like, bool): shape (n,), test events.
        time (array-like, float): shape (n,), test times.
        estimate (array-like, float): shape (n,), risk score (higher = earlier event).
        tau: truncation time; only events with ``time < tau`` carry weight. None: no truncation.
        tied_tol: risk tie tolerance.

    Returns:
        :class:`Concordance`.
    """
    event, time = check_survival(event, time)
    estimate = _check_estimate(estimate, time.size)
    use = event if tau is None else event & (time < tau)
    weights = np.zeros(time.size)
    g = censoring_survival(train_event, train_time, time[use])
    weights[use] = np.square(_inverse(g, "test event times"))
    return _concordance(event, time, estimate, weights, _check_tol(tied_tol))


def antolini_c(surv, times_grid, event, time) -> float:
    r"""Antolini's time-dependent concordance for predicted survival curves (Antolini et al., 2005).

    .. math::
        C^{td} = \frac{\sum_{i \ne j} \delta_i\, A_{ij}\, 1\big(\hat S_i(t_i) < \hat S_j(t_i)\big)}
                      {\sum_{i \ne j} \delta_i\, A_{ij}}

    with :math:`A_{ij}` as in :func:`harrell_c`; tied survival gets no credit. :math:`\hat S(t)` is
    read from the column of the last grid time :math:`\le t` (the first column before the grid),
    as pycox ``EvalSurv(...).concordance_td("antolini")`` with ``steps="post"``, which it equals.

    Cost: pairs inside one grid interval go through the dominance count; an event against every
    later interval is one sort per grid column holding events, so O(n log n · T) at worst and
    O(n) memory beyond ``surv``.

    Args:
        surv (array-like, float): shape (n, T), :math:`\hat S_i` at ``times_grid`` (rows = patients).
        times_grid (array-like, float): shape (T,), strictly increasing.
        event (array-like, bool): shape (n,).
        time (array-like, float): shape (n,).

    Returns:
        float.
    """
    event, time = check_survival(event, time)
    grid = np.asarray(times_grid, dtype=np.float64)
    surv = np.asarray(surv, dtype=np.float64)
    if grid.ndim != 1 or np.any(np.diff(grid) <= 0):
        raise ValueError("`times_grid` must be 1-D and strictly increasing")
    if surv.shape != (time.size, grid.size) or not np.isfinite(surv).all():
        raise ValueError(f"`surv` must be finite with shape {(time.size, grid.size)}, got {surv.shape}")
    order, start, _ = _time_order(event, time)
    col = np.clip(np.searchsorted(grid, time[order], side="right") - 1, 0, grid.size - 1)  # non-decreasing
    group_end = np.searchsorted(col, col, side="right")
    rows = np.flatnonzero(event[order])
    comparable = (time.size - start[rows]).sum()
    if comparable == 0:
        raise ValueError("no comparable pairs (every patient censored, or all events tied at the last time)")
    own = surv[order, col]  # each patient's survival at its own grid column, in time order
    # same interval: suffix from start minus suffix from the interval end, counting S_j > S_i
    n = own.size
    x = own[rows]
    vals, rank = _sort_and_rank(own)
    upto = np.searchsorted(vals, x, side="right")
    lims = np.r_[n - start[rows], n - group_end[rows]].astype(np.int64)
    le = _count_dominated(n - 1 - np.arange(n), rank, lims, np.r_[upto, upto])
    concordant = (lims[: rows.size] - le[: rows.size]) - (lims[rows.size:] - le[rows.size:])
    # later intervals: all comparable, compared in the event's own column
    event_col = col[rows]
    for c in np.unique(event_col):
        hit = event_col == c
        later = order[group_end[rows[hit][0]]:]
        if later.size:
            concordant[hit] += later.size - np.searchsorted(np.sort(surv[later, c]), x[hit], side="right")
    return float(concordant.sum() / comparable)
