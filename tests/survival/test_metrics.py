"""ctvl's survival metrics against scikit-survival, lifelines and pycox.

Three layers: frozen peer values (``tests/benchmarks/metric_references.json``, no peer needed),
the peers run live on random cohorts with tied times and risks, and the peers run live on the
real data sets shipped with scikit-survival. Then ctvl's own conventions (scikit-survival #511,
zero censoring survival, validation) and invariants.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from ctvl.survival import curves
from ctvl.survival.metrics import (
    _count_dominated,
    antolini_c,
    brier_score,
    censoring_survival,
    cumulative_dynamic_auc,
    harrell_c,
    integrated_brier_score,
    kaplan_meier,
    logrank_test,
    risk_groups,
    uno_c,
)

REFERENCES = Path(__file__).parents[1] / "benchmarks" / "metric_references.json"
TOL = 1e-9

# (seed, decimals of time and risk: 0 = heavy ties, censoring rate)
GRID = [(s, d, c) for s, (d, c) in enumerate([(0, 0.2), (0, 0.5), (0, 0.8), (1, 0.2), (1, 0.5),
                                               (1, 0.8), (2, 0.5), (6, 0.5), (6, 0.9)])]


def make_cohort(seed: int, decimals: int, censoring: float, n: int = 150):
    """Test cohort, training cohort inside its follow-up, curves and evaluation times."""
    rng = np.random.default_rng(seed)
    risk = np.round(rng.normal(size=n), max(decimals - 1, 0))
    time = np.round(rng.exponential(np.exp(-risk)) * 10, decimals)
    event = rng.random(n) >= censoring
    event[np.argmin(time)] = True
    train_time = np.round(rng.exponential(size=2 * n) * 10, decimals)
    train_time[0] = time.max() + 1.0
    train_event = rng.random(2 * n) >= censoring
    times = np.unique(np.quantile(time, np.linspace(0.1, 0.8, 6)))
    surv = np.exp(-np.exp(risk)[:, None] * times / 10)
    return dict(risk=risk, time=time, event=event, train_time=train_time, train_event=train_event,
                times=times, surv=surv)


@pytest.fixture(params=GRID, ids=lambda p: f"seed{p[0]}-dec{p[1]}-cens{p[2]}")
def cohort(request):
    return make_cohort(*request.param)


def surv_array(event, time):
    from sksurv.util import Surv

    return Surv.from_arrays(event, time)


# ----------------------------------------------------------------------------- frozen references


@pytest.fixture(scope="module", params=["ties_heavy", "ties_some", "continuous"])
def reference(request):
    case = json.loads(REFERENCES.read_text())["cases"][request.param]
    return {k: np.asarray(v) for k, v in case["inputs"].items()}, case["expected"]


def test_frozen_concordance(reference):
    a, ref = reference
    got = harrell_c(a["risk"], a["event"], a["time"])
    assert got.cindex == pytest.approx(ref["harrell_sksurv"][0], abs=TOL)
    assert got.cindex == pytest.approx(ref["harrell_lifelines"], abs=TOL)
    assert list(got[1:]) == ref["harrell_sksurv"][1:]
    for tau, key in ((None, "uno_sksurv"), (ref["uno_tau"], "uno_tau_sksurv")):
        got = uno_c(a["train_event"], a["train_time"], a["event"], a["time"], a["risk"], tau=tau)
        assert got.cindex == pytest.approx(ref[key][0], abs=TOL)
        assert list(got[1:]) == ref[key][1:]
    got = antolini_c(a["surv"], a["times"], a["event"], a["time"])
    assert got == pytest.approx(ref["antolini_pycox"], abs=TOL)


def test_frozen_curves(reference):
    a, ref = reference
    train = (a["train_event"], a["train_time"], a["event"], a["time"])
    np.testing.assert_allclose(brier_score(*train, a["surv"], a["times"]), ref["brier_sksurv"],
                               rtol=0, atol=TOL)
    assert integrated_brier_score(*train, a["surv"], a["times"]) == pytest.approx(ref["ibs_sksurv"], abs=TOL)
    auc, mean_auc = cumulative_dynamic_auc(*train, a["risk"], a["times"])
    np.testing.assert_allclose(auc, ref["auc_sksurv"], rtol=0, atol=TOL)
    assert mean_auc == pytest.approx(ref["mean_auc_sksurv"], abs=TOL)
    t, s, ci = kaplan_meier(a["event"], a["time"], conf_level=0.95)
    np.testing.assert_array_equal(t, ref["km_times_sksurv"])
    np.testing.assert_allclose(s, ref["km_surv_sksurv"], rtol=0, atol=TOL)
    np.testing.assert_allclose(s, ref["km_surv_lifelines"], rtol=0, atol=TOL)
    np.testing.assert_allclose(ci, ref["km_ci_sksurv"], rtol=0, atol=TOL)
    two = logrank_test(a["event"], a["time"], a["group"] == 0).statistic
    assert two == pytest.approx(ref["logrank2_lifelines"], rel=TOL)
    three = logrank_test(a["event"], a["time"], a["group"]).statistic
    assert three == pytest.approx(ref["logrank3_lifelines"], rel=TOL)


# ----------------------------------------------------------------------------- live peers, random data


def test_harrell_matches_sksurv_and_lifelines(cohort):
    sk = pytest.importorskip("sksurv.metrics")
    lifelines_utils = pytest.importorskip("lifelines.utils")
    c = cohort
    expected = sk.concordance_index_censored(c["event"], c["time"], c["risk"])
    got = harrell_c(c["risk"], c["event"], c["time"])
    assert got.cindex == pytest.approx(expected[0], abs=TOL)
    assert tuple(got[1:]) == tuple(expected[1:])
    lifelines_c = lifelines_utils.concordance_index(c["time"], -c["risk"], c["event"])
    assert got.cindex == pytest.approx(lifelines_c, abs=TOL)


@pytest.mark.parametrize("use_tau", [False, True])
def test_uno_matches_sksurv(cohort, use_tau):
    sk = pytest.importorskip("sksurv.metrics")
    c = cohort
    tau = float(np.quantile(c["time"], 0.7)) if use_tau else None
    expected = sk.concordance_index_ipcw(surv_array(c["train_event"], c["train_time"]),
                                         surv_array(c["event"], c["time"]), c["risk"], tau=tau)
    got = uno_c(c["train_event"], c["train_time"], c["event"], c["time"], c["risk"], tau=tau)
    assert got.cindex == pytest.approx(expected[0], abs=TOL)
    assert tuple(got[1:]) == tuple(expected[1:])


def test_brier_matches_sksurv(cohort):
    sk = pytest.importorskip("sksurv.metrics")
    c = cohort
    y_train, y_test = surv_array(c["train_event"], c["train_time"]), surv_array(c["event"], c["time"])
    args = (c["train_event"], c["train_time"], c["event"], c["time"], c["surv"], c["times"])
    np.testing.assert_allclose(brier_score(*args), sk.brier_score(y_train, y_test, c["surv"], c["times"])[1],
                               rtol=0, atol=TOL)
    assert integrated_brier_score(*args) == pytest.approx(
        sk.integrated_brier_score(y_train, y_test, c["surv"], c["times"]), abs=TOL)


@pytest.mark.parametrize("time_dependent", [False, True])
def test_auc_matches_sksurv(cohort, time_dependent):
    sk = pytest.importorskip("sksurv.metrics")
    c = cohort
    estimate = -np.log(c["surv"]) if time_dependent else c["risk"]  # cumulative hazard or risk
    expected = sk.cumulative_dynamic_auc(surv_array(c["train_event"], c["train_time"]),
                                         surv_array(c["event"], c["time"]), estimate, c["times"])
    auc, mean_auc = cumulative_dynamic_auc(c["train_event"], c["train_time"], c["event"], c["time"],
                                           estimate, c["times"])
    np.testing.assert_allclose(auc, expected[0], rtol=0, atol=TOL)
    assert mean_auc == pytest.approx(expected[1], abs=TOL)


def test_antolini_matches_pycox(cohort):
    pytest.importorskip("pycox")
    import pandas as pd
    from pycox.evaluation import EvalSurv

    c = cohort
    surv = np.round(c["surv"], 2)  # tied survival values get no credit in Antolini's C
    grid = c["times"]
    ev = EvalSurv(pd.DataFrame(surv.T, index=grid), c["time"], c["event"].astype(int))
    expected = ev.concordance_td("antolini")
    assert antolini_c(surv, grid, c["event"], c["time"]) == pytest.approx(expected, abs=TOL)


def test_kaplan_meier_matches_sksurv_and_lifelines(cohort):
    nonparametric = pytest.importorskip("sksurv.nonparametric")
    lifelines = pytest.importorskip("lifelines")
    c = cohort
    t_ref, s_ref, ci_ref = nonparametric.kaplan_meier_estimator(c["event"], c["time"], conf_type="log-log")
    t, s, ci = kaplan_meier(c["event"], c["time"], conf_level=0.95)
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_allclose(s, s_ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(ci, ci_ref, rtol=0, atol=TOL)
    kmf = lifelines.KaplanMeierFitter().fit(c["time"], c["event"])
    np.testing.assert_allclose(s, kmf.survival_function_.iloc[:, 0].loc[t], rtol=0, atol=TOL)
    np.testing.assert_allclose(ci.T, kmf.confidence_interval_.loc[t], rtol=0, atol=TOL)


@pytest.mark.parametrize("n_groups", [2, 3])
def test_logrank_matches_lifelines(cohort, n_groups):
    stats = pytest.importorskip("lifelines.statistics")
    c = cohort
    group = np.random.default_rng(len(c["time"]) + n_groups).integers(0, n_groups, c["time"].size)
    got = logrank_test(c["event"], c["time"], group)
    if n_groups == 2:
        a = group == 0
        ref = stats.logrank_test(c["time"][a], c["time"][~a], c["event"][a], c["event"][~a])
    else:
        ref = stats.multivariate_logrank_test(c["time"], group, c["event"])
    assert got.statistic == pytest.approx(ref.test_statistic, rel=TOL, abs=TOL)
    assert got.p_value == pytest.approx(ref.p_value, rel=TOL, abs=1e-15)
    assert got.dof == n_groups - 1


# ----------------------------------------------------------------------------- live peers, real data


def _real_data(name: str):
    """(event, time, risk): a Cox linear predictor, or age (many ties) for FLChain."""
    datasets = pytest.importorskip("sksurv.datasets")
    X, y = getattr(datasets, f"load_{name}")()
    event, time = (np.asarray(y[f]) for f in y.dtype.names)
    if name == "flchain":  # 7055 missing cells and time-0 rows: use complete covariates only
        return event, time, X["age"].to_numpy(float)
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.preprocessing import OneHotEncoder

    Xt = OneHotEncoder().fit_transform(X)
    return event, time, CoxPHSurvivalAnalysis(alpha=1e-2).fit(Xt, y).predict(Xt)


@pytest.mark.parametrize("name", ["gbsg2", "whas500", "aids", "flchain"])
def test_real_datasets_match_peers(name):
    sk = pytest.importorskip("sksurv.metrics")
    lifelines_utils = pytest.importorskip("lifelines.utils")
    event, time, risk = _real_data(name)
    expected = sk.concordance_index_censored(event, time, risk)
    got = harrell_c(risk, event, time)
    assert got.cindex == pytest.approx(expected[0], abs=TOL) and tuple(got[1:]) == tuple(expected[1:])
    assert got.cindex == pytest.approx(lifelines_utils.concordance_index(time, -risk, event), abs=TOL)
    train = np.arange(time.size) % 3 != 0  # deterministic 2:1 split; IPCW from the training part
    test = ~train & (time < time[train].max())
    y_train, y_test = surv_array(event[train], time[train]), surv_array(event[test], time[test])
    tau = float(np.quantile(time[test], 0.8))
    ref = sk.concordance_index_ipcw(y_train, y_test, risk[test], tau=tau)
    got = uno_c(event[train], time[train], event[test], time[test], risk[test], tau=tau)
    assert got.cindex == pytest.approx(ref[0], abs=TOL) and tuple(got[1:]) == tuple(ref[1:])
    times = np.unique(np.quantile(time[test], [0.1, 0.3, 0.5, 0.7]))
    km_t, km_s = kaplan_meier(event[train], time[train])
    base = km_s[np.searchsorted(km_t, times, side="right") - 1]
    surv = base[None, :] ** np.exp((risk[test] - risk.mean()) / risk.std())[:, None]
    args = (event[train], time[train], event[test], time[test])
    assert integrated_brier_score(*args, surv, times) == pytest.approx(
        sk.integrated_brier_score(y_train, y_test, surv, times), abs=TOL)
    auc, mean_auc = cumulative_dynamic_auc(*args, risk[test], times)
    ref_auc, ref_mean = sk.cumulative_dynamic_auc(y_train, y_test, risk[test], times)
    np.testing.assert_allclose(auc, ref_auc, rtol=0, atol=TOL)
    assert mean_auc == pytest.approx(ref_mean, abs=TOL)


def test_risk_groups_gbsg2_matches_lifelines():
    stats = pytest.importorskip("lifelines.statistics")
    event, time, risk = _real_data("gbsg2")
    out = risk_groups(risk, event, time)
    high = risk > np.median(risk)
    ref = stats.logrank_test(time[high], time[~high], event[high], event[~high])
    np.testing.assert_array_equal(out["high"], high)
    assert out["p_value"] == pytest.approx(ref.p_value, rel=TOL) and out["p_value"] < 1e-6
    assert out["n_high"] + out["n_low"] == time.size
    assert out["km_high"][1][-1] < out["km_low"][1][-1]  # the high-risk group dies sooner


# ----------------------------------------------------------------------------- ctvl's own conventions


def test_censoring_survival_held_after_last_training_time():
    """scikit-survival #511: ctvl holds G at its last value instead of raising."""
    train_event = np.array([True, False, True, False, True])
    train_time = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    g = censoring_survival(train_event, train_time, [0.5, 2.0, 4.5, 5.0, 50.0])
    np.testing.assert_allclose(g, [1.0, 0.75, 0.375, 0.375, 0.375])


