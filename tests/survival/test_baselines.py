"""Survival baselines on GBSG2 and WHAS500 (shipped with scikit-survival): plausible and reproducible.

Reference C-indices (``/work/shared/ANCHORS.md``, mean of five 80/20 splits, split SD 0.02-0.035):
GBSG2 CoxPH 0.645, RSF 0.680, DeepSurv 0.645, DeepHit 0.638; WHAS500 CoxPH 0.765, RSF 0.760,
DeepSurv 0.751, DeepHit 0.727. One split with few epochs must land within a few SDs of these.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sksurv")

from ctvl.data.tabular import load_reference_dataset  # noqa: E402  (the data layer reads the tables)
from ctvl.survival.baselines import (  # noqa: E402
    BASELINES,
    fit_and_score,
    run_baselines,
)

FAST = {"deepsurv": {"epochs": 30}, "deephit": {"epochs": 30}, "rsf": {"n_estimators": 30}}
RANGES = {  # plausible Harrell's C on one split
    "gbsg2": {"coxph": (0.60, 0.72), "rsf": (0.60, 0.75), "deepsurv": (0.58, 0.73), "deephit": (0.57, 0.73)},
    "whas500": {"coxph": (0.70, 0.83), "rsf": (0.68, 0.84), "deepsurv": (0.66, 0.82),
                "deephit": (0.64, 0.82)},
}


def split(name: str, seed: int = 0):
    from sklearn.model_selection import train_test_split

    X, event, time, _ = load_reference_dataset(name)
    train, test = train_test_split(np.arange(time.size), test_size=0.2, stratify=event, random_state=seed)
    return X[train], (event[train], time[train]), X[test], (event[test], time[test])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny MLPs train fastest on one thread, and other tests share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["gbsg2", "whas500"])
def results(request):
    return request.param, run_baselines(*split(request.param), model_kwargs=FAST)


def test_c_index_in_reference_range(results):
    name, scores = results
    assert set(scores) == set(BASELINES)
    for model, (low, high) in RANGES[name].items():
        assert low <= scores[model]["c_index"] <= high, (model, scores[model]["c_index"])


def test_other_scores_are_sane(results):
    _, scores = results
    for s in scores.values():
        assert 0.5 < s["uno_c"] < 0.9 and 0.5 < s["mean_auc"] < 0.95
        assert 0.05 < s["ibs"] < 0.25  # a constant 0.5 curve scores 0.25
        assert s["n_train"] > s["n_test"] > 0 and s["fit_seconds"] > 0


@pytest.mark.parametrize("model", ["deepsurv", "deephit", "rsf"])
def test_seeded_runs_are_identical(model):
    data = split("whas500")
    kw = dict(FAST.get(model, {}), return_predictions=True)
    a = fit_and_score(model, *data, seed=3, **kw)
    b = fit_and_score(model, *data, seed=3, **kw)
    c = fit_and_score(model, *data, seed=4, **kw)
    np.testing.assert_array_equal(a["risk"], b["risk"])
    np.testing.assert_array_equal(a["surv"], b["surv"])
    assert a["c_index"] == b["c_index"]
    assert not np.array_equal(a["risk"], c["risk"])


def test_feature_blocks_and_missing_cells():
    """A list of blocks is concatenated; NaN cells take the training median."""
    X_train, y_train, X_test, y_test = split("gbsg2")
    whole = fit_and_score("coxph", X_train, y_train, X_test, y_test, return_predictions=True)
    blocks = fit_and_score("coxph", [X_train[:, :3], X_train[:, 3:]], y_train, [X_test[:, :3], X_test[:, 3:]],
                           y_test, return_predictions=True)
    np.testing.assert_allclose(blocks["risk"], whole["risk"], rtol=1e-12)
    holes = X_train.copy()
    holes[::7, 0] = np.nan
    filled = X_train.copy()
    filled[::7, 0] = np.nanmedian(holes[:, 0])
    a = fit_and_score("coxph", holes, y_train, X_test, y_test, return_predictions=True)
    b = fit_and_score("coxph", filled, y_train, X_test, y_test, return_predictions=True)
    np.testing.assert_allclose(a["risk"], b["risk"], rtol=1e-10)


def test_structured_targets_and_predictions_shape():
    from sksurv.util import Surv

    X_train, (e, t), X_test, (e_test, t_test) = split("whas500")
    times = np.quantile(t_test, [0.2, 0.4, 0.6])
    out = fit_and_score("coxph", X_train, Surv.from_arrays(e, t), X_test, Surv.from_arrays(e_test, t_test),
                        times=times, return_predictions=True)
    assert out["risk"].shape == (t_test.size,) and out["surv"].shape == (t_test.size, 3)
    assert np.all(np.diff(out["surv"], axis=1) <= 0) and np.all((out["surv"] > 0) & (out["surv"] <= 1))


def test_flchain_loads_without_leak_and_with_holes():
    X, event, time, names = load_reference_dataset("flchain")
    assert X.shape[0] == time.size == 7874 and not any(n.startswith("chapter") for n in names)
    assert np.isnan(X).any() and (time == 0).sum() == 3


def test_bad_arguments_raise():
    X_train, y_train, X_test, y_test = split("gbsg2")
    with pytest.raises(ValueError, match="unknown baseline"):
        fit_and_score("cox", X_train, y_train, X_test, y_test)
    with pytest.raises(ValueError, match="shapes disagree"):
        fit_and_score("coxph", X_train[:, :3], y_train, X_test, y_test)
    with pytest.raises(ValueError, match="not being run"):
        run_baselines(X_train, y_train, X_test, y_test, names=["coxph"], model_kwargs={"rsf": {}})


# ------------------------------------------------------------------------------------ fit_coxph


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_fit_coxph_equals_scikit_survival(ties):
    """The Newton fit on ctvl's own loss lands on scikit-survival's ridge Cox coefficients."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    from ctvl.survival.baselines import fit_coxph

    X_train, (e, t), X_test, _ = split("whas500")
    mean, std = X_train.mean(0), X_train.std(0)
    X = (X_train - mean) / std
    ours = fit_coxph(X, e, t, alpha=1e-2, ties=ties)
    theirs = CoxPHSurvivalAnalysis(alpha=1e-2, ties=ties).fit(X, Surv.from_arrays(e, t))
    np.testing.assert_allclose(ours.coef, theirs.coef_, rtol=0, atol=1e-10)
    X_new = (X_test - mean) / std
    np.testing.assert_allclose(ours.predict_log_hazard(X_new), theirs.predict(X_new), rtol=0, atol=1e-9)
    times = np.quantile(t, [0.2, 0.5, 0.8])
    sksurv_surv = np.array([f(times) for f in theirs.predict_survival_function(X_new)])
    np.testing.assert_allclose(ours.predict_survival(X_new, times), sksurv_surv, rtol=1e-9)


