"""build-vqa pipeline: outputs and formats, determinism, resume after a kill, bad input, review import."""

import json
from pathlib import Path

import pandas as pd
import pytest

from ctvl.config import SyntheticCohortConfig
from ctvl.data.synthetic import make_cohort
from ctvl.utils.errors import load_errors
from ctvl.vqa.build import read_journal, run_build_vqa, run_import_review
from ctvl.data.questions import QuestionSet
from ctvl.vqa.config import VQAConfig
from ctvl.vqa.evaluate import evaluate_extraction
from ctvl.vqa.extract_rules import RuleExtractor

CLINICAL = str(Path(__file__).resolve().parents[2] / "configs" / "clinical" / "synthetic.yaml")
QS = QuestionSet()


@pytest.fixture(scope="module")
def cohort():
    df, findings = make_cohort(SyntheticCohortConfig(n_cases=24, shape=(16, 16, 16), seed=3))
    df.loc[5, ["Findings_EN", "Impressions_EN"]] = ["", None]  # empty report
    df = pd.concat([df, df.iloc[[2]]], ignore_index=True)  # duplicate id
    return df, findings


def cfg(**kw):
    return VQAConfig(id_column="case_id", clinical_template=CLINICAL, chunk_size=5, **kw)


def lines(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_outputs_formats_and_accuracy(cohort, tmp_path):
    df, findings = cohort
    summary = run_build_vqa(df, tmp_path, cfg(), progress=False)
    assert (summary.n_reports, summary.n_processed, summary.n_empty, summary.n_pairs) == (24, 23, 1, 23 * 6)
    pairs = lines(tmp_path / "vqa_llava.jsonl")
    first = pairs[0]
    assert set(first) == {"id", "image", "conversations"} and first["id"] == f"{df.case_id[0]}__tumor"
    assert first["image"] == df.image[0]
    human, gpt = first["conversations"]
    assert human["from"] == "human" and gpt["from"] == "gpt"
    context, image, question = human["value"].split("\n")
    assert (
        context.startswith(f"{df.age[0]} year-old")
        and image == "<image>"
        and question == QS.questions[0].text
    )
    volumes = read_journal(tmp_path / "vqa_volumes.jsonl")
    assert [len(v["answers"]) for v in volumes if v["id"] != df.case_id[5]] == [6] * 23
    assert volumes[0]["answers"][0]["provenance"]["templates"] == "chest_ct@1.0"
    errors = load_errors(tmp_path / "errors.csv")
    assert set(errors["reason"].str.split(" ").str[0]) == {"empty", "duplicate"}
    assert evaluate_extraction(volumes, [f for i, f in enumerate(findings) if i != 5]).slot_accuracy >= 0.95
    for name in ("word_frequencies.csv", "word_frequencies.png", "review.csv", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert "impression" not in pd.read_csv(tmp_path / "word_frequencies.csv")["word"].tolist()


class KilledAfter(RuleExtractor):
    """Raises KeyboardInterrupt (not caught, like a kill) on call number ``n``."""

    def __init__(self, n):
        super().__init__()
        self.n, self.calls = n, 0

        self.batches = []

    def extract(self, reports, questions):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        self.batches.append(tuple(reports))
        return super().extract(reports, questions)


def test_resume_after_a_kill_gives_identical_outputs(cohort, tmp_path):
    df, _ = cohort
    fresh = KilledAfter(0)
    run_build_vqa(df, tmp_path / "fresh", cfg(), extractor=fresh, progress=False)
    killed = KilledAfter(3)
    with pytest.raises(KeyboardInterrupt):
        run_build_vqa(df, tmp_path / "killed", cfg(), extractor=killed, progress=False)
    journal = tmp_path / "killed" / "vqa_volumes.jsonl"
    with open(journal, "a") as fh:
        fh.write('{"id": "half-writ')  # a kill in the middle of a write
    again = KilledAfter(0)
    summary = run_build_vqa(df, tmp_path / "killed", cfg(), extractor=again, progress=False)
    assert summary.n_resumed == 10 and summary.n_processed + summary.n_empty == 14
    assert killed.batches + again.batches == fresh.batches  # same batches: LLM outputs cannot drift on resume
    for name in ("vqa_llava.jsonl", "vqa_volumes.jsonl", "review.csv"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name
    rerun = run_build_vqa(df, tmp_path / "killed", cfg(), progress=False)
    assert rerun.n_resumed == 24 and rerun.n_processed == 0


def test_changed_settings_refuse_to_resume(cohort, tmp_path):
    df, _ = cohort
    run_build_vqa(df.head(3), tmp_path, cfg(), progress=False)
    with pytest.raises(ValueError, match="rules_max_sentences"):
        run_build_vqa(df.head(3), tmp_path, cfg(rules_max_sentences=1), progress=False)
    summary = run_build_vqa(df.head(3), tmp_path, cfg(rules_max_sentences=1), resume=False, progress=False)
    assert summary.n_resumed == 0 and summary.n_processed == 3


class FailsOn(RuleExtractor):
    def __init__(self, bad_text):
        super().__init__()
        self.bad_text = bad_text

    def extract(self, reports, questions):
        if any(self.bad_text in r for r in reports):
            raise RuntimeError("cannot parse")
        return super().extract(reports, questions)


def test_a_failing_report_is_logged_and_retried_on_resume(cohort, tmp_path):
    df, _ = cohort
    bad = df.Findings_EN[7][:40]
    summary = run_build_vqa(df, tmp_path, cfg(), extractor=FailsOn(bad), progress=False)
    assert summary.n_failed == 1 and summary.n_processed == 22
    errors = load_errors(tmp_path / "errors.csv")
    assert (
        errors.loc[errors.case_id == df.case_id[7], "reason"].str.contains("RuntimeError: cannot parse").all()
    )
    retry = run_build_vqa(df, tmp_path, cfg(), progress=False)
    assert retry.n_processed == 1 and retry.n_pairs == 23 * 6


def test_llm_backend_provenance_and_no_clinical_context(cohort, tiny_llm_dir, tmp_path, monkeypatch):
    from ctvl.vqa.extract_llm import load_llm_extractor

    df, _ = cohort
    llm = load_llm_extractor(tiny_llm_dir, max_attempts=1)
    monkeypatch.setattr(
        llm, "generate", lambda msgs: [json.dumps({q: "Not stated" for q in QS.ids})] * len(msgs)
    )
    run_build_vqa(df.head(2), tmp_path, VQAConfig(id_column="case_id"), extractor=llm, progress=False)
    first = lines(tmp_path / "vqa_llava.jsonl")[0]
    assert first["conversations"][0]["value"] == f"<image>\n{QS.questions[0].text}"
    assert first["conversations"][1]["value"] == QS.not_mentioned
    sheet = pd.read_csv(tmp_path / "review.csv", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    assert set(sheet["backend"]) == {"llm"} and set(sheet["model"]) == {tiny_llm_dir.name}


def test_review_import_writes_reviewed_llava(cohort, tmp_path):
    df, _ = cohort
    run_build_vqa(df.head(2), tmp_path, cfg(), progress=False)
    sheet = pd.read_csv(tmp_path / "review.csv", dtype=str, keep_default_na=False, encoding="utf-8-sig")
    sheet["approve"] = "yes"
    sheet.loc[0, ["approve", "edited_answer"]] = ["no", ""]
    sheet.loc[1, "edited_answer"] = "Edited by Dr. Ö."
    sheet.to_csv(tmp_path / "reviewed.csv", index=False, encoding="utf-8-sig")
    reviewed = lines(run_import_review(tmp_path, tmp_path / "reviewed.csv"))
    assert len(reviewed) == 11 and reviewed[0]["id"] == sheet.pair_id[1]
    assert reviewed[0]["conversations"][1]["value"] == "Edited by Dr. Ö."


def test_bad_tables_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no column 'Findings_EN'"):
        run_build_vqa(pd.DataFrame({"case_id": ["a"]}), tmp_path, VQAConfig(), progress=False)
