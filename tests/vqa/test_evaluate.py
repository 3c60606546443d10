"""Grading against known findings: the rule back-end on the synthetic cohort, and the grader itself."""

import io

import pandas as pd
import pytest

from ctvl.config import SyntheticCohortConfig
from ctvl.data.synthetic import make_cohort
from ctvl.vqa.answer import compose_report
from ctvl.data.questions import QuestionSet
from ctvl.vqa.evaluate import QUESTION_SLOTS, evaluate_extraction, parse_answer, sizes_mm
from ctvl.vqa.extract_rules import RuleExtractor

QS = QuestionSet()


@pytest.fixture(scope="module")
def cohort():
    df, findings = make_cohort(SyntheticCohortConfig(n_cases=100, shape=(16, 16, 16), seed=7))
    reports = [compose_report(a, b) for a, b in zip(df["Findings_EN"], df["Impressions_EN"])]
    answers = RuleExtractor().extract(reports, QS)
    pairs = {cid: {a.question_id: a.text for a in ans} for cid, ans in zip(df["case_id"], answers)}
    return df, findings, pairs


def test_rule_backend_reaches_95_percent_of_slots_on_the_synthetic_cohort(cohort):
    _, findings, pairs = cohort
    scores = evaluate_extraction(pairs, findings)
    assert scores.slot_accuracy >= 0.95
    assert (scores.per_question["slot_accuracy"] >= 0.95).all(), scores.per_question
    assert len(scores.details) == 100 * sum(len(s) for s in QUESTION_SLOTS.values())
    assert not scores.missing_cases


def test_truth_read_back_from_findings_csv_grades_the_same(cohort):
    _, findings, pairs = cohort
    buf = io.StringIO()
    pd.DataFrame([f.slots() for f in findings]).to_csv(buf, index=False)
    buf.seek(0)
    from_csv = evaluate_extraction(pairs, pd.read_csv(buf))
    assert from_csv.slot_accuracy == evaluate_extraction(pairs, findings).slot_accuracy


def test_hand_written_fixtures_are_graded_correct(report_cases, truth_slots):
    reports = [compose_report(c[1], c[2]) for c in report_cases]
    answers = RuleExtractor().extract(reports, QS)
    records = [{"id": c[0], "answers": [a.to_dict() for a in ans]} for c, ans in zip(report_cases, answers)]
    scores = evaluate_extraction(records, truth_slots)
    assert scores.slot_accuracy == 1.0, scores.details[~scores.details["correct"]]


def test_grader_detects_wrong_answers(cohort):
    df, findings, pairs = cohort
    ids = list(pairs)
    shuffled = {cid: pairs[ids[(i + 1) % len(ids)]] for i, cid in enumerate(ids)}
    assert evaluate_extraction(shuffled, findings).slot_accuracy < 0.8
    silent = {cid: {q: QS.not_mentioned for q in QS.ids} for cid in ids}
    silent_scores = evaluate_extraction(silent, findings)
    present = sum(f.tumour_lobe is not None for f in findings) / len(findings)
    assert silent_scores.per_question.loc["tumor", "answer_accuracy"] == pytest.approx(1 - present)
    partial = evaluate_extraction({ids[0]: pairs[ids[0]]}, findings)
    assert len(partial.missing_cases) == len(ids) - 1


@pytest.mark.parametrize(
    "answer, slot, expected",
    [
        ("A 34 mm mass in the right upper lobe.", "tumour_size_mm", 34.0),
        ("A 3.6 cm mass in the right upper lobe.", "tumour_size_mm", 36.0),  # 2 mm off the truth below
        ("No mass in the right upper lobe.", "tumour_present", False),
        ("Mass in the upper lobe of the left lung measuring 4.2 x 3.1 cm.", "tumour_lobe", "left upper lobe"),
    ],
)
def test_answer_parsing(answer, slot, expected):
    assert parse_answer("tumor", answer)[slot] == expected


def test_size_tolerance_is_one_mm():
    truth = [
        {"case_id": "c", "tumour_present": True, "tumour_lobe": "right upper lobe", "tumour_size_mm": 34}
    ]
    grade = lambda text: evaluate_extraction({"c": {"tumor": text}}, truth, question_map={"tumor": "tumor"})  # noqa: E731
    assert grade("A 35 mm mass in the right upper lobe.").slot_accuracy == 1.0
    assert grade("A 3.6 cm mass in the right upper lobe.").slot_accuracy == pytest.approx(2 / 3)
    assert sizes_mm("2,5 x 1.8 cm and 12 mm") == [[25.0, 18.0], [12.0]]
    with pytest.raises(ValueError, match="no slot parser"):
        parse_answer("unknown", "text")


def test_files_as_written_by_the_synthetic_cohort(tmp_path):
    """write_cohort -> raw CT-RATE report CSVs (VolumeName ids) -> build -> graded against findings.csv."""
    from ctvl.data.synthetic import write_cohort
    from ctvl.vqa.build import read_reports, run_build_vqa
    from ctvl.vqa.config import VQAConfig
    from ctvl.vqa.evaluate import run_evaluate_vqa

    paths = write_cohort(
        SyntheticCohortConfig(n_cases=100, shape=(8, 8, 8), spacing=(40, 40, 40), seed=11),
        tmp_path / "cohort",
    )
    reports = pd.concat([read_reports(paths.train_reports), read_reports(paths.validation_reports)])
    run_build_vqa(reports, tmp_path / "vqa", VQAConfig(id_column="VolumeName"), progress=False)
    scores = run_evaluate_vqa(tmp_path / "vqa", paths.findings_csv)
    assert scores.slot_accuracy >= 0.95 and not scores.missing_cases
    assert (scores.per_question["slot_accuracy"] >= 0.95).all(), scores.per_question
    per_q = pd.read_csv(tmp_path / "vqa" / "evaluation_per_question.csv", index_col=0)
    assert per_q.loc["tumor", "n_cases"] == 100
