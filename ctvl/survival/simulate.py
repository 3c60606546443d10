r"""Simulated survival data: proportional-hazards event times and calibrated independent censoring.

Event times are drawn by inverting the survival function of a Weibull proportional-hazards model
(exponential for ``shape = 1``; Bender, Augustin & Blettner, Stat. Med. 24:1713, 2005); censoring times
are exponential with a rate solved so that the expected censored fraction equals a target.
Pure NumPy functions: the ``compute_*`` ones are deterministic given their uniform or exponential
draws, the ``make_*`` one draws them from ``rng`` (a ``np.random.Generator`` or an int seed).

Entry points:
    >>> import numpy as np
    >>> time, event, event_time = make_survival_times(np.zeros(5), censoring_rate=0.4, scale=10.0, rng=0)
    >>> time.shape, event.dtype
    ((5,), dtype('bool'))

Treatment assignment (:func:`make_treatment`) is confounded through a score of the covariates:
a logistic propensity whose intercept is solved so that the expected treated fraction is the target.

Used by :mod:`ctvl.data.synthetic.cohort` for the synthetic cohort's survival truth.
"""

from __future__ import annotations

import numpy as np


def compute_ph_event_times(log_hazard, uniforms, scale: float = 1.0, shape: float = 1.0) -> np.ndarray:
    r"""Weibull proportional-hazards event times by inverse-CDF sampling (Bender et al. 2005).

    With baseline survival :math:`S_0(t) = \exp(-(t/\sigma)^\nu)`, i.e. cumulative hazard
    :math:`\Lambda_0(t) = \lambda t^\nu` with :math:`\lambda = \sigma^{-\nu}`, the survival function
    :math:`S(t \mid \eta) = \exp(-\lambda t^\nu e^{\eta})` equals :math:`U` at

    .. math::
        T = \left(\frac{-\log U}{\lambda\, e^{\eta}}\right)^{1/\nu}
          = \sigma \left(-\log U\; e^{-\eta}\right)^{1/\nu},
        \qquad U \sim \mathcal{U}(0, 1],

    so :math:`T` has hazard :math:`h(t) = \lambda \nu t^{\nu - 1} e^{\eta}`. ``shape = 1`` is the
    exponential model with rate :math:`e^{\eta} / \sigma` (mean :math:`\sigma e^{-\eta}`).

    Args:
        log_hazard (array of float): :math:`\eta`, shape (n,).
        uniforms (array of float): :math:`U` in (0, 1], shape (n,); ``U = 1`` gives ``T = 0``.
        scale: baseline scale :math:`\sigma` (time units), > 0.
        shape: Weibull shape :math:`\nu`, > 0 (> 1: hazard rises with time).

    Returns:
        np.ndarray, float64, shape (n,): event times.

    >>> u = np.exp(-np.array([1.0, 1.0]))  # -log U = 1
    >>> compute_ph_event_times(np.array([0.0, np.log(4.0)]), u, scale=20.0, shape=2.0)
    array([20., 10.])
    """
    if scale <= 0 or shape <= 0:
        raise ValueError(f"`scale` and `shape` must be > 0, got {scale}, {shape}")
    # Written as sigma * (...)^(1/nu), not via lambda: this exact order of operations is what the
    # synthetic cohort's stored times were generated with (bit-for-bit reproducibility).
    return scale * (-np.log(uniforms) * np.exp(-np.asarray(log_hazard, float))) ** (1.0 / shape)


def compute_censoring_rate(event_times, censoring_rate: float) -> float:
    r"""Rate :math:`\mu` of exponential censoring such that the expected censored fraction is the target.

    .. math::
        \frac{1}{n}\sum_i P(C_i < T_i) = \frac{1}{n}\sum_i \left(1 - e^{-\mu T_i}\right) = c

    with :math:`c` = ``censoring_rate`` and :math:`C_i \sim \text{Exp}(\mu)`, solved by 200 bisection
    steps on :math:`\log\mu \in [-30, 30]` (the left side increases with :math:`\mu`).

    Args:
        event_times (array of float): :math:`T_i`, shape (n,).
        censoring_rate: target fraction :math:`c`; <= 0 means no censoring (returns 0).

    Returns:
        :math:`\mu` (per time unit); 0.0 when ``censoring_rate <= 0``.

    >>> mu = compute_censoring_rate(np.array([1.0, 2.0, 4.0]), 0.5)
    >>> round(float(np.mean(1 - np.exp(-mu * np.array([1.0, 2.0, 4.0])))), 6)
    0.5
    """
    if censoring_rate <= 0:
        return 0.0
    lo, hi = -30.0, 30.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.mean(-np.expm1(-np.exp(mid) * event_times)) < censoring_rate else (lo, mid)
    return float(np.exp(0.5 * (lo + hi)))


def compute_censoring(event_times, censoring_rate: float, unit_exponentials) -> tuple[np.ndarray, np.ndarray]:
    r"""Observed times and event indicators under exponential censoring calibrated to ``censoring_rate``.

    .. math::
        C_i = E_i / \mu, \qquad \tilde T_i = \min(T_i, C_i), \qquad \delta_i = [T_i \le C_i]

    with :math:`E_i \sim \text{Exp}(1)` and :math:`\mu` from :func:`compute_censoring_rate`
    (:math:`C_i = \infty` when :math:`\mu = 0`).

    Args:
        event_times (array of float): latent :math:`T_i`, shape (n,).
        censoring_rate: target censored fraction in [0, 1).
        unit_exponentials (array of float): :math:`E_i`, shape (n,).

    Returns:
        (time, event): float64 observed times and bool event indicators (True = event observed), shape (n,).

    >>> time, event = compute_censoring(np.array([1.0, 2.0]), 0.0, np.array([0.5, 0.5]))
    >>> time.tolist(), event.tolist()
    ([1.0, 2.0], [True, True])
    """
    event_times = np.asarray(event_times, float)
    mu = compute_censoring_rate(event_times, censoring_rate)
    censor = np.asarray(unit_exponentials, float) / mu if mu > 0 else np.full(len(event_times), np.inf)
    return np.minimum(event_times, censor), event_times <= censor


