"""run_evaluate: metrics equal ctvl.survival's on the same numbers, CIs, figures, BERTScore offline."""

import json
import socket

import numpy as np
import pandas as pd
import pytest

from ctvl.infer.evaluate import load_reference_answers, run_evaluate
from ctvl.infer.predict import load_predictions, run_predict
from ctvl.survival.metrics import antolini_c, harrell_c, logrank_test, uno_c

from ..conftest import TINY_PREPROCESS


@pytest.fixture(scope="module")
def cox_predictions(cohort, cox_model, template, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_pred") / "predictions.parquet"
    run_predict(cox_model, cohort.manifest, out, clinical_template=str(template), workers=0, batch_size=10,
                progress=False, save_embeddings=True)
    return out


def _validation(predictions, manifest):
    df = load_predictions(predictions).merge(pd.read_csv(manifest, dtype={"case_id": str}), on="case_id")
    return df[df["split"] == "validation"], df[df["split"] == "train"]


def test_cox_metrics_figures_and_report(cox_predictions, cohort, tmp_path):
    metrics = run_evaluate(cox_predictions, cohort.manifest, tmp_path, bootstrap=100,
                           embeddings=cox_predictions.with_suffix(".z_surv.npy"))
    ev, train = _validation(cox_predictions, cohort.manifest)
    event, time, risk = ev["event"].to_numpy(bool), ev["time"].to_numpy(float), ev["risk"].to_numpy(float)
    surv = metrics["survival"]
    assert metrics["n"] == len(ev) and metrics["split"] == "all but train"
    assert surv["harrell_c"]["value"] == pytest.approx(harrell_c(risk, event, time).cindex, abs=1e-12)
    uno = uno_c(train["event"].to_numpy(bool), train["time"].to_numpy(float), event, time, risk).cindex
    assert surv["uno_c"]["value"] == pytest.approx(uno, abs=1e-12)
    for name in ("harrell_c", "uno_c", "ibs"):
        lo, hi = surv[name]["ci"]
        assert lo <= surv[name]["value"] <= hi and lo < hi
    assert 0.0 < surv["ibs"]["value"] < 1.0 and metrics["survival_curves"] == "cox-breslow"
    assert "antolini_c" not in surv
    high = risk > np.median(risk)
    expected_p = logrank_test(event, time, high).p_value
    assert metrics["risk_groups"]["p_value"] == pytest.approx(expected_p, rel=1e-9)
    assert json.loads((tmp_path / "metrics.json").read_text())["survival"]["harrell_c"] == surv["harrell_c"]
    for name in ("km", "calibration", "latent"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "Harrell" in page


def test_deephit_antolini_from_survival_columns(cohort, deephit_model, tmp_path):
    manifest = pd.read_csv(cohort.manifest, dtype={"case_id": str})
    validation = manifest[manifest["split"] == "validation"].assign(
        image=lambda d: [str((cohort.manifest.parent / p).resolve()) for p in d["image"]])
    validation.to_csv(tmp_path / "validation.csv", index=False)
    out = tmp_path / "dh.csv"  # DeepHit curves need no train-split predictions
    run_predict(deephit_model, tmp_path / "validation.csv", out, preprocess_cfg=TINY_PREPROCESS, workers=0,
                batch_size=10, progress=False)
    metrics = run_evaluate(out, cohort.manifest, tmp_path / "eval", bootstrap=50)
    ev, _ = _validation(out, cohort.manifest)
    cols = [c for c in ev.columns if c.startswith("surv_")]
    grid = np.array([float(c[5:]) for c in cols])
    expected = antolini_c(ev[cols].to_numpy(), grid, ev["event"].to_numpy(bool), ev["time"].to_numpy(float))
    assert metrics["survival"]["antolini_c"]["value"] == pytest.approx(expected, abs=1e-12)
    assert metrics["survival_curves"] == "deephit" and "ibs" in metrics["survival"]


def test_bertscore_with_the_local_minilm_never_touches_the_network(cox_predictions, cohort, tmp_path,
                                                                   monkeypatch):
    refs = load_reference_answers(cohort.vqa)
    generated = tmp_path / "answers.jsonl"
    generated.write_text("".join(json.dumps({"case_id": c, "question_id": q, "question": "", "answer": a,
                                             "risk": 0.0}) + "\n" for (c, q), a in refs.items()))

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    metrics = run_evaluate(cox_predictions, cohort.manifest, tmp_path, generated=generated,
                           references=cohort.vqa, n_bertscore=24, bootstrap=20)
    bs = metrics["bertscore"]
    assert "all-MiniLM-L6-v2" in bs["model"] and bs["num_layers"] == 6 and bs["n_pairs"] == 24
    assert bs["n_available"] == len(refs) == 180
    assert bs["f1"]["value"] == pytest.approx(1.0, abs=1e-3)  # answers identical to their references
    assert "BERTScore F1" in (tmp_path / "report.html").read_text()