def naive_brier(train_event, train_time, event, time, surv, times):
    """Graf's formula term by term, with G from censoring_survival."""
    def G(t):
        return censoring_survival(train_event, train_time, [t])[0]

    out = []
    for k, t in enumerate(times):
        terms = [surv[i, k] ** 2 / G(time[i]) if time[i] <= t and event[i]
                 else (1 - surv[i, k]) ** 2 / G(t) if time[i] > t else 0.0
                 for i in range(time.size)]
        out.append(np.mean(terms))
    return np.array(out)


def test_brier_beyond_last_training_time_is_defined():
    c = make_cohort(3, 1, 0.5, n=60)
    short = c["train_time"] < np.quantile(c["time"], 0.6)  # many test times exceed the training follow-up
    train_event, train_time = c["train_event"][short], c["train_time"][short]
    train_event[np.argmax(train_time)] = True  # G stays positive
    got = brier_score(train_event, train_time, c["event"], c["time"], c["surv"], c["times"])
    naive = naive_brier(train_event, train_time, c["event"], c["time"], c["surv"], c["times"])
    np.testing.assert_allclose(got, naive, rtol=1e-12)
    sk = pytest.importorskip("sksurv.metrics")
    with pytest.raises(ValueError, match="largest observed time"):
        sk.brier_score(surv_array(train_event, train_time), surv_array(c["event"], c["time"]),
                       c["surv"], c["times"])


