"""Treatment effects (paper 004): piecewise-constant hazard, propensity/IPW, the three models, simulation, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ctvl.config import TreatmentConfig
from ctvl.survival.piecewise import hazard_cuts, interval_exposure, pc_hazard_nll, pc_survival
from ctvl.survival.propensity import (
    check_treatment,
    cross_fit_propensity,
    effective_sample_size,
    ipw_weights,
    overlap_summary,
)
from ctvl.survival.simulate_treatment import latent_subgroup, make_treatment_cohort, true_log_hr
from ctvl.survival.treatment import (
    HazardNet,
    TreatmentEffectModel,
    average_log_hr,
    estimate_treatment_effect,
)

FAST = dict(epochs=60, patience=15, bootstrap=0)


def _arrays(table):
    X = table[[c for c in table.columns if c.startswith("x")]].to_numpy()
    return X, table["treatment"].to_numpy(), table["time"].to_numpy(), table["event"].to_numpy().astype(bool)


# ------------------------------------------------------------------------------ piecewise hazard


def test_exposure_and_interval_by_hand():
    interval, exposure = interval_exposure(np.array([0.0, 0.5, 1.0, 2.0, 9.0]), np.array([0.0, 1.0, 3.0]))
    assert interval.tolist() == [0, 0, 0, 1, 1]
    assert exposure.tolist() == [[0.0, 0.0], [0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 2.0]]
    _, extended = interval_exposure(np.array([9.0]), np.array([0.0, 1.0, 3.0]), extend_last=True)
    assert extended.tolist() == [[1.0, 8.0]]


def test_constant_hazard_mle_is_events_over_exposure():
    """One interval: the likelihood is exponential, minimised at log(D / sum t)."""
    rng = np.random.default_rng(0)
    time, event = rng.exponential(2.0, 500), rng.random(500) < 0.7
    cuts = np.array([0.0, time.max()])
    interval, exposure = interval_exposure(time, cuts)
    eta = torch.zeros(500, 1, requires_grad=True)
    opt = torch.optim.LBFGS([eta], max_iter=100)

    def closure():
        opt.zero_grad()
        loss = pc_hazard_nll(eta.mean() * torch.ones(500, 1), torch.as_tensor(interval), torch.as_tensor(event),
                             torch.as_tensor(exposure))
        loss.backward()
        return loss

    opt.step(closure)
    assert float(eta.detach().mean()) == pytest.approx(np.log(event.sum() / time.sum()), abs=1e-4)
    surv = pc_survival(np.full((1, 1), np.log(0.5)), cuts, np.array([1.0, 4.0]))
    np.testing.assert_allclose(surv, np.exp(-0.5 * np.array([[1.0, 4.0]])))


def test_weighted_nll_equals_duplicated_rows():
    rng = np.random.default_rng(1)
    time, event = rng.exponential(1.0, 6), np.array([1, 0, 1, 1, 0, 1], bool)
    cuts = hazard_cuts(time, event, 3)
    interval, exposure = interval_exposure(time, cuts)
    eta = torch.as_tensor(rng.normal(size=(6, cuts.size - 1)))
    weight = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0, 1.0])
    rows = np.repeat(np.arange(6), weight.int().numpy())
    weighted = pc_hazard_nll(eta, torch.as_tensor(interval), torch.as_tensor(event), torch.as_tensor(exposure), weight)
    repeated = pc_hazard_nll(eta[rows], torch.as_tensor(interval[rows]), torch.as_tensor(event[rows]),
                             torch.as_tensor(exposure[rows]))
    assert float(weighted) == pytest.approx(float(repeated))


# ------------------------------------------------------------------------------ propensity / IPW


def test_ipw_weights_by_hand_stabilised_and_clipped():
    a = np.array([1, 1, 0, 0, 0])
    e = np.array([0.8, 0.2, 0.5, 0.1, 0.9])
    pi = 0.4
    hand = np.array([pi / 0.8, pi / 0.2, 0.6 / 0.5, 0.6 / 0.9, 0.6 / 0.1])
    np.testing.assert_allclose(ipw_weights(a, e, clip_quantile=None), hand)
    np.testing.assert_allclose(ipw_weights(a, e, stabilised=False, clip_quantile=None),
                               [1 / 0.8, 1 / 0.2, 2.0, 1 / 0.9, 10.0])
    clipped = ipw_weights(a, e, clip_quantile=0.8)
    assert clipped.max() == pytest.approx(np.quantile(hand, 0.8)) and np.all(clipped <= hand + 1e-12)
    assert effective_sample_size(np.ones(7)) == pytest.approx(7.0)
    assert effective_sample_size(hand) < 5


def test_stabilised_weights_average_one_and_cross_fitting_is_out_of_fold():
    table, _, patients = make_treatment_cohort(n=3000, treated_fraction=0.3, confounding=1.0, seed=0)
    X, a, _, _ = _arrays(table)
    e = cross_fit_propensity(X, a, folds=5, seed=0)
    assert np.corrcoef(e, patients["propensity"])[0, 1] > 0.95  # the model finds the true propensity
    w = ipw_weights(a, e, clip_quantile=None)
    assert abs(w[a == 1].sum() / a.size - a.mean()) < 0.05 and abs(w.mean() - 1) < 0.1
    in_sample = cross_fit_propensity(X, a, folds=1)
    assert not np.allclose(e, in_sample)
    summary = overlap_summary(a, e)
    assert summary["treated"][2] > summary["control"][2] and 0.6 < summary["auc"] < 0.9


@pytest.mark.parametrize("values, message", [
    (np.array([0, 1, 2, 1]), "must be binary 0/1; 1 rows are not (data rows 3"),
    (np.zeros(5), "no patient has treatment 1"),
    (np.ones(5), "no patient has treatment 0"),
])
def test_bad_treatment_is_a_clear_error(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_treatment(values, "treatment column 'tx'")


# ------------------------------------------------------------------------------ simulation


def test_simulation_is_reproducible_and_has_its_settings():
    t1, h1, p1 = make_treatment_cohort(n=4000, treated_fraction=0.1, effect="time_varying", censoring_rate=0.5, seed=3)
    t2, h2, p2 = make_treatment_cohort(n=4000, treated_fraction=0.1, effect="time_varying", censoring_rate=0.5, seed=3)
    pd.testing.assert_frame_equal(t1, t2)
    pd.testing.assert_frame_equal(h1, h2)
    assert not make_treatment_cohort(n=4000, seed=4)[0]["time"].equals(t1["time"])
    assert abs(t1["treatment"].mean() - 0.1) < 0.02 and abs(1 - t1["event"].mean() - 0.5) < 0.03
    treated_score = (t1["x0"] + 0.5 * t1["x2"])[t1["treatment"] == 1].mean()
    assert treated_score > 0.5  # confounded: the treated have the higher-hazard score
    assert len(h1) == 4000 * 20 and set(h1.columns) == {"case_id", "time", "log_hr"}
    early, late = h1.groupby("time")["log_hr"].first().iloc[[0, -1]]
    assert early < 0 < late  # crosses zero


def test_true_log_hr_definitions():
    X = np.array([[-2.0, 1.0, 0, 0], [0.0, 0.0, 0, 0], [2.0, -1.0, 0, 0]])
    assert latent_subgroup(X).tolist() == [0, 1, 2]
    np.testing.assert_allclose(true_log_hr(X, [1.0], "subgroups")[:, 0], [-1.0, 0.0, 0.6])
    np.testing.assert_allclose(true_log_hr(X, [1.0], "covariate")[:, 0], [0.0, -0.5, -1.0])
    np.testing.assert_allclose(true_log_hr(X[:1], [0.0, 2.5, 10.0], "time_varying")[0], [-0.8, 0.0, 0.8])


# ------------------------------------------------------------------------------ models


def test_factorised_recovers_a_constant_hazard_ratio_without_confounding():
    """n = 3000, 1:1, randomised, true log-HR -0.5: the average estimate is within 0.15 of it."""
    table, _, _ = make_treatment_cohort(n=3000, treated_fraction=0.5, confounding=0.0, effect="constant", seed=0)
    X, a, time, event = _arrays(table)
    model = estimate_treatment_effect(X, a, time, event, TreatmentConfig(**FAST)).model
    g = model.log_hazard_ratio(X)
    assert average_log_hr(g, model.event_share_) == pytest.approx(-0.5, abs=0.15)
    assert np.sqrt(np.mean((g + 0.5) ** 2)) < 0.2


@pytest.mark.parametrize("kind", ["factorised", "s_learner", "t_learner"])
def test_variants_share_backbone_and_likelihood(kind, monkeypatch):
    """Every variant is built from HazardNet only and trained through pc_hazard_nll by fit_network."""
    import ctvl.survival.treatment as treatment

    calls = {"nll": 0, "fit": 0}
    real_nll, real_fit = treatment.pc_hazard_nll, treatment.fit_network
    monkeypatch.setattr(treatment, "pc_hazard_nll", lambda *a, **k: calls.__setitem__("nll", calls["nll"] + 1)
                        or real_nll(*a, **k))
    monkeypatch.setattr(treatment, "fit_network", lambda *a, **k: calls.__setitem__("fit", calls["fit"] + 1)
                        or real_fit(*a, **k))
    table, _, _ = make_treatment_cohort(n=300, seed=0)
    X, a, time, event = _arrays(table)
    model = TreatmentEffectModel(TreatmentConfig(model=kind, epochs=3)).fit(X, a, time, event)
    leaves = [m for m in model.net.modules() if isinstance(m, torch.nn.Linear)]
    owners = [m for m in model.net.modules() if isinstance(m, HazardNet)]
    assert owners and sum(len([x for x in o.modules() if isinstance(x, torch.nn.Linear)]) for o in owners) == len(leaves)
    assert calls["fit"] == 1 and calls["nll"] > 3


def test_factorised_at_a_zero_is_the_baseline_network():
    table, _, _ = make_treatment_cohort(n=300, seed=1)
    X, a, time, event = _arrays(table)
    model = TreatmentEffectModel(TreatmentConfig(epochs=5)).fit(X, a, time, event)
    with torch.no_grad():
        base = model.net.base(torch.as_tensor(model._standardise(X), dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(model.log_hazard(X, 0), base, rtol=1e-6)
    np.testing.assert_allclose(model.log_hazard(X, 1) - model.log_hazard(X, 0), model.log_hazard_ratio(X), atol=1e-5)
    s0 = model.survival(X, 0, model.cuts_[1:])
    np.testing.assert_allclose(s0, pc_survival(base, model.cuts_, model.cuts_[1:]), rtol=1e-6)


def test_s_and_t_learner_log_hr_is_a_difference_of_arms():
    table, _, _ = make_treatment_cohort(n=300, seed=2)
    X, a, time, event = _arrays(table)
    for kind in ("s_learner", "t_learner"):
        model = TreatmentEffectModel(TreatmentConfig(model=kind, epochs=3)).fit(X, a, time, event)
        np.testing.assert_allclose(model.log_hazard_ratio(X), model.log_hazard(X, 1) - model.log_hazard(X, 0),
                                   atol=1e-5)


def test_subgroups_are_ordered_by_effect_and_sum_to_one(tmp_path):
    table, _, _ = make_treatment_cohort(n=600, effect="subgroups", seed=0)
    X, a, time, event = _arrays(table)
    model = TreatmentEffectModel(TreatmentConfig(subgroups=3, epochs=20)).fit(X, a, time, event)
    probs = model.subgroup_probabilities(X)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    effects = model.net.effects.detach().numpy().mean(1)
    assert np.all(np.diff(effects) >= 0)
    np.testing.assert_allclose(model.log_hazard_ratio(X), probs @ model.net.effects.detach().double().numpy(),
                               atol=1e-5)
    model.save(tmp_path / "m")
    loaded = TreatmentEffectModel.load(tmp_path / "m")
    np.testing.assert_allclose(loaded.log_hazard_ratio(X), model.log_hazard_ratio(X), atol=1e-6)


def test_subgroups_config_rules():
    with pytest.raises(ValueError, match="factorised"):
        TreatmentConfig(model="s_learner", subgroups=2)
    with pytest.raises(ValueError, match="subgroups"):
        TreatmentConfig(subgroups=1)


def test_ipw_fit_uses_the_weights():
    table, _, _ = make_treatment_cohort(n=500, confounding=2.0, seed=0)
    X, a, time, event = _arrays(table)
    est = estimate_treatment_effect(X, a, time, event, TreatmentConfig(ipw=True, epochs=3))
    assert est.propensity is not None and not np.allclose(est.weight, 1.0)
    assert est.effective_sample_size < len(a)
    np.testing.assert_allclose(est.weight, ipw_weights(a, est.propensity, clip_quantile=0.99))


# ------------------------------------------------------------------------------ command line


def test_cli_simulate_and_fit(tmp_path):
    from ctvl.cli import main

    sim = tmp_path / "sim.csv"
    assert main(["treatment", "simulate", "--out", str(sim), "--sim.n", "400", "--sim.effect", "time_varying"]) == 0
    truth = pd.read_csv(tmp_path / "sim_true_log_hr.csv")
    assert len(truth) == 400 * 20
    out = tmp_path / "fit"
    assert main(["treatment", "fit", "--tabular.table", str(sim), "--treatment.ipw", "true", "--treatment.epochs", "20",
                 "--treatment.bootstrap", "2", "--out", str(out)]) == 0
    hr = pd.read_csv(out / "hazard_ratios.csv")
    assert list(hr.columns) == ["case_id", "split", "time", "log_hr"] and len(hr) == 400 * 20
    assert set(hr["case_id"]) == set(truth["case_id"])
    curves = pd.read_parquet(out / "survival_curves.parquet")
    assert {"survival_control", "survival_treated"} <= set(curves.columns)
    assert curves["survival_control"].between(0, 1).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ipw"] and 0 < metrics["propensity"]["effective_sample_size"] <= metrics["n_train"]
    assert len(metrics["average_log_hr_ci"]) == 2 and "c_index" in metrics["test"]
    assert metrics["cox"]["marginal"]["weighted"]
    for name in ("hazard_ratio.png", "survival_by_arm.png", "model/model.safetensors", "run_config.yaml"):
        assert (out / name).stat().st_size > 0


def test_cli_bad_treatment_column_exits_2(tmp_path, caplog):
    from ctvl.cli import main

    table, _, _ = make_treatment_cohort(n=60, seed=0)
    table["treatment"] = table["treatment"].astype(object)
    table.loc[4, "treatment"] = "maybe"
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    assert main(["treatment", "fit", "--tabular.table", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "treatment column 'treatment'" in caplog.text and "data rows 5" in caplog.text
    assert main(["treatment", "fit", "--tabular.table", str(path), "--treatment.column", "arm",
                 "--out", str(tmp_path / "o")]) == 2
    assert "no treatment column 'arm'" in caplog.text
