"""Clinician review of extracted question-answer pairs (paper section 2.2: "reviewed and approved by
two clinicians").

:func:`export_review_csv` writes one row per (volume, question) with the report, the answer, its
provenance and two empty columns for the reviewer: ``approve`` (yes/no, blank = not reviewed) and
``edited_answer`` (replaces the answer when filled). :func:`apply_review` reads the reviewed CSV back:
edits are applied (``provenance.edited = True``; an edit with a blank ``approve`` counts as approved),
rejected pairs are dropped, unreviewed pairs are
kept unless ``drop_unreviewed``. Provenance (back-end, model, template version) stays with each pair.

Entry points:
    export_review_csv(records, path, include_report=True) -> Path
    load_review_csv(path) -> DataFrame
    apply_review(records, reviewed, drop_unreviewed=False) -> (records, counts)

Example:
    >>> parse_approve(" Yes "), parse_approve("0"), parse_approve("")
    (True, False, None)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

PROVENANCE_COLUMNS = (
    "backend",
    "model",
    "templates",
    "attempts",
    "fallback",
    "reason",
    "truncated",
    "edited",
)
REVIEW_COLUMNS = (
    "pair_id",
    "volume_id",
    "image",
    "question_id",
    "question",
    "answer",
    "approve",
    "edited_answer",
    *PROVENANCE_COLUMNS,
    "clinical_text",
    "report",
)
_YES = {"1", "yes", "y", "true", "t", "approve", "approved", "ok", "x", "accept", "accepted"}
_NO = {"0", "no", "n", "false", "f", "reject", "rejected", "drop", "delete"}


def pair_id(volume_id: str, question_id: str) -> str:
    """Id of one (volume, question) pair, as written to the LLaVA ``id`` field."""
    return f"{volume_id}__{question_id}"


def parse_approve(value) -> Optional[bool]:
    """Reviewer's ``approve`` cell -> True / False / None (blank = not reviewed); anything else raises."""
    text = (
        "" if value is None or (isinstance(value, float) and value != value) else str(value).strip().lower()
    )
    if not text:
        return None
    if text in _YES:
        return True
    if text in _NO:
        return False
    raise ValueError(f"approve value {value!r} not understood (use yes/no, 1/0, true/false or leave blank)")


def review_rows(records: Iterable[dict], include_report: bool = True) -> list[dict]:
    """Per-volume records (see :mod:`ctvl.vqa.build`) -> one review row per pair."""
    rows = []
    for rec in records:
        for a in rec.get("answers", []):
            prov = a.get("provenance", {})
            rows.append(
                {
                    "pair_id": pair_id(rec["id"], a["question_id"]),
                    "volume_id": rec["id"],
                    "image": rec.get("image", ""),
                    "question_id": a["question_id"],
                    "question": a.get("question", ""),
                    "answer": a["answer"],
                    "approve": "",
                    "edited_answer": "",
                    **{c: prov.get(c, "") for c in PROVENANCE_COLUMNS},
                    "clinical_text": rec.get("clinical_text", ""),
                    "report": rec.get("report", "") if include_report else "",
                }
            )
    return rows


def export_review_csv(records: Iterable[dict], path: str | Path, include_report: bool = True) -> Path:
    """Write the review sheet (UTF-8 with BOM so spreadsheet programs show non-ASCII text correctly)."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(review_rows(records, include_report), columns=list(REVIEW_COLUMNS))
    frame.to_csv(path, index=False, encoding="utf-8-sig")
    return path


def load_review_csv(path: str | Path):
    """Read a reviewed sheet; checks the columns and every ``approve`` value (errors name the row)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"review file {str(path)!r} does not exist")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    missing = {"pair_id", "approve", "edited_answer"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    if frame["pair_id"].duplicated().any():
        dup = frame.loc[frame["pair_id"].duplicated(), "pair_id"].iloc[0]
        raise ValueError(f"{path}: pair_id {dup!r} appears more than once")
    decisions = []
    for i, value in enumerate(frame["approve"]):
        try:
            decisions.append(parse_approve(value))
        except ValueError as err:
            raise ValueError(f"{path}, row {i + 2} (pair {frame['pair_id'].iloc[i]!r}): {err}") from None
    frame["approve"] = decisions
    return frame


def apply_review(records: Iterable[dict], reviewed, drop_unreviewed: bool = False) -> tuple[list[dict], dict]:
    """Apply a reviewed sheet to per-volume records.

    Args:
        records: per-volume records (not modified).
        reviewed: frame from :func:`load_review_csv`.
        drop_unreviewed: also drop pairs with a blank ``approve`` or absent from the sheet.

    Returns:
        (records, counts): new records without rejected pairs (volumes left with no pair are dropped),
        and ``{"approved", "rejected", "edited", "unreviewed"}`` pair counts.
    """
    decisions = {
        r["pair_id"]: (r["approve"], r["edited_answer"].strip()) for r in reviewed.to_dict("records")
    }
    counts = {"approved": 0, "rejected": 0, "edited": 0, "unreviewed": 0}
    out = []
    for rec in records:
        rec = copy.deepcopy(rec)
        kept = []
        for a in rec.get("answers", []):
            approve, edit = decisions.get(pair_id(rec["id"], a["question_id"]), (None, ""))
            approve = True if approve is None and edit else approve  # an edit is a review
            if approve is False or (approve is None and drop_unreviewed):
                counts["rejected" if approve is False else "unreviewed"] += 1
                continue
            counts["approved" if approve else "unreviewed"] += 1
            if edit:
                a["answer"] = edit
                a.setdefault("provenance", {})["edited"] = True
                counts["edited"] += 1
            kept.append(a)
        if kept:
            out.append({**rec, "answers": kept})
    logger.info("review applied: %s", counts)
    return out, counts