def test_zero_censoring_survival_gives_zero_weight(caplog):
    train_event = np.array([True, True, False])
    train_time = np.array([1.0, 2.0, 3.0])  # G drops to 0 at t = 3
    event, time = np.array([True, True, True, False]), np.array([0.5, 2.5, 4.0, 5.0])
    with caplog.at_level(logging.WARNING, logger=curves.__name__):
        got = uno_c(train_event, train_time, event, time, np.array([4.0, 3.0, 2.0, 1.0]))
    assert "weight 0" in caplog.text
    assert got.cindex == 1.0  # only the events at 0.5 and 2.5 carry weight, both concordant
    assert got.concordant == 6  # counts stay unweighted, as in scikit-survival


def test_no_comparable_pairs_raises():
    with pytest.raises(ValueError, match="no comparable pairs"):
        harrell_c([1.0, 2.0, 3.0], [False, False, False], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="no comparable pairs"):
        harrell_c([1.0, 2.0], [True, True], [4.0, 4.0])  # tied events are not comparable


@pytest.mark.parametrize("bad", [
    dict(time=[1.0, np.nan, 2.0]), dict(estimate=[0.0, np.inf, 1.0]), dict(event=[0, 2, 1]),
    dict(time=[1.0, 2.0]), dict(tied_tol=-1.0),
])
def test_invalid_input_raises(bad):
    args = dict(estimate=[0.0, 1.0, 2.0], event=[True, False, True], time=[1.0, 2.0, 3.0], tied_tol=1e-8)
    args |= bad
    with pytest.raises(ValueError):
        harrell_c(**args)


