"""Synthetic survival tables (paper 003): post-processing, outcomes, the CK4Gen generator, baselines, utility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ctvl.config import SynthTabularConfig
from ctvl.data.tabular import TabularEncoder, load_bundled_dataset
from ctvl.survival.curves import kaplan_meier, read_step
from ctvl.tabgen.baselines import fit_generator
from ctvl.tabgen.ck4gen import CK4Gen
from ctvl.tabgen.dcm import decode_blocks, reconstruction_loss
from ctvl.tabgen.normal_scores import NormalScores
from ctvl.tabgen.outcomes import OutcomeModel
from ctvl.tabgen.postprocess import ColumnBounds
from ctvl.tabgen.utility import (
    compare_hazard_ratios,
    cox_design,
    hazard_ratio_table,
    km_agreement,
    marginal_distances,
    privacy,
)

FAST = SynthTabularConfig(epochs=40, patience=10, hidden=(32,), latent_dim=8)


def _mixed_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """Covariates of every kind (float, whole-number float, int, bool, categorical, text, missing cells) + outcomes."""
    rng = np.random.default_rng(seed)
    age = rng.normal(60, 10, n).round()
    dose = np.exp(rng.normal(0, 1, n))
    dose[rng.uniform(size=n) < 0.1] = np.nan
    stage = pd.Categorical(rng.choice(["I", "II", "III"], n, p=[0.5, 0.3, 0.2]), categories=["I", "II", "III"])
    smoker = rng.uniform(size=n) < 0.3
    nodes = rng.poisson(3, n).astype(np.int64)
    site = rng.choice(["left", "right"], n).astype(object)
    log_hz = 0.04 * (age - 60) + 0.6 * (stage.codes == 2) + 0.5 * smoker
    event_time = rng.exponential(np.exp(-log_hz))
    censor = rng.exponential(1.5, n)
    return pd.DataFrame({"age": age, "dose": dose, "stage": stage, "smoker": smoker, "nodes": nodes, "site": site,
                         "time": np.minimum(event_time, censor), "event": event_time <= censor})


@pytest.fixture(scope="module")
def fitted():
    table = _mixed_table()
    return table, CK4Gen(FAST).fit(table.drop(columns=["time", "event"]), table["event"], table["time"])


# ------------------------------------------------------------------------------------ post-processing


def test_column_bounds_restore_types_ranges_and_levels():
    real = _mixed_table().drop(columns=["time", "event"])
    bounds = ColumnBounds().fit(real)
    wild = pd.DataFrame({"age": [10.4, 70.6, 200.0], "dose": [np.nan, -3.0, 1e9], "stage": ["III", "I", None],
                         "smoker": [1.0, 0.0, 1.0], "nodes": [2.7, -1.0, 99.0], "site": ["left", "right", "left"]})
    back = bounds.restore(wild)
    assert list(back.columns) == list(real.columns)
    assert back.dtypes.to_dict() == real.dtypes.to_dict()
    assert back["age"].tolist() == [real["age"].min(), 71.0, real["age"].max()]  # clipped, whole numbers rounded
    assert back["dose"].iloc[1:].tolist() == [np.nanmin(real["dose"]), np.nanmax(real["dose"])]
    assert np.isnan(back["dose"].iloc[0])  # missing stays missing
    assert back["nodes"].tolist() == [3, real["nodes"].min(), real["nodes"].max()]
    assert back["stage"].isna().iloc[2] and back["stage"].iloc[0] == "III"
    with pytest.raises(ValueError, match="not in the real categories"):
        bounds.restore(wild.assign(stage=["IV", "I", "I"]))
    with pytest.raises(ValueError, match="lacks the real columns"):
        bounds.restore(wild.drop(columns=["site"]))
    assert ColumnBounds.from_dict(bounds.to_dict()).columns_ == bounds.columns_


def test_normal_scores_round_trip_and_keep_order():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.exponential(size=500), np.where(rng.uniform(size=500) < 0.3, 0.0, rng.gamma(2, size=500)),
                         rng.integers(0, 2, 500)])
    scores = NormalScores().fit(X, [0, 1])
    U = scores.transform(X)
    assert np.allclose(scores.inverse(U)[:, :2], X[:, :2]) and np.array_equal(U[:, 2], X[:, 2])
    assert np.all(np.diff(U[np.argsort(X[:, 0]), 0]) >= 0)
    assert abs(U[:, 0].mean()) < 0.05 and abs(U[:, 0].std() - 1) < 0.05  # standard normal scores
    assert NormalScores.from_dict(scores.to_dict()).inverse(U[:5]).tolist() == scores.inverse(U[:5]).tolist()


# ------------------------------------------------------------------------------------ outcomes


def test_generated_outcomes_follow_the_cox_model_and_the_censoring():
    rng = np.random.default_rng(1)
    x = rng.normal(size=20000)
    event_time, censor = rng.exponential(np.exp(-x)), rng.exponential(1.5, size=x.size)
    time, event = np.minimum(event_time, censor), event_time <= censor
    model = OutcomeModel().fit(x, event, time)
    t2, e2 = model.sample(x, np.random.default_rng(2))
    assert abs(e2.mean() - event.mean()) < 0.015
    grid = np.quantile(time, [0.25, 0.5, 0.75])
    assert np.abs(read_step(*kaplan_meier(e2, t2), grid) - read_step(*kaplan_meier(event, time), grid)).max() < 0.02
    assert np.isin(t2, time).all()  # only real distinct times
    high, low = x > 1, x < -1
    assert np.median(t2[high]) < np.median(t2[low])  # the hazard is kept per patient
    assert OutcomeModel.from_dict(model.to_dict()).sample(x[:5], np.random.default_rng(3))[0].tolist() == \
        model.sample(x[:5], np.random.default_rng(3))[0].tolist()


# ------------------------------------------------------------------------------------ networks


def test_decode_blocks_gives_probabilities_and_the_loss_scores_each_block():
    table = _mixed_table(50).drop(columns=["time", "event"])
    encoder = TabularEncoder(categorical="onehot", missing_indicators=True).fit(table)
    blocks = encoder.blocks()
    assert [role for _, role, _, _ in blocks] == ["numeric", "numeric", "indicator", "onehot", "binary", "numeric",
                                                  "onehot"]
    out = decode_blocks(torch.randn(7, len(encoder.feature_names_)), blocks)
    _, _, a, b = blocks[3]
    assert torch.allclose(out[:, a:b].sum(1), torch.ones(7))
    X = torch.as_tensor(encoder.transform(table), dtype=torch.float32)
    perfect = X.clone()
    for _, role, a, b in blocks:  # logits that put all mass on the true level / value
        if role != "numeric":
            perfect[:, a:b] = (X[:, a:b] * 2 - 1) * 30
    assert float(reconstruction_loss(perfect, X, blocks)) < 1e-6
    assert float(reconstruction_loss(torch.zeros_like(X), X, blocks)) > 0.3


# ------------------------------------------------------------------------------------ CK4Gen


def test_distillation_loss_drops_and_the_student_follows_the_teacher(fitted):
    _, gen = fitted
    before, after = gen.history_["loss_before"], gen.history_["loss_after"]
    assert after["distillation"] < 0.2 * before["distillation"]
    assert after["reconstruction"] < 0.5 * before["reconstruction"]
    assert gen.history_["teacher_student_correlation"] > 0.9


def test_samples_keep_columns_types_ranges_and_levels(fitted):
    table, gen = fitted
    synthetic = gen.sample(500, noise=0.5, seed=3)
    real = table.drop(columns=["time", "event"])
    assert list(synthetic.columns) == list(table.columns) and len(synthetic) == 500
    assert synthetic.drop(columns=["time", "event"]).dtypes.to_dict() == real.dtypes.to_dict()
    for name in ("age", "dose", "nodes"):
        assert synthetic[name].min() >= real[name].min() and synthetic[name].max() <= real[name].max()
    assert (synthetic["age"] == synthetic["age"].round()).all()
    assert set(synthetic["site"]) <= {"left", "right"} and set(synthetic["stage"].dropna()) <= {"I", "II", "III"}
    assert 0 < synthetic["dose"].isna().mean() < 0.3  # missing cells are generated too
    assert synthetic["event"].dtype == bool and (synthetic["time"] >= 0).all()


def test_copy_mode_carries_event_and_duration_over_unchanged(fitted):
    table, gen = fitted
    synthetic = gen.sample(0, noise=0.5, outcome="copy", seed=4)  # every record once, without replacement
    real = sorted(zip(table["time"], table["event"]))
    assert sorted(zip(synthetic["time"], synthetic["event"])) == real
    with pytest.raises(ValueError, match="outcome"):
        gen.sample(10, outcome="resample")


def test_saved_generator_samples_the_same_rows(fitted, tmp_path):
    _, gen = fitted
    gen.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["generator.json", "networks.safetensors",
                                                                      "records.safetensors"]
    loaded = CK4Gen.load(tmp_path / "model")
    pd.testing.assert_frame_equal(loaded.sample(50, seed=5), gen.sample(50, seed=5))
    with pytest.raises(FileNotFoundError, match="generator.json"):
        CK4Gen.load(tmp_path)


def test_hazard_ratios_survive_generation(fitted):
    table, gen = fitted
    design = cox_design(table)
    result = compare_hazard_ratios(design, table, gen.sample(0, noise=0.5, seed=6))
    assert result["sign_agreement_significant"] == 1.0
    assert result["mean_abs_log_hr_diff"] < 0.35


def test_flchain_zero_follow_up_times_fit_and_sample():
    table = load_bundled_dataset("flchain")
    rows = np.r_[np.flatnonzero(table.time == 0), np.arange(400)]
    part = table.subset(rows)
    gen = CK4Gen(SynthTabularConfig(epochs=5, hidden=(16,), latent_dim=4)).fit(part.covariates, part.event, part.time)
    synthetic = gen.sample(200, seed=0)
    assert synthetic["time"].min() >= 0 and synthetic["creatinine"].isna().any()


def test_outcome_columns_may_not_clash_with_covariates():
    table = _mixed_table(60)
    with pytest.raises(ValueError, match="outcome columns"):
        CK4Gen(FAST).fit(table.drop(columns=["event"]), table["event"], table["time"])


# ------------------------------------------------------------------------------------ baselines


def test_copula_keeps_marginals_and_a_strong_correlation():
    rng = np.random.default_rng(0)
    z = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], size=2000)
    real = pd.DataFrame({"a": z[:, 0], "b": np.exp(z[:, 1]), "g": pd.Categorical(np.where(z[:, 0] > 1, "x", "y")),
                         "time": rng.exponential(size=2000), "event": rng.uniform(size=2000) < 0.6})
    fake = fit_generator("copula", real, seed=0).sample(2000, seed=1)
    assert abs(np.corrcoef(fake["a"], np.log(fake["b"]))[0, 1] - 0.8) < 0.05
    assert max(v["value"] for v in marginal_distances(real, fake).values()) < 0.05


def test_bootstrap_is_caught_copying_by_the_privacy_measures():
    table = _mixed_table(400)
    train, holdout = table.iloc[:300].reset_index(drop=True), table.iloc[300:].reset_index(drop=True)
    copied = privacy(train, holdout, fit_generator("bootstrap", train).sample(300, seed=0))
    assert copied["exact_copies"] == 1.0 and copied["dcr_synthetic_p5"] == 0.0
    assert copied["membership_auc"] > 0.8
    fresh = privacy(train, holdout, _mixed_table(300, seed=9))  # new patients from the same population
    assert fresh["exact_copies"] == 0.0 and 0.4 < fresh["membership_auc"] < 0.6


def test_tvae_baseline_runs_when_ctgan_is_installed():
    pytest.importorskip("ctgan")
    table = _mixed_table(120)
    fake = fit_generator("tvae", table, seed=0, tvae_epochs=2).sample(50, seed=0)
    assert list(fake.columns) == list(table.columns) and fake.dtypes.to_dict() == table.dtypes.to_dict()


# ------------------------------------------------------------------------------------ utility


def test_hazard_ratio_table_equals_lifelines():
    lifelines = pytest.importorskip("lifelines")
    table = load_bundled_dataset("gbsg2")
    frame = table.covariates.assign(time=table.time, event=table.event)
    design = cox_design(frame)
    X = design.transform(table.covariates)
    ours = hazard_ratio_table(X, table.event, table.time, design.feature_names_)
    df = pd.DataFrame(X, columns=design.feature_names_).assign(time=table.time, event=table.event.astype(int))
    ref = lifelines.CoxPHFitter().fit(df, "time", "event").summary
    assert np.allclose(ours["coef"], ref["coef"], atol=1e-6)
    assert np.allclose(ours["se"], ref["se(coef)"], rtol=1e-5)
    assert np.allclose(ours["lower"], ref["coef lower 95%"], atol=1e-5)
    assert np.allclose(ours["p"], ref["p"], rtol=1e-4, atol=1e-12)


def test_identical_tables_agree_perfectly():
    table = _mixed_table(200)
    design = cox_design(table)
    same = compare_hazard_ratios(design, table, table)
    assert same["mean_abs_log_hr_diff"] == 0.0 and same["real_inside_synthetic_ci"] == 1.0
    assert all(v["value"] == 0.0 for v in marginal_distances(table, table).values())
    km = km_agreement(table, table)
    assert km["km_mean_abs_gap"] == 0.0 and km["logrank_p"] > 0.99


def test_a_level_missing_from_the_synthetic_table_gives_nan_not_a_crash():
    table = _mixed_table(300)
    design = cox_design(table)
    no_stage3 = table[table["stage"] != "III"].reset_index(drop=True)
    result = compare_hazard_ratios(design, table, no_stage3)
    row = next(r for r in result["rows"] if r["covariate"] == "stage=III")
    assert np.isnan(row["coef_synthetic"]) and result["missing_in_synthetic"] == 1


def test_mixture_codes_give_valid_rows_and_refuse_copied_outcomes(fitted):
    table, gen = fitted
    synthetic = gen.sample(300, latent="mixture", components=4, seed=7)
    assert synthetic.dtypes.to_dict() == table.dtypes.to_dict() and len(synthetic) == 300
    assert synthetic["stage"].nunique() == 3 and 0.1 < synthetic["event"].mean() < 0.9
    with pytest.raises(ValueError, match="needs drawn records"):
        gen.sample(10, latent="mixture", outcome="copy")
