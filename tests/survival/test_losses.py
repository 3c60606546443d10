"""Survival losses: Cox partial likelihood, DeepHit, dispersion and alignment.

Checked against exact float64 references written out in this file (loops over risk sets and pairs) and,
live, against lifelines, scikit-survival, pycox and torchsurv where those are right.
"""

import math
import warnings

import numpy as np
import pytest
import torch

from ctvl.survival import cox
from ctvl.survival.losses import (
    alignment_loss,
    deephit_loss,
    dispersion_loss,
    dispersion_loss_discrete,
    neg_partial_log_likelihood,
)


# ----------------------------------------------------------------------------- references


def ref_cox(log_hz, event, time, ties="efron", reduction="mean"):
    """Exact partial likelihood: a loop over distinct event times, each log shifted by its risk set's max."""
    total = log_hz.new_zeros(())
    for t in torch.unique(time[event]):
        died, at_risk = event & (time == t), time >= t
        shift = log_hz[at_risk].max().detach()
        risk_sum = torch.exp(log_hz[at_risk] - shift).sum()
        tie_sum = torch.exp(log_hz[died] - shift).sum()
        d = int(died.sum())
        total = total + log_hz[died].sum()
        for l in range(d):
            frac = l / d if ties == "efron" else 0.0
            total = total - (shift + torch.log(risk_sum - frac * tie_sum))
    return -total / (max(int(event.sum()), 1) if reduction == "mean" else 1)


def ref_deephit(logits, bin_index, event, rank_weight, sigma):
    """DeepHit loss from its definition, with explicit loops over patients and pairs (float64)."""
    n = logits.shape[0]
    p = torch.softmax(torch.cat([logits, torch.zeros(n, 1, dtype=logits.dtype)], 1), 1)
    cdf = p.cumsum(1)
    nll = 0.0
    for i in range(n):
        k = int(bin_index[i])
        nll -= math.log(p[i, k]) if event[i] else math.log(p[i, k + 1 :].sum())
    rank = 0.0
    for i in range(n):
        for j in range(n):
            ki, kj = int(bin_index[i]), int(bin_index[j])
            if event[i] and (ki < kj or (ki == kj and not event[j])):
                rank += math.exp(-(cdf[i, ki] - cdf[j, ki]) / sigma)
    return nll / n + rank_weight * rank / n**2


def make_cox_data(seed, n=40, tied=True, spread=2.0):
    g = torch.Generator().manual_seed(seed)
    log_hz = torch.randn(n, generator=g, dtype=torch.float64) * spread
    event = torch.rand(n, generator=g) < 0.6
    event[0] = True
    if tied:
        time = torch.randint(0, 6, (n,), generator=g).double()
    else:
        time = torch.randperm(n, generator=g).double() + torch.rand(n, generator=g, dtype=torch.float64) * 0.5
    return log_hz, event, time


def linear_cox_data(seed, n=150):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    time = np.round(rng.exponential(np.exp(-x @ np.array([0.8, -0.5, 0.3]))) * 10) + 1  # many ties
    event = rng.random(n) < 0.7
    return x, event, time


def cox_sum(lp, event, time, ties):
    return neg_partial_log_likelihood(torch.tensor(lp), torch.tensor(event), torch.tensor(time), ties=ties,
                                      reduction="sum").item()


# ------------------------------------------------------------------------- Cox: references


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("seed,tied", [(0, True), (1, True), (2, False), (3, True)])
def test_cox_equals_exact_reference_value_and_gradient(ties, reduction, seed, tied):
    log_hz, event, time = make_cox_data(seed, tied=tied)
    x = log_hz.clone().requires_grad_()
    y = log_hz.clone().requires_grad_()
    ours = neg_partial_log_likelihood(x, event, time, ties=ties, reduction=reduction)
    ref = ref_cox(y, event, time, ties, reduction)
    ours.backward()
    ref.backward()
    assert ours.item() == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-12)


def test_cox_efron_equals_lifelines_at_its_mle():
    lifelines = pytest.importorskip("lifelines")
    import pandas as pd

    x, event, time = linear_cox_data(0)
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(T=time, E=event.astype(int))
    cph = lifelines.CoxPHFitter().fit(frame, "T", "E")
    ours = cox_sum(x @ cph.params_.to_numpy(), event, time, "efron")
    assert ours == pytest.approx(-cph.log_likelihood_, rel=1e-11)