def test_times_must_increase():
    c = make_cohort(0, 2, 0.5, n=30)
    with pytest.raises(ValueError, match="strictly increasing"):
        brier_score(c["train_event"], c["train_time"], c["event"], c["time"], c["surv"], c["times"][::-1])


# ----------------------------------------------------------------------------- invariants


def test_count_dominated_matches_brute_force():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 64, 257):
        pos, rank = rng.permutation(n), rng.permutation(n)
        limit, bound = rng.integers(0, n + 1, 50), rng.integers(0, n + 1, 50)
        brute = [np.sum((pos < lo) & (rank < b)) for lo, b in zip(limit, bound)]
        np.testing.assert_array_equal(_count_dominated(pos, rank, limit, bound), brute)


def test_harrell_reversal_and_monotone_transform():
    c = make_cohort(4, 6, 0.5, n=500)
    risk = c["risk"] + np.random.default_rng(4).normal(scale=0.1, size=500)  # no tied risks
    up, down = harrell_c(risk, c["event"], c["time"]), harrell_c(-risk, c["event"], c["time"])
    assert up.cindex + down.cindex == pytest.approx(1.0, abs=1e-12)
    counts = harrell_c(c["risk"], c["event"], c["time"])[1:]
    assert harrell_c(np.exp(c["risk"]), c["event"], c["time"])[1:] == counts


