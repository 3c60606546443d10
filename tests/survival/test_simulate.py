"""Simulated survival data (ctvl.survival.simulate): the times follow the PH model, censoring hits its target.

Distribution checks use 20k draws with fixed seeds; tolerances are several standard errors wide.
The hazard ratio is recovered by ctvl's own Cox partial likelihood (checked against lifelines in
``test_losses.py``), maximised over one coefficient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

from ctvl.survival.cox import neg_partial_log_likelihood
from ctvl.survival.simulate import (
    compute_censoring,
    compute_censoring_rate,
    compute_ph_event_times,
    make_survival_times,
)

N = 20_000


def _cox_log_hr(x: np.ndarray, event: np.ndarray, time: np.ndarray) -> float:
    """Maximum partial-likelihood coefficient of one covariate (no ties: times are continuous)."""
    e, t, xt = torch.as_tensor(event), torch.as_tensor(time), torch.as_tensor(x, dtype=torch.float64)

    def loss(beta: float) -> float:
        return float(neg_partial_log_likelihood(beta * xt, e, t))

    return float(minimize_scalar(loss, bounds=(-5.0, 5.0), method="bounded", options={"xatol": 1e-6}).x)


@pytest.mark.parametrize("rate", [0.5, 2.0])
def test_exponential_mean_is_one_over_rate(rate):
    _, event, event_time = make_survival_times(np.zeros(N), scale=1.0 / rate, shape=1.0, rng=0)
    assert event.all()
    assert np.mean(event_time) == pytest.approx(1.0 / rate, rel=0.03)  # SE = 0.7 %


@pytest.mark.parametrize("shape", [1.0, 1.2, 2.5])
def test_weibull_survival_function(shape):
    """Empirical P(T > t) equals exp(-(t / scale)^shape e^eta) at the quartiles."""
    scale, eta = 20.0, 0.4
    _, _, event_time = make_survival_times(np.full(N, eta), scale=scale, shape=shape, rng=1)
    for s in (0.75, 0.5, 0.25):
        t = scale * (-np.log(s) * np.exp(-eta)) ** (1.0 / shape)
        assert np.mean(event_time > t) == pytest.approx(s, abs=0.015)  # SE <= 0.0035


def test_scale_form_equals_rate_form():
    """sigma (-log U e^-eta)^(1/nu) == (-log U / (lambda e^eta))^(1/nu) with lambda = sigma^-nu."""
    rng = np.random.default_rng(2)
    eta, u = rng.normal(size=100), 1.0 - rng.random(100)
    scale, shape = 20.0, 1.2
    lam = scale ** -shape
    np.testing.assert_allclose(compute_ph_event_times(eta, u, scale, shape),
                               (-np.log(u) / (lam * np.exp(eta))) ** (1.0 / shape), rtol=1e-12)


@pytest.mark.parametrize("shape,censoring_rate", [(1.0, 0.0), (1.0, 0.3), (1.5, 0.3), (1.5, 0.5)])
def test_cox_recovers_hazard_ratio(shape, censoring_rate):
    log_hr = 0.7
    x = np.repeat([0.0, 1.0], N // 2)
    time, event, _ = make_survival_times(log_hr * x, censoring_rate, scale=10.0, shape=shape, rng=3)
    assert _cox_log_hr(x, event, time) == pytest.approx(log_hr, abs=0.05)  # SE ~ 0.016


@pytest.mark.parametrize("censoring_rate", [0.05, 0.3, 0.6, 0.9])
@pytest.mark.parametrize("shape", [1.0, 1.2])
def test_censoring_hits_target(censoring_rate, shape):
    log_hazard = np.random.default_rng(4).normal(0.0, 1.5, N)
    _, event, _ = make_survival_times(log_hazard, censoring_rate, scale=20.0, shape=shape, rng=5)
    assert 1.0 - event.mean() == pytest.approx(censoring_rate, abs=0.02)  # SE <= 0.0035


def test_censoring_rate_solves_its_equation():
    event_time = np.random.default_rng(6).exponential(5.0, 1000)
    mu = compute_censoring_rate(event_time, 0.4)
    assert np.mean(1.0 - np.exp(-mu * event_time)) == pytest.approx(0.4, abs=1e-12)
    assert compute_censoring_rate(event_time, 0.0) == 0.0


def test_censoring_observes_the_minimum():
    event_time = np.array([1.0, 2.0, 3.0, 4.0])
    unit = np.array([0.1, 5.0, 0.2, 9.0])
    time, event = compute_censoring(event_time, 0.5, unit)
    censor = unit / compute_censoring_rate(event_time, 0.5)
    np.testing.assert_array_equal(time, np.minimum(event_time, censor))
    np.testing.assert_array_equal(event, event_time <= censor)
    time, event = compute_censoring(event_time, 0.0, unit)
    np.testing.assert_array_equal(time, event_time)
    assert event.all() and event.dtype == bool


def test_reproducible_by_seed():
    log_hazard = np.linspace(-2, 2, 500)
    first = make_survival_times(log_hazard, 0.3, scale=20.0, shape=1.2, rng=7)
    again = make_survival_times(log_hazard, 0.3, scale=20.0, shape=1.2, rng=np.random.default_rng(7))
    other = make_survival_times(log_hazard, 0.3, scale=20.0, shape=1.2, rng=8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[2], other[2])


@pytest.mark.parametrize("kwargs", [dict(scale=0.0), dict(shape=-1.0), dict(censoring_rate=1.0),
                                    dict(censoring_rate=-0.1)])
def test_invalid_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        make_survival_times(np.zeros(3), **{"censoring_rate": 0.2, **kwargs}, rng=0)


def test_confounded_treatment_hits_the_treated_fraction_and_follows_the_score():
    from ctvl.survival.simulate import compute_propensity, make_treatment

    score = np.random.default_rng(1).normal(size=50_000)
    for fraction in (0.1, 0.5):
        a, e = make_treatment(score, fraction, strength=1.5, rng=2)
        assert abs(e.mean() - fraction) < 1e-9 and abs(a.mean() - fraction) < 0.01
        # Confounded: the treated have higher scores, and the log-odds are linear in the score, slope 1.5.
        assert score[a == 1].mean() > score[a == 0].mean() + 0.5
        np.testing.assert_allclose(np.diff(np.log(e / (1 - e))[:2]) / np.diff(score[:2]), [1.5], rtol=1e-9)
    np.testing.assert_allclose(compute_propensity(score, 0.3, strength=0.0), 0.3)
    a1, _ = make_treatment(score, 0.3, rng=7)
    a2, _ = make_treatment(score, 0.3, rng=7)
    assert (a1 == a2).all()
    with pytest.raises(ValueError, match="treated_fraction"):
        compute_propensity(score, 1.0)
