"""What every answer extractor returns, and the report text they all read.

* :class:`Answer` -- one question's answer for one report, with :class:`Provenance` (back-end, model,
  template version, attempts, fallback, truncation, review edits) kept through review and export.
* :class:`AnswerExtractor` -- the protocol both back-ends implement:
  ``extract(reports: list[str], questions: QuestionSet) -> list[list[Answer]]`` (one inner list per
  report, in question order).
* :func:`compose_report` / :func:`split_sections` -- a report's findings and impression as one text
  (``"Findings: ...\\n\\nImpression: ..."``) and back.
* :func:`normalise_answer` -- "not mentioned" variants -> the question set's canonical phrase.

Example:
    >>> text = compose_report("No pleural effusion.", "Normal study.")
    >>> split_sections(text)
    ('No pleural effusion.', 'Normal study.')
    >>> normalise_answer("N/A - not mentioned in the report", "Not mentioned in the report.")
    'Not mentioned in the report.'
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol, runtime_checkable

from ctvl.data.questions import QuestionSet


@dataclass(frozen=True)
class Provenance:
    """Where an answer came from; serialised next to every pair and in the review CSV."""

    backend: str
    """"rules" or "llm" (the back-end that produced the final text)."""
    model: str = ""
    """LLM directory name (empty for rules)."""
    templates: str = ""
    """Question-set ``name@version``."""
    attempts: int = 0
    """LLM generations made for this report (0 for rules)."""
    fallback: bool = False
    """True when the LLM answer was unusable and the rule answer was taken."""
    reason: str = ""
    """Why a fallback happened, or other notes (e.g. "empty report")."""
    truncated: bool = False
    """The report was cut to the LLM's token budget."""
    edited: bool = False
    """A reviewer replaced the answer (``edited_answer`` column)."""


@dataclass(frozen=True)
class Answer:
    """One question's answer for one report."""

    question_id: str
    text: str
    provenance: Provenance = field(default_factory=lambda: Provenance("rules"))

    def to_dict(self) -> dict:
        return {"question_id": self.question_id, "answer": self.text, "provenance": asdict(self.provenance)}

    @classmethod
    def from_dict(cls, data: dict) -> "Answer":
        return cls(
            data["question_id"], data["answer"], Provenance(**data.get("provenance", {"backend": "rules"}))
        )

    def with_provenance(self, **changes) -> "Answer":
        return replace(self, provenance=replace(self.provenance, **changes))


@runtime_checkable
class AnswerExtractor(Protocol):
    """Turns reports into answers to a fixed question set."""

    name: str

    def extract(self, reports: list[str], questions: QuestionSet) -> list[list[Answer]]:
        """One list of ``len(questions.questions)`` answers per report, in question order."""
        ...


# ------------------------------------------------------------------------- report text

_HEADER = re.compile(r"^\s*(findings?|impressions?|conclusions?)\s*:\s*", re.I | re.M)


def compose_report(findings: str | None, impression: str | None) -> str:
    """One text with labelled sections; a missing or blank section is left out."""
    parts = []
    if findings and str(findings).strip():
        parts.append(f"Findings: {str(findings).strip()}")
    if impression and str(impression).strip():
        parts.append(f"Impression: {str(impression).strip()}")
    return "\n\n".join(parts)


def split_sections(text: str) -> tuple[str, str]:
    """``(findings, impression)`` from a report; text without headers counts as findings."""
    text = text or ""
    matches = list(_HEADER.finditer(text))
    if not matches:
        return text.strip(), ""
    findings, impression = [text[: matches[0].start()].strip()], []
    for i, m in enumerate(matches):
        body = text[m.end() : matches[i + 1].start() if i + 1 < len(matches) else len(text)].strip()
        (findings if m.group(1).lower().startswith("finding") else impression).append(body)
    return " ".join(p for p in findings if p), " ".join(p for p in impression if p)


# ---------------------------------------------------------------------- normalisation

_NOT_MENTIONED = re.compile(
    r"^\W*(n/?a\b\W*)?(-\s*)?((it is |this is |that is )?(not|never|no) (explicitly |specifically |clearly )?"
    r"(mentioned|reported|stated|specified|described|documented|discussed|addressed|provided|available|given)"
    r"|no (mention|information|data|details?)( (is|was))?( (given|provided|available))?"
    r"|unknown|not applicable|n/?a|none mentioned|not in (the )?report|cannot be determined( from the report)?)\b",
    re.I,
)


def is_not_mentioned(text: str | None) -> bool:
    """True for empty answers and "not mentioned" variants (not for "no effusion": that is an answer)."""
    text = (text or "").strip()
    return not text or bool(_NOT_MENTIONED.match(text)) and len(text) < 80


def normalise_answer(text, not_mentioned: str) -> str:
    """Answer value (str, number, list or None from JSON) -> a clean string or the canonical phrase."""
    if isinstance(text, (list, tuple)):
        text = "; ".join(str(t).strip() for t in text if t is not None and str(t).strip())
    elif isinstance(text, dict):
        text = "; ".join(f"{k}: {v}" for k, v in text.items() if v not in (None, ""))
    text = re.sub(r"\s+", " ", "" if text is None else str(text)).strip()
    return not_mentioned if is_not_mentioned(text) else text
