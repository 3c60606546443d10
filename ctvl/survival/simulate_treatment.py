r"""Simulated treatment-effect survival data with a known, possibly time-varying hazard ratio.

Covariates :math:`x \sim N(0, I_p)` (p >= 4). Hazard

.. math::
    h(t \mid x, a) = h_0(t)\, \exp\big(\beta(x) + a\, g(t, x)\big), \qquad
    h_0(t) = \frac{k}{\sigma}\Big(\frac{t}{\sigma}\Big)^{k-1},\quad
    \beta(x) = 0.7 x_0 - 0.5 x_1 + 0.4 x_2 x_3 + 0.3 x_1^2 - 0.3

(Weibull :math:`k = 1.5`, :math:`\sigma = 5`; the other covariates are noise). True log hazard ratio
:math:`g` (``effect``):

- ``constant``: :math:`-0.5`;
- ``time_varying``: :math:`-0.8 + 0.32\,\min(t, 5)`, protective early, harmful after t = 2.5 (crosses zero
  near the median follow-up);
- ``covariate``: :math:`-0.5 + 0.5 x_1` (smooth in a covariate);
- ``subgroups``: :math:`(-1.0, 0.0, +0.6)` in three latent subgroups set by :math:`x_0` tertiles of N(0, 1)
  (:func:`latent_subgroup`); no group is the no-effect group by construction of the model.

Treatment is confounded: :math:`A \sim \text{Bernoulli}(e(x))` with :math:`e` from
:func:`ctvl.survival.simulate.compute_propensity` on the score :math:`s = x_0 + 0.5 x_2` (which raises the
hazard: the treated are sicker) at log-odds ``confounding`` per unit, intercept solved for the treated
fraction. Event times invert the cumulative hazard on a grid of step 0.02 up to t = 40 (a later event is
set to 40);
censoring is exponential, calibrated to ``censoring_rate`` (:func:`ctvl.survival.simulate.compute_censoring`).

Entry point: :func:`make_treatment_cohort` -> (table, true log-HR on a grid, per-patient truth).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from ctvl.survival.simulate import compute_censoring, make_treatment

__all__ = ["EFFECTS", "SUBGROUP_EFFECTS", "latent_subgroup", "true_log_hr", "make_treatment_cohort"]

EFFECTS = ("constant", "time_varying", "covariate", "subgroups")
SUBGROUP_EFFECTS = (-1.0, 0.0, 0.6)
_SHAPE, _SCALE, _T_END, _STEP = 1.5, 5.0, 40.0, 0.02
_TERTILE = 0.4307  # N(0, 1) quantile at 2/3


def latent_subgroup(X) -> np.ndarray:
    """(n,) int64 subgroup 0/1/2 of each row: :math:`x_0` below / between / above the N(0, 1) tertiles."""
    x0 = np.asarray(X, np.float64)[:, 0]
    return np.digitize(x0, [-_TERTILE, _TERTILE]).astype(np.int64)


def true_log_hr(X, times, effect: str) -> np.ndarray:
    """(n, T) true :math:`g(t, x)` at ``times`` (T,) for each row of ``X`` (n, p) (definitions in the module doc)."""
    X = np.asarray(X, np.float64)
    t = np.asarray(times, np.float64)[None, :]
    n = X.shape[0]
    if effect == "constant":
        return np.full((n, t.size), -0.5)
    if effect == "time_varying":
        return np.broadcast_to(-0.8 + 0.32 * np.minimum(t, 5.0), (n, t.size)).copy()
    if effect == "covariate":
        return np.broadcast_to(-0.5 + 0.5 * X[:, 1:2], (n, t.size)).copy()
    if effect == "subgroups":
        return np.broadcast_to(np.asarray(SUBGROUP_EFFECTS)[latent_subgroup(X)][:, None], (n, t.size)).copy()
    raise ValueError(f"unknown effect {effect!r}; choose from {EFFECTS}")


def _baseline_log_hazard(X: np.ndarray) -> np.ndarray:
    x0, x1, x2, x3 = X[:, 0], X[:, 1], X[:, 2], X[:, 3]
    return 0.7 * x0 - 0.5 * x1 + 0.4 * x2 * x3 + 0.3 * x1**2 - 0.3


def _event_times(X: np.ndarray, a: np.ndarray, effect: str, unit_exponentials: np.ndarray) -> np.ndarray:
    """Invert :math:`H(t) = \\int_0^t h` (left Riemann sum on the grid) at :math:`E_i \\sim Exp(1)`."""
    grid = np.arange(0.0, _T_END + _STEP, _STEP)
    mid = grid[:-1] + _STEP / 2
    h0 = _SHAPE / _SCALE * (mid / _SCALE) ** (_SHAPE - 1)  # (G,)
    log_h = _baseline_log_hazard(X)[:, None] + a[:, None] * true_log_hr(X, mid, effect)  # (n, G)
    cum = np.cumsum(h0[None, :] * np.exp(log_h) * _STEP, axis=1)  # H at grid[1:]
    times = np.empty(X.shape[0])
    for i in range(X.shape[0]):
        j = int(np.searchsorted(cum[i], unit_exponentials[i]))
        if j >= cum.shape[1]:
            times[i] = _T_END
            continue
        before = cum[i, j - 1] if j else 0.0
        times[i] = grid[j] + _STEP * (unit_exponentials[i] - before) / (cum[i, j] - before)
    return times


def make_treatment_cohort(
    n: int = 2000,
    num_covariates: int = 6,
    treated_fraction: float = 0.5,
    confounding: float = 1.0,
    effect: Literal["constant", "time_varying", "covariate", "subgroups"] = "constant",
    censoring_rate: float = 0.4,
    grid_size: int = 20,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A simulated cohort with known treatment effect.

    Args:
        n: patients.
        num_covariates: p >= 4 covariates ``x0 .. x{p-1}``.
        treated_fraction: expected share treated (0.1: about 10:1 control:treated; 0.5: 1:1).
        confounding: log-odds of treatment per unit of the confounder score (0 = randomised).
        effect: the true log hazard ratio (module doc).
        censoring_rate: expected censored share in [0, 1).
        grid_size: points of the truth grid: quantiles 5 %..95 % of the observed times.
        seed: all draws.

    Returns:
        ``(table, true_log_hr, patients)``: ``table`` has ``case_id``, the covariates, ``treatment`` (0/1),
        ``time``, ``event``; ``true_log_hr`` is long (``case_id``, ``time``, ``log_hr``), the same layout as
        ``ctvl treatment fit``'s ``hazard_ratios.csv``; ``patients`` has ``case_id``, ``propensity``,
        ``subgroup`` (the latent one) and ``event_time`` (before censoring).
    """
    if num_covariates < 4:
        raise ValueError(f"`num_covariates` must be >= 4 (x0..x3 drive the hazard), got {num_covariates}")
    if n < 10:
        raise ValueError(f"`n` must be >= 10, got {n}")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, num_covariates))
    a, propensity = make_treatment(X[:, 0] + 0.5 * X[:, 2], treated_fraction, confounding, rng=rng)
    event_time = _event_times(X, a, effect, -np.log1p(-rng.random(n)))
    time, event = compute_censoring(event_time, censoring_rate, -np.log1p(-rng.random(n)))
    case_id = np.array([f"sim{i:06d}" for i in range(n)], dtype=object)
    table = pd.DataFrame(X, columns=[f"x{j}" for j in range(num_covariates)])
    table.insert(0, "case_id", case_id)
    table["treatment"], table["time"], table["event"] = a, time, event.astype(np.int64)
    grid = np.quantile(time, np.linspace(0.05, 0.95, grid_size))
    truth = pd.DataFrame({"case_id": np.repeat(case_id, grid.size), "time": np.tile(grid, n),
                          "log_hr": true_log_hr(X, grid, effect).ravel()})
    patients = pd.DataFrame({"case_id": case_id, "propensity": propensity, "subgroup": latent_subgroup(X),
                             "event_time": event_time})
    return table, truth, patients