@pytest.mark.parametrize("ties", ["breslow", "efron"])
def test_cox_equals_scikit_survival(ties):
    pytest.importorskip("sksurv")
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.linear_model.coxph import CoxPHOptimizer
    from sksurv.util import Surv

    x, event, time = linear_cox_data(1)
    coef = CoxPHSurvivalAnalysis(ties=ties).fit(x, Surv.from_arrays(event, time)).coef_
    # sksurv's objective is the mean over *samples* of the negative log-likelihood
    sksurv_nll = CoxPHOptimizer(x, event, time, np.zeros(3), ties).nlog_likelihood(coef) * len(time)
    assert cox_sum(x @ coef, event, time, ties) == pytest.approx(sksurv_nll, rel=1e-11)


def test_cox_equals_pycox_without_ties_and_avoids_its_eps_bias():
    loss_mod = pytest.importorskip("pycox.models.loss")
    log_hz, event, time = make_cox_data(4, n=200, tied=False)
    ours = neg_partial_log_likelihood(log_hz, event, time).item()
    assert ours == pytest.approx(loss_mod.cox_ph_loss(log_hz, time, event, eps=0.0).item(), rel=1e-12)
    wide = log_hz * 10  # pycox adds eps=1e-7 inside the log: biased when log-hazards spread widely
    exact = ref_cox(wide, event, time).item()
    assert neg_partial_log_likelihood(wide, event, time).item() == pytest.approx(exact, rel=1e-12)
    # the data are in the regime where pycox's default eps=1e-7 visibly shifts its loss
    assert abs(loss_mod.cox_ph_loss(wide, time, event).item() - exact) > 1e-3 * abs(exact)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_equals_torchsurv_where_torchsurv_is_right(ties):
    cox = pytest.importorskip("torchsurv.loss.cox")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchsurv warns about ties
        log_hz, event, time = make_cox_data(5, n=100, tied=False)
        x = log_hz.float()  # torchsurv computes in float32 whatever it is given
        ours = neg_partial_log_likelihood(x, event, time, ties=ties)
        theirs = cox.neg_partial_log_likelihood(x, event, time, ties).item()
        assert ours.item() == pytest.approx(theirs, rel=2e-6)
        log_hz, event, time = make_cox_data(6, n=100, tied=True)
        x = log_hz.float()
        theirs = cox.neg_partial_log_likelihood(x, event, time, ties, reduction="sum").item()
        ours = neg_partial_log_likelihood(x, event, time, ties, "sum").item()
        assert ours == pytest.approx(theirs, rel=2e-6)
        # with ties torchsurv's "mean" divides by distinct event times; ctvl's by events, as documented
        ours_mean = neg_partial_log_likelihood(log_hz, event, time, ties, "mean").item()
        assert ours_mean == pytest.approx(ref_cox(log_hz, event, time, ties, "sum").item() / int(event.sum()))


# ------------------------------------------------------------------- Cox: edge cases, invariants


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("scale", [80.0, 80_000.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cox_is_finite_and_exact_at_extreme_log_hazards(ties, scale, dtype):
    base = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, 0.04, 0.5, -0.3], dtype=torch.float64)
    event = torch.tensor([1, 1, 1, 0, 1, 1, 1, 0]).bool()
    time = torch.tensor([1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0])
    x = (base * scale).to(dtype).requires_grad_()
    loss = neg_partial_log_likelihood(x, event, time, ties=ties)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert loss.dtype == dtype
    exact = ref_cox(base * scale, event, time, ties).item()
    assert loss.item() == pytest.approx(exact, rel=1e-6 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_without_events_is_zero_with_zero_gradient(ties):
    x = torch.randn(7, requires_grad=True)
    loss = neg_partial_log_likelihood(x, torch.zeros(7, dtype=torch.bool), torch.rand(7), ties=ties)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(x.grad, torch.zeros(7))


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_single_sample_empty_batch_and_all_tied(ties):
    one = torch.tensor([3.0], requires_grad=True)
    loss = neg_partial_log_likelihood(one, torch.tensor([True]), torch.tensor([2.0]), ties=ties)
    loss.backward()
    assert loss.item() == 0.0 and one.grad.item() == 0.0
    empty = torch.zeros(0, requires_grad=True)
    assert neg_partial_log_likelihood(empty, torch.zeros(0, dtype=torch.bool), torch.zeros(0)).item() == 0.0
    log_hz = torch.randn(9, dtype=torch.float64)
    event = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1]).bool()
    tied = neg_partial_log_likelihood(log_hz, event, torch.full((9,), 5.0), ties=ties)
    assert tied.item() == pytest.approx(ref_cox(log_hz, event, torch.full((9,), 5.0), ties).item(), rel=1e-12)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_is_invariant_to_permutation_and_shift(ties):
    log_hz, event, time = make_cox_data(7)
    base = neg_partial_log_likelihood(log_hz, event, time, ties=ties)
    perm = torch.randperm(len(time), generator=torch.Generator().manual_seed(0))
    permuted = neg_partial_log_likelihood(log_hz[perm], event[perm], time[perm], ties=ties)
    shifted = neg_partial_log_likelihood(log_hz + 123.0, event, time, ties=ties)
    assert permuted.item() == pytest.approx(base.item(), rel=1e-13)
    assert shifted.item() == pytest.approx(base.item(), rel=1e-12)


