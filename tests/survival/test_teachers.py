"""Distillation teachers answer on the CoxPH log-hazard scale; the student's one-parameter calibration."""

import numpy as np
import pytest

from ctvl.data.tabular import TabularEncoder, load_bundled_dataset
from ctvl.survival.baselines import fit_coxph
from ctvl.survival.metrics import harrell_c
from ctvl.survival.teachers import Teacher, fit_scale


@pytest.fixture(scope="module")
def whas():
    table = load_bundled_dataset("whas500")
    return TabularEncoder().fit(table.covariates).transform(table.covariates), table.event, table.time


def test_coxph_teacher_is_the_ridge_cox_model(whas):
    X, event, time = whas
    teacher = Teacher("coxph", alpha=0.01).fit(X, event, time)
    expected = fit_coxph(X, event, time, alpha=0.01, ties="efron").predict_log_hazard(X)
    np.testing.assert_allclose(teacher.predict_log_hazard(X), expected)
    surv = teacher.predict_survival(expected[:3], [100.0, 1000.0])
    assert surv.shape == (3, 2) and np.all(np.diff(surv, axis=1) <= 0)


@pytest.mark.parametrize("name", ["rsf", "ensemble"])
def test_forest_teachers_keep_their_ranking_on_the_cox_scale(whas, name):
    X, event, time = whas
    teacher = Teacher(name, n_estimators=30, seed=0).fit(X, event, time)
    h = teacher.predict_log_hazard(X)
    cox = np.sort(teacher.cox_.predict_log_hazard(X))
    assert cox[0] - 1e-9 <= h.min() and h.max() <= cox[-1] + 1e-9  # on the CoxPH scale
    if name == "rsf":
        rank = np.argsort(np.argsort(teacher.rsf_.predict(X)))
        assert harrell_c(h, event, time).cindex == pytest.approx(harrell_c(rank, event, time).cindex, abs=0.01)
    assert harrell_c(h, event, time).cindex > 0.75


def test_unknown_teacher():
    with pytest.raises(ValueError, match="unknown teacher"):
        Teacher("oracle")


def test_fit_scale_recovers_an_affine_map_through_the_target_mean():
    s = np.random.default_rng(0).normal(size=200)
    b, ms, mt = fit_scale(s, 3.0 * s + 1.0)
    assert b == pytest.approx(3.0) and mt + b * (s - ms) == pytest.approx(3.0 * s + 1.0)
    assert fit_scale(np.ones(5), np.arange(5.0))[0] == 0.0