def make_survival_times(
    log_hazard,
    censoring_rate: float = 0.0,
    *,
    scale: float = 1.0,
    shape: float = 1.0,
    rng: np.random.Generator | int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Draw right-censored Weibull proportional-hazards data for the log-hazards ``log_hazard``.

    :math:`T_i = \sigma(-\log U_i\, e^{-\eta_i})^{1/\nu}` (:func:`compute_ph_event_times`) with
    :math:`U_i = 1 - V_i`, :math:`V_i \sim \mathcal{U}[0, 1)`, censored by :math:`C_i = E_i / \mu`
    (:func:`compute_censoring`), :math:`E_i = -\log(1 - V'_i)`. The draws are the n values of ``U`` then
    the n values of ``E``, from one generator.

    Args:
        log_hazard (array of float): :math:`\eta`, shape (n,).
        censoring_rate: target censored fraction in [0, 1).
        scale: baseline scale :math:`\sigma`; the baseline rate is :math:`\lambda = \sigma^{-\nu}`.
        shape: Weibull shape :math:`\nu` (1 = exponential).
        rng: generator or seed (``np.random.default_rng`` semantics; ``None`` = fresh OS entropy).

    Returns:
        (time, event, event_time): observed time (float64), event indicator (bool) and latent event
        time (float64), each shape (n,).

    >>> time, event, _ = make_survival_times(np.zeros(20000), censoring_rate=0.3, scale=2.0, rng=0)
    >>> round(float(1 - event.mean()), 2)
    0.3
    """
    if not 0.0 <= censoring_rate < 1.0:
        raise ValueError(f"`censoring_rate` must be in [0, 1), got {censoring_rate}")
    log_hazard = np.asarray(log_hazard, float)
    rng = np.random.default_rng(rng)
    uniforms = 1.0 - rng.random(log_hazard.shape[0])  # U in (0, 1]: -log U is finite
    unit_exponentials = -np.log1p(-rng.random(log_hazard.shape[0]))
    event_time = compute_ph_event_times(log_hazard, uniforms, scale, shape)
    time, event = compute_censoring(event_time, censoring_rate, unit_exponentials)
    return time, event, event_time


def compute_propensity(score, treated_fraction: float, strength: float = 1.0) -> np.ndarray:
    r"""Logistic propensity :math:`e_i = \sigma(b + \gamma s_i)` with :math:`b` solved so that
    :math:`\frac{1}{n}\sum_i e_i` equals the treated fraction.

    .. math::
        \frac{1}{n}\sum_i \frac{1}{1 + e^{-(b + \gamma s_i)}} = \pi

    with :math:`\gamma` = ``strength`` (0: randomised, every :math:`e_i = \pi`) and :math:`\pi` =
    ``treated_fraction``, by 200 bisection steps on :math:`b \in [-50, 50]` (the mean rises with b).

    Args:
        score (array of float): confounder score :math:`s_i` (e.g. a standardised linear
            combination of the covariates that also drive the hazard), shape (n,).
        treated_fraction: :math:`\pi` in (0, 1).
        strength: :math:`\gamma`, the log-odds of treatment per unit of score.

    Returns:
        np.ndarray, float64, shape (n,): :math:`e_i` in (0, 1).

    >>> e = compute_propensity(np.array([-1.0, 0.0, 1.0]), 0.1, strength=2.0)
    >>> round(float(e.mean()), 6), bool(e[0] < e[1] < e[2])
    (0.1, True)
    """
    if not 0.0 < treated_fraction < 1.0:
        raise ValueError(f"`treated_fraction` must be in (0, 1), got {treated_fraction}")
    logit = strength * np.asarray(score, float)
    lo, hi = -50.0, 50.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.mean(1.0 / (1.0 + np.exp(-(mid + logit)))) < treated_fraction else (lo, mid)
    return 1.0 / (1.0 + np.exp(-(0.5 * (lo + hi) + logit)))


def make_treatment(score, treated_fraction: float, strength: float = 1.0,
                   rng: np.random.Generator | int | None = None) -> tuple[np.ndarray, np.ndarray]:
    r"""Draw a binary treatment :math:`A_i \sim \text{Bernoulli}(e_i)` with :func:`compute_propensity`.

    Args:
        score, treated_fraction, strength: see :func:`compute_propensity`.
        rng: generator or seed; the draws are n uniforms, :math:`A_i = [V_i < e_i]`.

    Returns:
        (treatment, propensity): int64 0/1 and float64 :math:`e_i`, each shape (n,).

    >>> a, e = make_treatment(np.zeros(20000), 0.25, rng=0)
    >>> bool(abs(a.mean() - 0.25) < 0.01), round(float(e[0]), 6)
    (True, 0.25)
    """
    propensity = compute_propensity(score, treated_fraction, strength)
    draws = np.random.default_rng(rng).random(propensity.shape[0])
    return (draws < propensity).astype(np.int64), propensity