def test_cox_input_forms_and_validation():
    log_hz, event, time = make_cox_data(8)
    base = neg_partial_log_likelihood(log_hz, event, time)
    assert neg_partial_log_likelihood(log_hz[:, None], event.double(), time).item() == base.item()
    half = neg_partial_log_likelihood(log_hz.bfloat16(), event, time)
    assert half.dtype == torch.float32 and torch.isfinite(half)
    with pytest.raises(ValueError, match="ties"):
        neg_partial_log_likelihood(log_hz, event, time, ties="exact")
    with pytest.raises(ValueError, match="reduction"):
        neg_partial_log_likelihood(log_hz, event, time, reduction="none")
    with pytest.raises(ValueError, match="time"):
        neg_partial_log_likelihood(log_hz, event, time[:-1])
    with pytest.raises(ValueError, match="log_hz"):
        neg_partial_log_likelihood(log_hz.reshape(-1, 2), event, time)



# --------------------------------------------------- Cox: the float64 fast path vs the log-space path


def log_space_cox(monkeypatch, log_hz, event, time, **kwargs):
    """The loss and gradient with every input sent down the torch log-space path (its exact reference)."""
    with monkeypatch.context() as patch:
        patch.setattr(cox, "_MAX_SHIFTED_SPREAD", -1.0)
        return loss_and_grad(log_hz, event, time, **kwargs)


def loss_and_grad(log_hz, event, time, **kwargs):
    x = log_hz.clone().requires_grad_()
    loss = neg_partial_log_likelihood(x, event, time, **kwargs)
    loss.backward()
    return loss.detach(), x.grad


