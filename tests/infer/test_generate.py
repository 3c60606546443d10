"""run_generate: JSONL answers, per-case reports with the risk group, batched = unbatched greedy decoding."""

import json

import numpy as np
import pytest

from ctvl.infer.generate import load_answers, run_generate
from ctvl.infer.predict import load_predictions, run_predict

from ..conftest import TINY_PREPROCESS
from .conftest import write_subset

QUESTIONS = [("tumor", "What is the location and size of the primary lung tumor?"),
             ("pleura", "Is there any pleural involvement or effusion present?")]


@pytest.fixture(scope="module")
def subset(cohort, tmp_path_factory):
    return write_subset(cohort, tmp_path_factory.mktemp("gen"), 4)[0]


@pytest.fixture(scope="module")
def generated(deephit_model, subset, template, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen_out")
    summary = run_generate(deephit_model, subset, out, clinical_template=str(template), questions=QUESTIONS,
                           preprocess_cfg=TINY_PREPROCESS, max_new_tokens=6, batch_size=4, progress=False)
    return summary, out


def test_answers_jsonl_and_reports(generated, deephit_model, subset, template, tmp_path):
    summary, out = generated
    records = load_answers(out / "answers.jsonl")
    assert summary.ok and summary.n_generated == 4 and len(records) == 8
    assert all(set(r) == {"case_id", "question_id", "question", "answer", "risk"} for r in records)
    assert {r["question_id"] for r in records} == {"tumor", "pleura"}
    run_predict(deephit_model, subset, tmp_path / "p.csv", clinical_template=str(template),
                questions=QUESTIONS, preprocess_cfg=TINY_PREPROCESS, workers=0, progress=False)
    pred = load_predictions(tmp_path / "p.csv").set_index("case_id")
    for r in records:  # the risk next to each answer is the one predict writes
        assert r["risk"] == pytest.approx(pred.loc[r["case_id"], f"risk_{r['question_id']}"], abs=1e-6)
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    case_risk = pred["risk"]
    for case_id, risk in case_risk.items():
        group = "high" if risk > summary.threshold else "low"
        assert f"## {case_id}" in md and f"{group} risk" in md.split(f"## {case_id}")[1].split("##")[0]
        assert case_id in html
    assert summary.threshold == pytest.approx(float(np.median(case_risk)), abs=1e-6)
    assert md.count("high risk**") == 2 and md.count("low risk**") == 2


def test_batched_greedy_answers_equal_one_case_at_a_time(generated, deephit_model, subset, template,
                                                         tmp_path):
    _, out = generated
    run_generate(deephit_model, subset, tmp_path, clinical_template=str(template), questions=QUESTIONS,
                 preprocess_cfg=TINY_PREPROCESS, max_new_tokens=6, batch_size=1, progress=False)
    key = lambda r: (r["case_id"], r["question_id"])  # noqa: E731
    batched = {key(r): r["answer"] for r in load_answers(out / "answers.jsonl")}
    single = {key(r): r["answer"] for r in load_answers(tmp_path / "answers.jsonl")}
    assert batched == single and len(set(batched.values())) > 2  # left padding changes no answer


def test_resume_skips_answered_cases_and_drops_a_torn_line(generated, deephit_model, subset, template,
                                                           tmp_path):
    _, out = generated
    lines = (out / "answers.jsonl").read_text().splitlines()
    (tmp_path / "answers.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])  # killed mid-line
    summary = run_generate(deephit_model, subset, tmp_path, clinical_template=str(template),
                           questions=QUESTIONS, preprocess_cfg=TINY_PREPROCESS, max_new_tokens=6,
                           batch_size=4, progress=False)
    answered_first = json.loads(lines[0])["case_id"]
    assert summary.n_skipped == 1 and summary.n_generated == 3  # only the complete first case was kept
    assert len(load_answers(tmp_path / "answers.jsonl")) == 8
    assert answered_first in (tmp_path / "report.md").read_text()
