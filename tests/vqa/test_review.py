"""Clinician review: export, edits, rejections, unreviewed pairs, provenance, bad sheets."""

import pandas as pd
import pytest

from ctvl.vqa.review import REVIEW_COLUMNS, apply_review, export_review_csv, load_review_csv, pair_id

RECORDS = [
    {
        "id": "v1",
        "image": "v1.nii.gz",
        "clinical_text": "A 61-year-old female.",
        "report": "Findings: Mass.",
        "answers": [
            {
                "question_id": "tumor",
                "question": "Where?",
                "answer": "Mass in the RUL.",
                "provenance": {
                    "backend": "llm",
                    "model": "mistral",
                    "templates": "chest_ct@1.0",
                    "attempts": 1,
                    "fallback": False,
                    "reason": "",
                    "truncated": False,
                    "edited": False,
                },
            },
            {
                "question_id": "pleura",
                "question": "Effusion?",
                "answer": "Bölüm: plevral sıvı yok.",
                "provenance": {"backend": "rules", "templates": "chest_ct@1.0"},
            },
        ],
    },
    {
        "id": "v2",
        "image": "v2.nii.gz",
        "answers": [
            {
                "question_id": "tumor",
                "question": "Where?",
                "answer": "No mass.",
                "provenance": {"backend": "rules"},
            }
        ],
    },
]


def review(tmp_path, decisions: dict[str, tuple[str, str]]):
    path = export_review_csv(RECORDS, tmp_path / "review.csv")
    sheet = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    for pid, (approve, edit) in decisions.items():
        sheet.loc[sheet["pair_id"] == pid, ["approve", "edited_answer"]] = [approve, edit]
    sheet.to_csv(path, index=False, encoding="utf-8-sig")
    return load_review_csv(path)


def test_export_has_reviewer_columns_provenance_and_non_ascii(tmp_path):
    sheet = pd.read_csv(
        export_review_csv(RECORDS, tmp_path / "r.csv"), dtype=str, keep_default_na=False, encoding="utf-8-sig"
    )
    assert list(sheet.columns) == list(REVIEW_COLUMNS) and len(sheet) == 3
    assert sheet["pair_id"].tolist() == ["v1__tumor", "v1__pleura", "v2__tumor"]
    assert (sheet["approve"] == "").all() and (sheet["edited_answer"] == "").all()
    assert sheet.loc[0, "backend"] == "llm" and sheet.loc[0, "model"] == "mistral"
    assert sheet.loc[1, "answer"] == "Bölüm: plevral sıvı yok."


def test_edits_applied_rejections_dropped_provenance_kept(tmp_path):
    reviewed = review(
        tmp_path,
        {
            "v1__tumor": ("yes", "Spiculated mass in the RUL."),
            "v1__pleura": ("no", ""),
            "v2__tumor": ("", ""),
        },
    )
    kept, counts = apply_review(RECORDS, reviewed)
    assert counts == {"approved": 1, "rejected": 1, "edited": 1, "unreviewed": 1}
    assert [r["id"] for r in kept] == ["v1", "v2"] and len(kept[0]["answers"]) == 1
    tumor = kept[0]["answers"][0]
    assert tumor["answer"] == "Spiculated mass in the RUL."
    assert tumor["provenance"]["edited"] and tumor["provenance"]["model"] == "mistral"
    assert RECORDS[0]["answers"][0]["answer"] == "Mass in the RUL."  # input untouched
    strict, _ = apply_review(RECORDS, reviewed, drop_unreviewed=True)
    assert [r["id"] for r in strict] == ["v1"]  # v2 lost its only (unreviewed) pair


def test_an_edit_without_approve_counts_as_approved(tmp_path):
    kept, counts = apply_review(
        RECORDS, review(tmp_path, {"v2__tumor": ("", "No lung mass.")}), drop_unreviewed=True
    )
    assert [a["answer"] for r in kept for a in r["answers"]] == ["No lung mass."] and counts["approved"] == 1


def test_bad_sheets_are_refused_with_the_row(tmp_path):
    with pytest.raises(ValueError, match=r"row 3 \(pair 'v1__pleura'\).*'maybe'"):
        review(tmp_path, {"v1__pleura": ("maybe", "")})
    pd.DataFrame({"pair_id": ["a"], "approve": ["yes"]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(ValueError, match="edited_answer"):
        load_review_csv(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="does not exist"):
        load_review_csv(tmp_path / "missing.csv")
    assert pair_id("train_1_a_1.nii.gz", "tumor") == "train_1_a_1.nii.gz__tumor"