def many_ties(seed, n, dtype=torch.float64):
    """Heavy ties (times rounded to 0.1, many events per tied time) and 50 % censoring, as in the bench."""
    g = torch.Generator().manual_seed(seed)
    log_hz = torch.randn(n, generator=g, dtype=dtype) * 1.5
    time = (torch.rand(n, generator=g, dtype=torch.float64) * n / 40).round(decimals=1)
    return log_hz, torch.rand(n, generator=g) < 0.5, time


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n,tied", [(300, True), (300, False), (6000, True), (6000, False)])
def test_cox_fast_path_equals_log_space_path_in_float64(monkeypatch, ties, reduction, n, tied):
    log_hz, event, time = many_ties(n, n)  # n = 6000 also takes torch's cumsum for the prefix sums
    if not tied:
        time = time + torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1e-3
    assert (time.unique().numel() < n) == tied
    loss, grad = loss_and_grad(log_hz, event, time, ties=ties, reduction=reduction)
    ref_loss, ref_grad = log_space_cox(monkeypatch, log_hz, event, time, ties=ties, reduction=reduction)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-13 * grad.abs().max().item())
    if reduction == "mean":  # divided by the number of events, not of distinct event times
        total, _ = loss_and_grad(log_hz, event, time, ties=ties, reduction="sum")
        assert loss.item() == pytest.approx(total.item() / int(event.sum()), rel=1e-14)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_fast_path_in_float32_equals_float64_reference(ties):
    log_hz, event, time = many_ties(3, 400)
    loss, grad = loss_and_grad(log_hz.float(), event, time, ties=ties)
    ref = log_hz.clone().requires_grad_()
    ref_cox(ref, event, time, ties).backward()
    assert loss.dtype == grad.dtype == torch.float32
    assert loss.item() == pytest.approx(ref_cox(log_hz, event, time, ties).item(), rel=1e-6)
    torch.testing.assert_close(grad, ref.grad.float(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("spread,fast", [(80.0, True), (599.0, True), (601.0, False), (80_000.0, False)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cox_fast_path_up_to_a_spread_of_600_exact_on_both_sides(monkeypatch, ties, spread, fast, dtype):
    log_hz, event, time = many_ties(4, 60)
    log_hz = ((log_hz - log_hz.min()) / (log_hz.max() - log_hz.min()) * spread - spread / 2).to(dtype)
    calls, fast_path = [], cox._cox_shifted
    monkeypatch.setattr(cox, "_cox_shifted", lambda *args: calls.append(1) or fast_path(*args))
    loss, grad = loss_and_grad(log_hz, event, time, ties=ties)
    assert bool(calls) == fast
    ref = log_hz.double().requires_grad_()  # float64 reference on the same (rounded) values
    ref_loss = ref_cox(ref, event, time, ties)
    ref_loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.dtype == dtype
    rel = 1e-12 if dtype == torch.float64 else 1e-6
    assert loss.item() == pytest.approx(ref_loss.item(), rel=rel)
    torch.testing.assert_close(grad.double(), ref.grad, rtol=rel * 100, atol=rel * 1e-2)


def test_cox_fast_path_edge_cases():
    log_hz, event, time = many_ties(5, 50)
    x = log_hz.clone().requires_grad_()
    with torch.no_grad():  # no graph, same value
        value = neg_partial_log_likelihood(x, event, time)
    assert not value.requires_grad
    assert value.item() == neg_partial_log_likelihood(log_hz, event, time).item()
    for nan_or_inf in (math.nan, math.inf):  # not finite: the log-space path, as before
        bad = log_hz.clone()
        bad[3] = nan_or_inf
        assert not torch.isfinite(neg_partial_log_likelihood(bad, event, time))
    nan = torch.full((50,), math.nan, requires_grad=True)
    zero = neg_partial_log_likelihood(nan, torch.zeros(50, dtype=torch.bool), time)  # no events: +0, any h
    zero.backward()
    assert zero.item() == 0.0 and math.copysign(1.0, zero.item()) == 1.0
    assert torch.equal(nan.grad, torch.zeros(50))


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_second_derivatives_and_torch_func(ties):
    log_hz, event, time = many_ties(6, 25)
    hessian = torch.autograd.functional.hessian
    fast = hessian(lambda h: neg_partial_log_likelihood(h, event, time, ties), log_hz)
    exact = hessian(lambda h: ref_cox(h, event, time, ties), log_hz)
    torch.testing.assert_close(fast, exact, rtol=1e-10, atol=1e-13)
    grad = torch.func.grad(lambda h: neg_partial_log_likelihood(h, event, time, ties))(log_hz)
    _, fast_grad = loss_and_grad(log_hz, event, time, ties=ties)
    torch.testing.assert_close(grad, fast_grad, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------------------------ DeepHit


def make_deephit_data(seed, n=30, k=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    bin_index = torch.randint(0, k, (n,), generator=g)
    event = torch.rand(n, generator=g) < 0.5
    bin_index[0], event[0] = k - 1, False  # censored in the last bin: only the beyond-last-cut mass remains
    return logits, bin_index, event


@pytest.mark.parametrize("rank_weight,sigma", [(0.0, 0.1), (0.7, 0.1), (2.0, 0.5)])
def test_deephit_equals_exact_reference(rank_weight, sigma):
    logits, bin_index, event = make_deephit_data(0)
    ours = deephit_loss(logits, bin_index, event, rank_weight=rank_weight, sigma=sigma)
    assert ours.item() == pytest.approx(ref_deephit(logits, bin_index, event, rank_weight, sigma), rel=1e-12)
    per_sample = deephit_loss(logits, bin_index, event, rank_weight, sigma, reduction="none")
    assert per_sample.shape == (30,)
    assert deephit_loss(logits, bin_index, event, rank_weight, sigma, "sum").item() == pytest.approx(
        per_sample.sum().item(), rel=1e-14)


def test_deephit_equals_pycox():
    loss_mod = pytest.importorskip("pycox.models.loss")
    from pycox.models.data import pair_rank_mat

    logits, bin_index, event = make_deephit_data(1, n=60, k=8)
    nll = loss_mod.nll_pmf(logits, bin_index, event.double(), epsilon=0.0)
    assert deephit_loss(logits, bin_index, event).item() == pytest.approx(nll.item(), rel=1e-13)
    rank_mat = torch.tensor(pair_rank_mat(bin_index.numpy(), event.numpy().astype(float), "float64"))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # pycox's rank loss builds float32 `ones` from the default dtype
    try:
        rank = loss_mod.rank_loss_deephit_single(logits, bin_index, event.double(), rank_mat, 0.2).item()
        # pycox: alpha * nll + (1 - alpha) * rank == alpha * ctvl(rank_weight=(1 - alpha) / alpha)
        alpha = 0.3
        pycox = loss_mod.DeepHitSingleLoss(alpha, 0.2)(logits, bin_index, event.double(), rank_mat).item()
    finally:
        torch.set_default_dtype(default)
    ours = deephit_loss(logits, bin_index, event, rank_weight=(1 - alpha) / alpha, sigma=0.2).item() * alpha
    assert ours == pytest.approx(alpha * nll.item() + (1 - alpha) * rank, rel=1e-13)
    assert ours == pytest.approx(pycox, rel=1e-6)  # pycox adds eps=1e-7 inside its logs


def test_deephit_is_stable_and_validates():
    logits, bin_index, event = make_deephit_data(2)
    x = (logits * 1e4).float().requires_grad_()
    loss = deephit_loss(x, bin_index, event, rank_weight=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="bin_index"):
        deephit_loss(logits, bin_index + 1, event)
    with pytest.raises(ValueError, match="logits"):
        deephit_loss(logits[:, 0], bin_index, event)


# ------------------------------------------------------------------------ dispersion, alignment


def ref_dispersion(z, event, time, tau, scale=None):
    z, time = z[event], time[event]
    n = len(time)
    zn = [v / v.norm() for v in z]
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    gap = {p: abs(float(time[p[0]] - time[p[1]])) for p in pairs}
    scale = sum(gap.values()) / len(pairs) if scale is None else scale
    w = {p: math.exp(-gap[p] / (tau * scale)) for p in pairs}
    d = {p: float(((zn[p[0]] - zn[p[1]]) ** 2).sum()) for p in pairs}
    near = sum(w[p] * d[p] for p in pairs) / sum(w.values())
    far = sum((1 - w[p]) * d[p] for p in pairs) / sum(1 - w[p] for p in pairs)
    return near - far


@pytest.mark.parametrize("tau,scale", [(1.0, None), (0.5, None), (3.0, 1.0)])
def test_dispersion_continuous_equals_reference(tau, scale):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(12, 6, generator=g, dtype=torch.float64)
    time = torch.rand(12, generator=g, dtype=torch.float64) * 10
    event = torch.rand(12, generator=g) < 0.7
    ours = dispersion_loss(z, event, time, tau=tau, time_scale=scale).item()
    assert ours == pytest.approx(ref_dispersion(z, event, time, tau, scale), rel=1e-12)


def test_dispersion_continuous_ranks_time_ordered_latents_lower_and_ignores_censored():
    time = torch.tensor([1.0, 2.0, 3.0, 4.0, 20.0, 21.0, 22.0], dtype=torch.float64)
    event = torch.tensor([1, 1, 1, 0, 1, 1, 1]).bool()
    angle = time / 8
    z = torch.stack([angle.cos(), angle.sin()], 1)
    swapped = z[[0, 4, 2, 3, 1, 5, 6]]  # an early and a late patient exchange latents
    assert dispersion_loss(z, event, time) < dispersion_loss(swapped, event, time)
    moved = z.clone()
    moved[3] = torch.tensor([-5.0, 7.0])  # the censored patient does not count
    assert dispersion_loss(moved, event, time).item() == dispersion_loss(z, event, time).item()
    scaled = dispersion_loss(3.0 * z, event, time).item()
    assert scaled == pytest.approx(dispersion_loss(z, event, time).item())


@pytest.mark.parametrize("loss_fn", [dispersion_loss, dispersion_loss_discrete])
def test_dispersion_needs_two_uncensored_else_zero_gradient(loss_fn):
    z = torch.randn(4, 3, requires_grad=True)
    event = torch.tensor([True, False, False, False])
    other = torch.tensor([1.0, 2.0, 3.0, 4.0]) if loss_fn is dispersion_loss else torch.tensor([0, 1, 2, 3])
    loss = loss_fn(z, event, other)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(z.grad, torch.zeros(4, 3))


def test_dispersion_discrete_equals_formula_and_prefers_separated_bins():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(10, 4, generator=g, dtype=torch.float64)
    event = torch.tensor([1, 1, 0, 1, 1, 1, 0, 1, 1, 1]).bool()
    bins = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 5, 5])
    tau = 0.3
    groups = [b for b in bins.unique() if (event & (bins == b)).any()]
    mu = [z[event & (bins == b)].mean(0) for b in groups]
    mu = [m / m.norm() for m in mu]
    big_g = len(mu)
    ref = 0.0
    for a in range(big_g):
        others = [math.exp(float(mu[a] @ mu[b]) / tau) for b in range(big_g) if b != a]
        ref += math.log(sum(others) / (big_g - 1))
    ref /= big_g
    assert dispersion_loss_discrete(z, event, bins, tau=tau).item() == pytest.approx(ref, rel=1e-12)
    apart = torch.eye(4, dtype=torch.float64)[[0, 0, 0, 1, 1, 2, 2, 2, 3, 3]] * -1
    apart[bins == 5] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    collapsed = torch.ones(10, 4, dtype=torch.float64)
    assert dispersion_loss_discrete(apart, event, bins) < dispersion_loss_discrete(collapsed, event, bins)


def test_alignment_loss():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    assert alignment_loss(a, b).item() == pytest.approx(((a - b) ** 2).sum(1).mean().item(), rel=1e-6)
    assert alignment_loss(a, a).item() == 0.0
    with pytest.raises(ValueError, match="z_pooled"):
        alignment_loss(a, b[:, :4])


# ---------------------------------------------------------------------- Cox: per-sample weights


def ref_cox_weighted(log_hz, event, time, weight, ties="efron", reduction="mean"):
    """Exact weighted partial likelihood of R's coxph / lifelines, looped over distinct event times (float64).

    Each event counts w_i; each Efron (or Breslow, frac = 0) term counts the mean weight of its tied deaths.
    Samples of weight 0 must be removed beforehand (they would count in d_g here).
    """
    total = log_hz.new_zeros(())
    for t in torch.unique(time[event]):
        died, at_risk = event & (time == t), time >= t
        shift = log_hz[at_risk].max().detach()
        risk_sum = (weight[at_risk] * torch.exp(log_hz[at_risk] - shift)).sum()
        tie_sum = (weight[died] * torch.exp(log_hz[died] - shift)).sum()
        d = int(died.sum())
        mean_w = weight[died].sum() / d
        total = total + (weight[died] * log_hz[died]).sum()
        for l in range(d):
            frac = l / d if ties == "efron" else 0.0
            total = total - mean_w * (shift + torch.log(risk_sum - frac * tie_sum))
    return -total / ((weight * event).sum() if reduction == "mean" else 1.0)


def make_weights(seed, n, integer=False):
    g = torch.Generator().manual_seed(100 + seed)
    if integer:
        return torch.randint(1, 4, (n,), generator=g).double()
    return torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.1


FROZEN = [  # values of the unweighted loss before `weight` existed (float.hex), loss and two gradient entries
    (0, True, 2.0, "efron", "0x1.0a73fb8dfa2ddp+2", "-0x1.2f53c9db8f0a1p-5", "0x1.31e4c2117bc22p-7"),
    (0, True, 2.0, "breslow", "0x1.177929c488e15p+2", "-0x1.2f44d829952e5p-5", "0x1.4f17b7daba0ccp-8"),
    (2, False, 2.0, "efron", "0x1.0f4ce35b9ea29p+2", "-0x1.625a35e251a1ap-5", "0x1.4cd7073d5d0ddp-13"),
    (3, True, 800.0, "efron", "0x1.634aae7c41a03p+9", "-0x1.3b13b13b13b14p-5", "0x1.cafbe84cac22ep-181"),
    (3, True, 800.0, "breslow", "0x1.637db09eb2829p+9", "-0x1.3b13b13b13b14p-5", "0x1.cafbe84cac22ep-181"),
]


@pytest.mark.parametrize("seed,tied,spread,ties,loss_hex,g0_hex,g7_hex", FROZEN)
def test_cox_without_weight_is_bit_for_bit_unchanged(seed, tied, spread, ties, loss_hex, g0_hex, g7_hex):
    """weight=None keeps the old code path: fast path (spread 2) and log-space path (spread 800) alike."""
    log_hz, event, time = make_cox_data(seed, tied=tied, spread=spread)
    loss, grad = loss_and_grad(log_hz, event, time, ties=ties)
    assert (loss.item().hex(), grad[0].item().hex(), grad[7].item().hex()) == (loss_hex, g0_hex, g7_hex)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("seed,tied", [(0, True), (2, False), (3, True)])
def test_weighted_cox_equals_exact_reference(ties, reduction, seed, tied):
    log_hz, event, time = make_cox_data(seed, tied=tied)
    weight = make_weights(seed, len(time))
    loss, grad = loss_and_grad(log_hz, event, time, ties=ties, reduction=reduction, weight=weight)
    ref = log_hz.clone().requires_grad_()
    ref_loss = ref_cox_weighted(ref, event, time, weight, ties, reduction)
    ref_loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    torch.testing.assert_close(grad, ref.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_weights_of_one_equal_unweighted(ties):
    log_hz, event, time = make_cox_data(4)
    loss, grad = loss_and_grad(log_hz, event, time, ties=ties)
    ones_loss, ones_grad = loss_and_grad(log_hz, event, time, ties=ties, weight=torch.ones(len(time)))
    assert ones_loss.item() == pytest.approx(loss.item(), rel=1e-14)
    torch.testing.assert_close(ones_grad, grad, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("tied", [True, False])
def test_weighted_breslow_equals_row_replication(reduction, tied):
    """Integer weights = repeated rows for Breslow (not Efron: repeated rows tie with each other)."""
    log_hz, event, time = make_cox_data(5, tied=tied)
    weight = make_weights(5, len(time), integer=True)
    rows = torch.arange(len(time)).repeat_interleave(weight.long())
    loss, grad = loss_and_grad(log_hz, event, time, ties="breslow", reduction=reduction, weight=weight)
    x = log_hz.clone().requires_grad_()
    rep = neg_partial_log_likelihood(x[rows], event[rows], time[rows], ties="breslow", reduction=reduction)
    rep.backward()
    assert loss.item() == pytest.approx(rep.item(), rel=1e-13)
    torch.testing.assert_close(grad, x.grad, rtol=1e-12, atol=1e-14)
    efron = neg_partial_log_likelihood(log_hz, event, time, ties="efron", reduction=reduction, weight=weight)
    efron_rep = neg_partial_log_likelihood(log_hz[rows], event[rows], time[rows], ties="efron",
                                           reduction=reduction)
    assert efron.item() != pytest.approx(efron_rep.item(), rel=1e-6)  # a replicated event forms a tie group


def test_weighted_efron_equals_lifelines():
    """lifelines' weighted Efron log-likelihood (weights_col, robust=False) at its MLE, and its MLE itself."""
    lifelines = pytest.importorskip("lifelines")
    import pandas as pd

    from ctvl.survival.baselines import fit_coxph

    x, event, time = linear_cox_data(0)
    weight = np.random.default_rng(1).uniform(0.2, 3.0, time.size)
    frame = pd.DataFrame(x, columns=["a", "b", "c"]).assign(T=time, E=event.astype(int), w=weight)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lifelines suggests robust=True for non-integer weights
        cph = lifelines.CoxPHFitter().fit(frame, "T", "E", weights_col="w", robust=False,
                                          fit_options={"precision": 1e-12})  # its default stops ~1e-4 early
    params = cph.params_.to_numpy()
    ours = neg_partial_log_likelihood(torch.tensor(x @ params), torch.tensor(event), torch.tensor(time),
                                      reduction="sum", weight=torch.tensor(weight)).item()
    assert ours == pytest.approx(-cph.log_likelihood_, rel=1e-12)
    np.testing.assert_allclose(fit_coxph(x, event, time, weight=weight).coef, params, rtol=0, atol=1e-7)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("n,tied", [(300, True), (6000, True), (300, False)])
def test_weighted_cox_fast_path_equals_log_space_path(monkeypatch, ties, reduction, n, tied):
    log_hz, event, time = many_ties(n, n)
    if not tied:
        time = time + torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1e-3
    weight = make_weights(n, n)
    loss, grad = loss_and_grad(log_hz, event, time, ties=ties, reduction=reduction, weight=weight)
    ref_loss, ref_grad = log_space_cox(monkeypatch, log_hz, event, time, ties=ties, reduction=reduction,
                                       weight=weight)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-13 * grad.abs().max().item())


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_weighted_cox_extreme_weights_and_log_hazards(ties):
    """Weights over 1e-200..1e200 and log-hazards of any size stay exact (the spread of h + log w decides)."""
    log_hz, event, time = make_cox_data(6)
    weight = 10.0 ** torch.linspace(-200, 200, len(time), dtype=torch.float64)
    for scale in (1.0, 1000.0):
        loss = neg_partial_log_likelihood(log_hz * scale, event, time, ties=ties, weight=weight)
        exact = ref_cox_weighted(log_hz * scale, event, time, weight, ties).item()
        assert torch.isfinite(loss) and loss.item() == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_zero_weights_remove_samples(ties):
    log_hz, event, time = make_cox_data(7)
    weight = make_weights(7, len(time))
    weight[::4] = 0.0
    keep = weight > 0
    loss, grad = loss_and_grad(log_hz, event, time, ties=ties, weight=weight)
    kept, kept_grad = loss_and_grad(log_hz[keep], event[keep], time[keep], ties=ties, weight=weight[keep])
    assert loss.item() == kept.item()
    assert torch.equal(grad[keep], kept_grad) and torch.equal(grad[~keep], torch.zeros(int((~keep).sum()),
                                                                                       dtype=grad.dtype))
    no_events = torch.where(event, torch.zeros_like(weight), weight)  # every event weighs 0: no information
    assert neg_partial_log_likelihood(log_hz, event, time, ties=ties, weight=no_events).item() == 0.0


@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_cox_gradient_reaches_weights_that_require_it(ties):
    log_hz, event, time = make_cox_data(8)
    weight = make_weights(8, len(time))
    w = weight.clone().requires_grad_()
    neg_partial_log_likelihood(log_hz, event, time, ties=ties, weight=w).backward()
    ref = weight.clone().requires_grad_()
    ref_cox_weighted(log_hz, event, time, ref, ties).backward()
    torch.testing.assert_close(w.grad, ref.grad, rtol=1e-10, atol=1e-13)


# ------------------------------------------------------------------- Cox: inputs rejected, both paths


def functorch_cox(log_hz, event, time, **kw):
    """The loss under torch.func.grad: the torch (log-space) branch, as on a GPU."""
    return torch.func.grad(lambda h: neg_partial_log_likelihood(h, event, time, **kw))(log_hz)


@pytest.mark.parametrize("call", [neg_partial_log_likelihood, functorch_cox], ids=["fast_path", "torch_path"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_cox_rejects_non_finite_time_event_and_weight(call, bad):
    log_hz, event, time = make_cox_data(9)
    t = time.clone()
    t[3] = bad
    with pytest.raises(ValueError, match="`time` must be finite"):
        call(log_hz, event, t)
    e = event.double()
    e[2] = bad
    with pytest.raises(ValueError, match="`event` must be finite"):
        call(log_hz, e, time)
    w = torch.ones(len(time), dtype=torch.float64)
    w[5] = bad
    with pytest.raises(ValueError, match="`weight` must be finite and >= 0"):
        call(log_hz, event, time, weight=w)
    with pytest.raises(ValueError, match="`weight` must be finite and >= 0"):
        call(log_hz, event, time, weight=-torch.ones(len(time), dtype=torch.float64))
    with pytest.raises(ValueError, match="weight"):
        call(log_hz, event, time, weight=torch.ones(3))


def test_cox_rejects_nan_time_also_where_weights_need_a_gradient():
    log_hz, event, time = make_cox_data(10)
    time[0] = math.nan
    with pytest.raises(ValueError, match="`time` must be finite"):
        neg_partial_log_likelihood(log_hz, event, time, weight=torch.ones(len(time), requires_grad=True))


# ------------------------------------------------------------------ closed-form linear Cox derivatives


@pytest.mark.parametrize("ties", ["efron", "breslow"])
@pytest.mark.parametrize("weighted", [False, True])
def test_linear_cox_derivatives_equal_autograd_through_the_loss(ties, weighted):
    from ctvl.survival.cox import linear_cox_derivatives

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    beta = rng.normal(size=4) * 0.5
    time = rng.integers(0, 8, 80).astype(float)
    event = rng.random(80) < 0.6
    weight = rng.uniform(0, 2, 80) if weighted else None
    if weighted:
        weight[:5] = 0.0
    loss, grad, hessian = linear_cox_derivatives(x, event, time, beta, ties=ties, weight=weight)
    tensors = torch.tensor(x), torch.tensor(event), torch.tensor(time)
    w = None if weight is None else torch.tensor(weight)

    def objective(b):
        return neg_partial_log_likelihood(tensors[0] @ b, *tensors[1:], ties=ties, reduction="sum", weight=w)

    b = torch.tensor(beta, requires_grad=True)
    ref = objective(b)
    assert loss == pytest.approx(ref.item(), rel=1e-13)
    np.testing.assert_allclose(grad, torch.autograd.grad(ref, b)[0].numpy(), rtol=0, atol=1e-12)
    ref_hessian = torch.autograd.functional.hessian(objective, torch.tensor(beta)).numpy()
    np.testing.assert_allclose(hessian, ref_hessian, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------ DeepHit: weights


@pytest.mark.parametrize("rank_weight", [0.0, 0.7])
def test_weighted_deephit_equals_row_replication_and_ones_equal_unweighted(rank_weight):
    logits, bin_index, event = make_deephit_data(3)
    weight = make_weights(3, len(event), integer=True)
    rows = torch.arange(len(event)).repeat_interleave(weight.long())
    x = logits.clone().requires_grad_()
    ours = deephit_loss(x, bin_index, event, rank_weight=rank_weight, weight=weight)
    ours.backward()
    y = logits.clone().requires_grad_()
    rep = deephit_loss(y[rows], bin_index[rows], event[rows], rank_weight=rank_weight)
    rep.backward()
    assert ours.item() == pytest.approx(rep.item(), rel=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-10, atol=1e-14)
    total = deephit_loss(logits, bin_index, event, rank_weight, reduction="sum", weight=weight)
    rep_total = deephit_loss(logits[rows], bin_index[rows], event[rows], rank_weight, reduction="sum")
    assert total.item() == pytest.approx(rep_total.item(), rel=1e-12)
    terms = deephit_loss(logits, bin_index, event, rank_weight, reduction="none", weight=weight)
    assert terms.shape == (len(event),) and terms.sum().item() == pytest.approx(total.item(), rel=1e-14)
    ones = deephit_loss(logits, bin_index, event, rank_weight, weight=torch.ones(len(event)))
    plain = deephit_loss(logits, bin_index, event, rank_weight)
    assert ones.item() == pytest.approx(plain.item(), rel=1e-14)


def test_weighted_deephit_validates_and_zero_total_weight_is_zero():
    logits, bin_index, event = make_deephit_data(4)
    x = logits.clone().requires_grad_()
    zero = deephit_loss(x, bin_index, event, rank_weight=0.5, weight=torch.zeros(len(event)))
    zero.backward()
    assert zero.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    for bad in (math.nan, -1.0):
        w = torch.ones(len(event))
        w[0] = bad
        with pytest.raises(ValueError, match="`weight` must be finite and >= 0"):
            deephit_loss(logits, bin_index, event, weight=w)
