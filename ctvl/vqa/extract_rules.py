"""Deterministic rule-based answer extraction: sentence retrieval with keyword rules per question.

Needs no model and is the default offline back-end (and the LLM back-end's per-slot fallback). For
each question, the sentences of the findings section matching one of its ``include`` patterns and none
of its ``exclude`` patterns (:class:`ctvl.data.questions.QuestionSpec`) are the answer, in report order;
when the findings say nothing the impression is searched; when neither does, the answer is the
question set's canonical "not mentioned" phrase.

Entry points:
    split_sentences(text) -> list[str]
    RuleExtractor(max_sentences=4).extract(reports, questions) -> list[list[Answer]]

Example:
    >>> from ctvl.data.questions import QuestionSet
    >>> qs = QuestionSet()
    >>> report = "Findings: A 31 mm mass in the right upper lobe. No pleural effusion.\\n\\nImpression: Lung mass."
    >>> [a.text for a in RuleExtractor().extract([report], qs)[0]][:3]
    ['A 31 mm mass in the right upper lobe.', 'Not mentioned in the report.', 'No pleural effusion.']
"""

from __future__ import annotations

import re
from functools import lru_cache

from ctvl.data.questions import QuestionSet, QuestionSpec
from ctvl.vqa.answer import Answer, Provenance, split_sections
from ctvl.vqa.wordfreq import normalise_text

# Dots that do not end a sentence: decimals are never followed by a space; these abbreviations are.
_ABBREV = "".join(
    rf"(?<!\b{a}\.)" for a in (r"e\.g", r"i\.e", "approx", "vs", "max", "diam", "ca", "cf", "Dr", "resp")
)
_SPLIT = re.compile(
    _ABBREV + r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])"  # ". Next"
    r"|\s*;\s+(?=[A-Z])"  # CT-RATE: "When examined in the lung parenchyma window; A nodule ..."
    r"|\s*\n\s*"  # line breaks
    r"|(?<=[.!?])\s*-\s+(?=[A-Z])"  # ". - Next" bullet lists
)


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences (keeps "2.5 cm", "e.g. the", "No. 4"; splits at newlines).

    >>> split_sentences("A 2.5 cm mass, e.g. In the RUL. No effusion; Bones normal.\\nImpression: ok")
    ['A 2.5 cm mass, e.g. In the RUL.', 'No effusion', 'Bones normal.', 'Impression: ok']
    """
    text = unicode_clean(text)
    out = []
    for s in _SPLIT.split(text):
        s = (s or "").strip(" -*\u2022\t")
        if re.search(r"[^\W_]", s):
            out.append(s)
    return out


def unicode_clean(text: str) -> str:
    """NFKC, keep line breaks, collapse other whitespace (non-breaking spaces, tabs)."""
    lines = [normalise_text(line) for line in str(text or "").splitlines()]
    return "\n".join(line for line in lines if line)


@lru_cache(maxsize=256)
def _compile(patterns: tuple[str, ...]) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(p, re.I) for p in patterns)


def matches_question(sentence: str, spec: QuestionSpec) -> bool:
    """True when ``sentence`` matches an include pattern of ``spec`` and no exclude pattern."""
    if not any(p.search(sentence) for p in _compile(spec.include)):
        return False
    return not any(p.search(sentence) for p in _compile(spec.exclude))


def _as_answer_text(sentences: list[str]) -> str:
    return " ".join(s if s[-1] in ".!?" else s + "." for s in sentences)


class RuleExtractor:
    """Keyword-rule sentence retrieval (no model, deterministic).

    Args:
        max_sentences: at most this many sentences per answer (first ones in report order).
    """

    name = "rules"

    def __init__(self, max_sentences: int = 4):
        if max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
        self.max_sentences = max_sentences

    def retrieve(self, report: str, spec: QuestionSpec) -> list[str]:
        """Sentences answering ``spec``: from the findings, else from the impression."""
        findings, impression = split_sections(report)
        for section in (findings, impression):
            hits = [s for s in split_sentences(section) if matches_question(s, spec)]
            if hits:
                return list(dict.fromkeys(hits))[: self.max_sentences]
        return []

    def answer(self, report: str, spec: QuestionSpec, questions: QuestionSet) -> Answer:
        hits = self.retrieve(report, spec)
        text = _as_answer_text(hits) if hits else questions.not_mentioned
        return Answer(spec.id, text, Provenance("rules", templates=questions.tag))

    def extract(self, reports: list[str], questions: QuestionSet) -> list[list[Answer]]:
        """One answer per (report, question); an empty report gets "not mentioned" everywhere."""
        return [[self.answer(r or "", q, questions) for q in questions.questions] for r in reports]