def test_antolini_equals_harrell_under_proportional_hazards():
    """S_i = S0^exp(h_i) orders patients by h at every time where 0 < S0 < 1."""
    c = make_cohort(5, 6, 0.4, n=300)
    h = c["risk"] + np.random.default_rng(5).normal(scale=0.1, size=300)  # no tied risks
    grid = np.unique(c["time"])
    surv = np.exp(-np.exp(h)[:, None] * (grid / grid.max() + 0.01))
    expected = harrell_c(h, c["event"], c["time"]).cindex
    assert antolini_c(surv, grid, c["event"], c["time"]) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("spacing", [0.6e-8, 1e-9, 1e-12, 3e-8])
def test_tie_tolerance_matches_sksurv(spacing):
    """Risks packed closer than tied_tol: scikit-survival's pairwise |f_i - f_j| <= 1e-8 rule, exactly."""
    sk = pytest.importorskip("sksurv.metrics")
    lifelines_utils = pytest.importorskip("lifelines.utils")
    rng = np.random.default_rng(11)
    n = 400
    risk = 0.3 + spacing * rng.integers(0, 40, n) + rng.integers(0, 3, n)  # clusters of near-equal risks
    time = np.round(rng.exponential(size=n) * 10, 0)
    event = rng.random(n) < 0.6
    expected = sk.concordance_index_censored(event, time, risk)
    got = harrell_c(risk, event, time)
    assert got.cindex == pytest.approx(expected[0], abs=TOL) and tuple(got[1:]) == tuple(expected[1:])
    exact = harrell_c(risk, event, time, tied_tol=0.0).cindex
    assert exact == pytest.approx(lifelines_utils.concordance_index(time, -risk, event), abs=TOL)


def test_harrell_large_n_matches_lifelines():
    lifelines_utils = pytest.importorskip("lifelines.utils")
    rng = np.random.default_rng(7)
    n = 20_000
    time = np.round(rng.exponential(size=n), 2)
    event = rng.random(n) < 0.5
    risk = np.round(rng.normal(size=n) - time, 2)
    assert harrell_c(risk, event, time, tied_tol=0).cindex == pytest.approx(
        lifelines_utils.concordance_index(time, -risk, event), abs=TOL)
