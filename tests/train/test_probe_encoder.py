"""``scripts/probe_encoder.py`` on the tiny cohort: its figures agree with the demo's own computations."""

import math

import numpy as np
import pandas as pd

from ctvl.data.synthetic import compute_image_features, load_findings, oracle_c_index
from ctvl.workflows.demo import clinical_cox_c_index, clinical_matrix
from ctvl.models.vision3d import load_merlin_image_encoder
from ctvl.survival.baselines import fit_and_score

from ..conftest import TINY_VISION, load_script


def test_probe_reports_findings_and_cox_rows(tiny_data, capsys):
    result = load_script("probe_encoder").main(["--run", str(tiny_data.root)])
    manifest = pd.read_csv(tiny_data.manifest)
    assert result["n_valid"] == int((manifest["split"] == "validation").sum())
    assert result["feature_dim"] == 256  # the tiny encoder: 8 x 32 channels
    c = result["c_index"]
    # The same CoxPH the demo summary prints (same split and fit), and the cohort's oracle.
    assert math.isclose(c["clinical only"], clinical_cox_c_index(tiny_data.manifest), abs_tol=1e-12)
    assert math.isclose(c["oracle (true log-hazard)"],
                        oracle_c_index(manifest[manifest["split"] == "validation"]), abs_tol=1e-12)
    assert all(0.0 <= v <= 1.0 for v in [*c.values(), *result["finding_auc"].values()])
    assert result["finding_auc"] and math.isfinite(result["image_risk_r2"])
    out = capsys.readouterr().out
    assert "clinical + true image risk" in out and "blurred by noise" in out
    # Clinical + one true imaging feature: the same CoxPH fitted here from the cohort's findings.json.
    true_c = result["c_index_true_features"]
    assert {"+ metastatic_sites", "+ all but metastatic_sites", "+ all"} <= set(true_c)
    cases = {f.case_id: f for f in load_findings(tiny_data.root / "cohort" / "findings.json")}
    sites = np.array([compute_image_features(cases[c])["metastatic_sites"] for c in manifest["case_id"]])
    train, valid = (manifest["split"] == "train").to_numpy(), (manifest["split"] == "validation").to_numpy()
    X = np.c_[clinical_matrix(manifest), sites]
    y = lambda m: (manifest["event"][m].to_numpy(bool), manifest["time"][m].to_numpy(float))  # noqa: E731
    expected = fit_and_score("coxph", X[train], y(train), X[valid], y(valid), seed=0)["c_index"]
    assert math.isclose(true_c["+ metastatic_sites"], expected, abs_tol=1e-12)
    # Blurring the true site count: no noise is the true-feature row; detection AUC falls with the noise.
    blurred = result["c_index_blurred_metastatic_sites"]
    assert math.isclose(blurred[0.0][1], expected, abs_tol=1e-12) and blurred[0.0][0] == 1.0
    aucs = [auc for auc, _ in blurred.values()]
    assert aucs == sorted(aucs, reverse=True) and aucs[-1] < 0.8


def test_metastases_are_also_probed_per_site(tiny_data):
    findings = pd.read_csv(tiny_data.root / "cohort" / "findings.csv")
    sites = load_script("probe_encoder").with_metastasis_sites(findings)
    names = list(sites.columns)
    at = names.index("metastases_present")
    assert names[at + 1:at + 3] == ["liver_metastasis_present", "adrenal_metastasis_present"]
    listed = findings["metastatic_sites"].fillna("")
    assert (sites["liver_metastasis_present"] == listed.str.contains("liver")).all()
    assert (sites["adrenal_metastasis_present"] == listed.str.contains("adrenal")).all()
    assert sites["liver_metastasis_present"].any() and sites["adrenal_metastasis_present"].any()


def test_probe_of_a_checkpoint_runs_it_over_the_cached_volumes(tiny_data, capsys):
    # The run's own encoder, run afresh over cache/images, gives the features of its feature cache.
    probe = load_script("probe_encoder")
    case_ids = pd.read_csv(tiny_data.manifest)["case_id"]
    encoder = load_merlin_image_encoder(tiny_data.encoder_checkpoint, TINY_VISION)
    cached = probe.pooled_features(tiny_data.root, case_ids)
    fresh = probe.pooled_features(tiny_data.root, case_ids, encoder)
    assert fresh.shape == cached.shape
    np.testing.assert_allclose(fresh, cached, rtol=2e-3, atol=2e-3)  # the feature cache is float16
    result = probe.main(["--run", str(tiny_data.root), "--encoder", str(tiny_data.encoder_checkpoint)])
    assert result["feature_dim"] == 256 and str(tiny_data.encoder_checkpoint) in capsys.readouterr().out


def test_image_risk_probe_cross_fits_the_train_split():
    """On pure-noise features an in-sample ridge fit tracks the train target; a cross-fitted one does not."""
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(0)
    X, target = rng.standard_normal((120, 80)), rng.standard_normal(120)
    train = np.arange(120) < 90
    risk, r2 = load_script("probe_encoder").image_risk_probe(X, target, train, ~train)
    in_sample = RidgeCV(alphas=np.logspace(-2, 4, 25)).fit(X[train], target[train]).predict(X[train])
    assert np.corrcoef(in_sample, target[train])[0, 1] > 0.5
    assert abs(np.corrcoef(risk[train], target[train])[0, 1]) < 0.3
    assert np.isfinite(risk).all() and r2 < 0.1
