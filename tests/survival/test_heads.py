"""Survival heads, DeepHit output conversions and the Breslow estimator (against pycox and sksurv)."""

import numpy as np
import pytest
import torch

from ctvl.config import SurvivalConfig
from ctvl.survival.heads import (
    BreslowEstimator,
    CoxHead,
    DeepHitHead,
    ResidualAdapter,
    build_survival_head,
    pmf_from_logits,
    survival_frame,
    survival_from_logits,
)


def test_residual_adapter_starts_as_identity_and_learns():
    torch.manual_seed(0)
    adapter = ResidualAdapter(16, 4, dropout=0.1).train()
    x = torch.randn(3, 16) * 50
    out = adapter(x)
    assert torch.equal(out, x)
    out.pow(2).sum().backward()
    assert adapter.up.weight.grad.abs().sum() > 0  # the zero-initialised projection receives gradient
    with pytest.raises(ValueError, match="dropout"):
        ResidualAdapter(16, 4, dropout=1.0)


def test_cox_and_deephit_heads_shapes():
    torch.manual_seed(0)
    z = torch.randn(5, 12)
    cox = CoxHead(12)
    assert cox(z).shape == (5,) and cox.out.bias is None
    assert CoxHead(12, hidden=(8, 4), dropout=0.2)(z).shape == (5,)
    assert DeepHitHead(12, 7)(z).shape == (5, 7)
    assert DeepHitHead(12, 7, hidden=(8,))(z).shape == (5, 7)
    assert isinstance(build_survival_head(SurvivalConfig(head="cox"), 12), CoxHead)
    head = build_survival_head(SurvivalConfig(head="discrete", num_bins=6, head_hidden=(8,)), 12)
    assert isinstance(head, DeepHitHead) and head(z).shape == (5, 6)


def test_pmf_and_survival_equal_pycox_deephit_predictions():
    pytest.importorskip("pycox")
    from pycox.models import DeepHitSingle

    logits = np.random.default_rng(0).normal(size=(6, 5)) * 3
    net = torch.nn.Linear(5, 5, bias=False).double()  # identity: pycox then sees our logits as its outputs
    with torch.no_grad():
        net.weight.copy_(torch.eye(5))
    model = DeepHitSingle(net, duration_index=np.arange(5.0))
    ours = torch.tensor(logits)
    np.testing.assert_allclose(pmf_from_logits(ours).numpy(), model.predict_pmf(logits), rtol=0, atol=1e-15)
    surv = survival_from_logits(ours).numpy()
    np.testing.assert_allclose(surv, model.predict_surv(logits), rtol=0, atol=1e-14)
    frame = survival_frame(survival_from_logits(ours), np.arange(5.0))
    theirs = model.predict_surv_df(logits)
    assert frame.shape == theirs.shape and np.array_equal(frame.index, theirs.index)
    np.testing.assert_allclose(frame.to_numpy(), theirs.to_numpy(), atol=1e-14)


def test_survival_from_logits_is_a_survival_curve():
    surv = survival_from_logits(torch.randn(4, 9, dtype=torch.float64) * 20)
    assert ((surv >= 0) & (surv <= 1)).all()
    assert (surv[:, 1:] <= surv[:, :-1] + 1e-15).all()
    with pytest.raises(ValueError, match="surv"):
        survival_frame(surv, np.arange(3.0))


def make_cox_fit(seed, n=120):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    time = np.round(rng.exponential(np.exp(-x @ np.array([0.7, -0.4, 0.2]))) * 8) + 1
    event = rng.random(n) < 0.7
    return x, event, time


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_breslow_equals_scikit_survival(ties):
    pytest.importorskip("sksurv")
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.linear_model.coxph import BreslowEstimator as SkBreslow
    from sksurv.util import Surv

    x, event, time = make_cox_fit(0)
    model = CoxPHSurvivalAnalysis(ties=ties).fit(x, Surv.from_arrays(event, time))
    lp = x @ model.coef_
    ours = BreslowEstimator().fit(torch.tensor(lp), torch.tensor(event), torch.tensor(time))
    theirs = SkBreslow().fit(lp, event, time)
    np.testing.assert_array_equal(ours.unique_times_, theirs.unique_times_)
    np.testing.assert_allclose(ours.cum_baseline_hazard_, theirs.cum_baseline_hazard_.y, rtol=1e-11)
    grid = np.concatenate([model.unique_times_, [2.5, 7.25]])
    grid = grid[(grid >= model.unique_times_[0]) & (grid <= model.unique_times_[-1])]
    expected = np.stack([fn(grid) for fn in model.predict_survival_function(x[:20])])
    np.testing.assert_allclose(ours.predict_survival(lp[:20], grid), expected, rtol=1e-10, atol=1e-12)


def test_breslow_outside_the_observed_times_and_at_large_log_hazards():
    x, event, time = make_cox_fit(1, n=60)
    lp = x @ np.array([0.7, -0.4, 0.2])
    est = BreslowEstimator().fit(lp, event, time)
    first, last = est.unique_times_[0], est.unique_times_[-1]
    surv = est.predict_survival(lp[:5], [first - 0.5, last, last + 100.0])
    assert np.all(surv[:, 0] == 1.0)  # H_0 = 0 before the first time (sksurv returns H_0(t_1))
    np.testing.assert_array_equal(surv[:, 1], surv[:, 2])
    big = BreslowEstimator().fit(lp * 400, event, time)  # exp(h) overflows float64 without the shift
    shifted = BreslowEstimator().fit(lp * 400 - 2000, event, time)
    grid = est.unique_times_
    s_big = big.predict_survival(lp[:5] * 400, grid)
    s_shift = shifted.predict_survival(lp[:5] * 400 - 2000, grid)
    assert np.isfinite(s_big).all()
    np.testing.assert_allclose(s_big, s_shift, rtol=1e-9, atol=1e-300)
    with pytest.raises(ValueError, match="fit"):
        BreslowEstimator().predict_survival(lp, grid)
