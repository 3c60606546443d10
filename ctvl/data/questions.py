"""The questions asked of every report and every prompt: question sets and their YAML files.

The paper (section 2.2, Fig. 2 right) asks six fixed questions of every chest-CT report; they ship in
``configs/vqa/questions_chest_ct.yaml`` (identical to :data:`DEFAULT_QUESTIONS`) with ids (the JSON keys an
LLM extractor must return, and the suffix of each pair id), a version kept in provenance, and the keyword
rules of the rule-based extractor. Copy and edit that file per cohort and bump its version. Training
(``ctvl build-vqa``, stages 1-2) and inference (``ctvl predict``/``generate``) read the same set.

Entry points:
    load_question_set(path=None) -> QuestionSet
    save_question_set(questions, path)

Example:
    >>> qs = QuestionSet()
    >>> qs.ids
    ['tumor', 'lymph_nodes', 'pleura', 'metastases', 'vessels', 'skeleton']
    >>> qs.questions[0].text
    'What is the location and size of the primary lung tumor?'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ctvl.config import coerce_dataclass, load_config, save_config

NOT_MENTIONED = "Not mentioned in the report."
"""Canonical answer when a report says nothing about a question."""

_ID = re.compile(r"^[a-z][a-z0-9_]*$")


def _check_patterns(owner: str, patterns) -> None:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"{owner}: invalid regular expression {p!r}: {err}") from None


@dataclass(frozen=True)
class QuestionSpec:
    """One question asked of every report."""

    id: str
    """Short key (``[a-z][a-z0-9_]*``): the JSON key of the LLM answer and the suffix of each pair id."""
    text: str
    """The question as shown to the model and written into the conversations."""
    include: tuple[str, ...] = ()
    """Rule back-end: regular expressions (case-insensitive); a sentence matching any is retrieved."""
    exclude: tuple[str, ...] = ()
    """Rule back-end: a retrieved sentence matching any of these is dropped."""

    def __post_init__(self):
        if not _ID.match(self.id):
            raise ValueError(f"question id {self.id!r} must match {_ID.pattern}")
        if not self.text.strip():
            raise ValueError(f"question {self.id!r} has an empty text")
        _check_patterns(f"question {self.id!r}", self.include + self.exclude)


_TUMOR = QuestionSpec(
    "tumor",
    "What is the location and size of the primary lung tumor?",
    include=(
        r"\b(mass|masses|tumou?rs?|tumou?ral|neoplasms?|neoplastic|carcinoma|malignan\w*|nodules?|nodular)\b",
    ),
    exclude=(
        r"\blymph",
        r"\b(liver|hepatic|adrenal|kidneys?|renal|thyroid|breast|spleen|vertebra\w*|osseous)\b",
        r"\bwall thickening\b",
    ),
)
_NODES = QuestionSpec(
    "lymph_nodes",
    "Which lymph nodes are involved, and what are their size and location?",
    include=(r"\b(lymph|lymphadenopath\w*|adenopath\w*|nodes?)\b",),
)
_PLEURA = QuestionSpec(
    "pleura",
    "Is there any pleural involvement or effusion present?",
    include=(r"\bpleura\w*", r"(?<!pericardial )\beffusions?\b", r"\b(hydrothorax|empyema|pneumothorax)\b"),
    exclude=(r"^(?!.*pleura).*\bpericardial\b",),
)
_METS = QuestionSpec(
    "metastases",
    "Are metastases or involvement of other organs observed?",
    include=(
        r"\bmetasta\w*",
        r"\b(liver|hepatic|adrenals?|adrenal glands?|brain|spleen|splenic)\b.*"
        r"\b(lesions?|mass|masses|nodules?|metasta\w*|involve\w*)\b",
    ),
)
_VESSELS = QuestionSpec(
    "vessels",
    "Are major vessels involved or compressed?",
    include=(
        r"\b(vena cava|svc|pulmonary (trunk|arter\w*|veins?)|aorta|aortic|brachiocephalic|subclavian)\b",
        r"\b(vessels?|vascular)\b.*\b(invad\w*|invasion|involve\w*|compress\w*|encas\w*|narrow\w*|occlu\w*)\b",
        r"\b(main )?vascular structures\b",
    ),
)
_SKELETON = QuestionSpec(
    "skeleton",
    "Are there skeleton/bone changes on the scan?",
    include=(
        r"\b(bones?|bony|osseous|skelet\w*|vertebra\w*|ribs?|sternum|spine|spinal|scapula|clavicle)\b",
        r"\b(lytic|sclerotic|blastic|fractures?|degenerative|osteophyt\w*|spondylo\w*|scoliosis)\b",
    ),
)
DEFAULT_QUESTIONS = (_TUMOR, _NODES, _PLEURA, _METS, _VESSELS, _SKELETON)
"""The paper's six chest-CT questions (Fig. 2), with the rule back-end's keyword rules."""


@dataclass(frozen=True)
class QuestionSet:
    """The questions of one cohort, versioned (the version is written into every pair's provenance)."""

    name: str = "chest_ct"
    """Name of the set (shown in provenance next to ``version``)."""
    version: str = "1.0"
    """Bump on any edit of a question text or rule, so that pairs record which templates made them."""
    not_mentioned: str = NOT_MENTIONED
    """Canonical answer for "the report does not say"; every back-end normalises to it."""
    questions: tuple[QuestionSpec, ...] = DEFAULT_QUESTIONS
    """Ordered questions; ids must be unique."""

    def __post_init__(self):
        object.__setattr__(self, "questions", tuple(coerce_dataclass(QuestionSpec, q) for q in self.questions))
        ids = [q.id for q in self.questions]
        if not ids:
            raise ValueError("a QuestionSet needs at least one question")
        if len(set(ids)) != len(ids):
            raise ValueError(f"question ids must be unique, got {ids}")
        if not str(self.version).strip():
            raise ValueError("QuestionSet.version must not be empty")
        object.__setattr__(self, "version", str(self.version))

    @property
    def ids(self) -> list[str]:
        return [q.id for q in self.questions]

    @property
    def tag(self) -> str:
        """``name@version``, the template identifier written into provenance."""
        return f"{self.name}@{self.version}"


def load_question_set(path: Optional[str | Path] = None) -> QuestionSet:
    """Read a question-set YAML; None returns the paper's six built-in questions. Errors name the file."""
    if path is None:
        return QuestionSet()
    if not Path(path).is_file():
        raise ValueError(f"question set {str(path)!r} does not exist")
    try:
        return load_config(QuestionSet, path)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: {err}") from None


def save_question_set(questions: QuestionSet, path: str | Path) -> Path:
    """Write a question set as YAML (readable by :func:`load_question_set`)."""
    save_config(questions, path)
    return Path(path)