def test_coxph_model_round_trips_through_json_and_checks_inputs():
    import json

    from ctvl.survival.baselines import CoxPHModel, fit_coxph

    X_train, (e, t), X_test, _ = split("gbsg2")
    X_train = (X_train - X_train.mean(0)) / X_train.std(0)
    model = fit_coxph(X_train, e, t, feature_names=[f"x{i}" for i in range(X_train.shape[1])])
    assert model.n_iter < 20 and model.neg_log_likelihood > 0
    again = CoxPHModel.from_dict(json.loads(json.dumps(model.to_dict())))
    times = np.array([-1.0, 100.0, 1000.0, 1e5])  # before the first time, inside, after the last
    rows = X_train[:5]
    np.testing.assert_array_equal(again.predict_log_hazard(rows), model.predict_log_hazard(rows))
    np.testing.assert_allclose(again.predict_survival(rows, times), model.predict_survival(rows, times),
                               rtol=1e-14)
    assert again.feature_names == model.feature_names and again.to_dict() == model.to_dict()
    weighted = fit_coxph(X_train, e, t, weight=np.full(t.size, 2.0))
    np.testing.assert_allclose(weighted.coef, model.coef, rtol=0, atol=1e-9)  # constant weights: same fit
    with pytest.raises(ValueError, match="no Breslow baseline"):
        weighted.predict_survival(X_train, times)
    with pytest.raises(ValueError, match="singular Hessian"):
        fit_coxph(np.hstack([X_train, X_train[:, :1]]), e, t)  # a duplicated column
    with pytest.raises(ValueError, match="columns"):
        model.predict_log_hazard(X_train[:, :2])
