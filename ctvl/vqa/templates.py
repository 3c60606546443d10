"""Question templates: the shipped chest-CT set, per-cohort YAML sets, and LLM-proposed candidates.

The paper (section 2.2, Fig. 2 right) asks six fixed questions of every report; they ship in
``configs/vqa/questions_chest_ct.yaml`` (identical to :data:`ctvl.data.questions.DEFAULT_QUESTIONS`) with
ids, a version, and the rule back-end's keyword patterns. Copy and edit that file per cohort and bump
its version. As in the paper (top-100 words given to a chat LLM), :func:`propose_question_templates`
asks an instruct LLM for candidate questions from the top words; candidates are written for clinician
review (:func:`write_candidate_templates`), never used unreviewed.

Question sets themselves (:class:`ctvl.data.questions.QuestionSet`, :func:`ctvl.data.questions.load_question_set`)
live in :mod:`ctvl.data.questions`.

Entry points:
    propose_question_templates(words, generate, n=6) -> list[str]
    write_candidate_templates(candidates, path, words=()) -> Path

Example:
    >>> parse_candidate_questions("1. Is there a mass?\\n2) Where is it located?\\nThanks!")
    ['Is there a mass?', 'Where is it located?']
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml


logger = logging.getLogger(__name__)


_PROPOSE = (
    "These are the {k} most frequent medical words in a collection of chest CT radiology reports:\n{words}\n\n"
    "Write {n} short radiology-style questions that a radiologist would answer from such a report for a lung "
    "cancer patient (for example about a tumour, lymph nodes, pleura, metastases, vessels or bones). "
    "Write one question per line, numbered, and nothing else."
)


def parse_candidate_questions(text: str) -> list[str]:
    """Question lines of an LLM reply (numbering and bullets stripped, duplicates dropped)."""
    out = []
    for line in (text or "").splitlines():
        line = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)]|q\d+[:.])\s*", "", line, flags=re.I).strip().strip('"')
        if line.endswith("?") and len(line) > 8 and line not in out:
            out.append(line)
    return out


def propose_question_templates(
    words: Sequence[str], generate: Callable[[list[str]], list[str]], n: int = 6
) -> list[str]:
    """Ask an instruct LLM for ``n`` candidate questions from the top medical words.

    Args:
        words: most frequent medical words, most frequent first.
        generate: messages -> replies, e.g. :meth:`ctvl.vqa.extract_llm.LLMExtractor.generate`.
        n: number of questions asked for.

    Returns:
        list[str]: at most ``n`` questions (fewer if the reply held fewer question lines).
    """
    if not words:
        raise ValueError("no words to propose templates from (empty reports?)")
    prompt = _PROPOSE.format(k=len(words), words=", ".join(words), n=n)
    reply = generate([prompt])[0]
    found = parse_candidate_questions(reply)[:n]
    if not found:
        logger.warning("the LLM proposed no usable question (reply: %r)", reply[:200])
    return found


def write_candidate_templates(candidates: Sequence[str], path: str | Path, words: Sequence[str] = ()) -> Path:
    """Write proposed questions as a reviewable YAML (``approve: null`` per candidate)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "note": "LLM-proposed question templates; review, then copy approved ones into a question-set YAML.",
        "top_words": list(words),
        "candidates": [{"text": q, "approve": None} for q in candidates],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path
