"""Typed configuration of VQA data construction and of clinical covariates rendered as text.

Kept apart from ``ctvl/config.py`` (owned by the lead) but in the same style: frozen dataclasses with
attribute docstrings, no heavy imports, readable by ``ctvl.config.load_config`` from YAML:

* :class:`QuestionSet` / :class:`QuestionSpec` -- ``configs/vqa/*.yaml``: the questions asked of every
  report, their ids (the JSON keys the LLM must return), a version kept in provenance, and the keyword
  rules of the rule-based extractor.
* :class:`ClinicalTextConfig` / :class:`ClinicalField` -- ``configs/clinical/*.yaml``: a row of clinical
  data -> one sentence (paper section 3, footnotes 2-3).
* :class:`VQAConfig` -- the ``ctvl build-vqa`` job (columns, back-end, LLM settings, word filter).

Example:
    >>> qs = QuestionSet()
    >>> [q.id for q in qs.questions]
    ['tumor', 'lymph_nodes', 'pleura', 'metastases', 'vessels', 'skeleton']
    >>> qs.questions[0].text
    'What is the location and size of the primary lung tumor?'
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional

NOT_MENTIONED = "Not mentioned in the report."
"""Canonical answer when a report says nothing about a question."""

_ID = re.compile(r"^[a-z][a-z0-9_]*$")


def _coerce(cls, value):
    """dict (from YAML) -> dataclass ``cls``; unknown keys are named."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{cls.__name__}: expected a mapping, got {value!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})


def _check_patterns(owner: str, patterns) -> None:
    for p in patterns:
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"{owner}: invalid regular expression {p!r}: {err}") from None


# --------------------------------------------------------------------------- questions


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
        object.__setattr__(self, "questions", tuple(_coerce(QuestionSpec, q) for q in self.questions))
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


# --------------------------------------------------------------------- clinical text


@dataclass(frozen=True)
class ClinicalField:
    """How one placeholder ``{name}`` of a clinical template is filled from a row."""

    column: str = ""
    """Source column; empty = the placeholder's own name."""
    format: str = ""
    """Python format spec for numbers (``".1f"``, ``"d"``); empty = integers plain, other numbers ``"g"``."""
    unit: str = ""
    """Appended verbatim after the value (include a leading space if wanted: ``" mmHg"``, ``"°F"``)."""
    scale: float = 1.0
    """Numbers are rendered as ``value * scale + offset`` (e.g. 1.8 and 32 for °C -> °F)."""
    offset: float = 0.0
    """See ``scale``."""
    map: dict = field(default_factory=dict)
    """Value map applied before formatting (keys compared case-insensitively; 1, 1.0, True and "1" are one key).
    A value mapped to "" or null counts as missing."""
    only_if: dict = field(default_factory=dict)
    """``{column: [values]}``: the field counts as missing unless every listed column holds one of its values."""

    def __post_init__(self):
        object.__setattr__(self, "map", {normalise_key(k): v for k, v in dict(self.map or {}).items()})
        cond = {}
        for col, allowed in dict(self.only_if or {}).items():
            allowed = allowed if isinstance(allowed, (list, tuple)) else [allowed]
            cond[str(col)] = [normalise_key(a) for a in allowed]
        object.__setattr__(self, "only_if", cond)
        if self.format:
            try:
                format(1.5 if self.format[-1:] not in "dxXbnoc" else 1, self.format)
            except ValueError as err:
                raise ValueError(f"invalid format spec {self.format!r}: {err}") from None


def normalise_key(value: Any) -> str:
    """Key used to compare raw values with map / only_if keys: ``True``, ``1``, ``1.0``, ``"1"`` -> ``"1"``.

    >>> [normalise_key(v) for v in (True, 1.0, " Former ", "1", "1.0")]
    ['1', '1', 'former', '1', '1']
    """
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip().lower()
    if re.fullmatch(r"[+-]?\d+\.0*", text):  # "1.0" from a float column read as text
        text = str(int(float(text)))
    return {"true": "1", "false": "0", "yes": "1", "no": "0"}.get(text, text)


@dataclass(frozen=True)
class ClinicalTextConfig:
    """A cohort's clinical covariates -> one context sentence, written without code.

    The sentence is ``separator.join(parts) + end``. Each part is a string or a list of pieces joined by
    a space; a piece whose placeholder is missing is dropped, and a part left with no value is dropped,
    so a missing value never leaves "nan" or a dangling comma.
    """

    name: str = ""
    """Cohort name (documentation only)."""
    parts: tuple = ()
    """Ordered parts; each a string or a list of strings with ``{placeholder}`` names."""
    fields: dict = field(default_factory=dict)
    """``placeholder -> ClinicalField`` (as a mapping); placeholders not listed read the column of that name."""
    separator: str = ", "
    """Joins the rendered parts."""
    end: str = "."
    """Appended to a non-empty sentence."""
    capitalize: bool = True
    """Upper-case the first character of the sentence."""
    fix_articles: bool = True
    """Turn "a" into "an" before a vowel sound ("an 81-year-old", "an acute ...")."""
    missing_values: tuple[str, ...] = ("", "nan", "na", "n/a", "none", "null", "unknown", "<na>", "nat")
    """Raw values (case-insensitive) treated as missing."""

    def __post_init__(self):
        parts = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in self.parts)
        for p in parts:
            for piece in p if isinstance(p, tuple) else (p,):
                if not isinstance(piece, str):
                    raise ValueError(
                        f"clinical template {self.name!r}: part pieces must be strings, got {piece!r}"
                    )
        object.__setattr__(self, "parts", parts)
        object.__setattr__(
            self, "fields", {str(k): _coerce(ClinicalField, v or {}) for k, v in dict(self.fields).items()}
        )
        object.__setattr__(self, "missing_values", tuple(str(v).strip().lower() for v in self.missing_values))


# ------------------------------------------------------------------------------- job


@dataclass(frozen=True)
class VQAConfig:
    """``ctvl build-vqa``: reports -> word frequencies, templates, answers, review CSV, LLaVA JSONL."""

    questions: Optional[str] = None
    """Question-set YAML (``configs/vqa/*.yaml``); None = the paper's six built-in questions."""
    backend: Literal["rules", "llm"] = "rules"
    """Answer extractor: deterministic keyword rules (no model) or an instruct LLM from ``llm_path``."""
    id_column: str = "case_id"
    """Report table column with the volume id: ``case_id`` for ``load_ctrate`` / manifests / the synthetic cohort,
    ``VolumeName`` for a raw CT-RATE reports CSV."""
    findings_column: str = "Findings_EN"
    """Report table column with the findings text."""
    impressions_column: str = "Impressions_EN"
    """Report table column with the impression text (used alone when findings are empty)."""
    image_column: str = "image"
    """Column with the image path written to ``image``; when absent the volume id is written."""
    clinical_template: Optional[str] = None
    """Clinical-text YAML (``configs/clinical/*.yaml``) rendering the context sentence; None = no context."""
    image_token: str = "<image>"
    """Placeholder written between the clinical sentence and the question (expanded later by the model's prompt code)."""
    review_include_report: bool = True
    """Put the report text in every row of ``review.csv`` (reviewers need the source; large for big cohorts)."""
    chunk_size: int = 64
    """Reports per extraction call; the journal is appended (and so resumable) after each chunk."""
    rules_max_sentences: int = 4
    """Rule back-end: at most this many retrieved sentences per answer."""
    llm_path: Optional[str] = None
    """Local directory of an instruct model (config.json, weights, tokenizer); never downloaded."""
    llm_prompt_format: Literal["auto", "mistral", "chat_template"] = "auto"
    """"mistral": ``<s>[INST] ... [/INST]``; "chat_template": the tokenizer's; "auto": its template if it has one."""
    llm_batch_size: int = 4
    """Reports per generate() call (left padding)."""
    llm_max_new_tokens: int = 512
    """Generation budget for the JSON answer."""
    llm_max_report_tokens: int = 3072
    """Longer reports are truncated to this many tokens (logged and flagged in provenance)."""
    llm_max_attempts: int = 3
    """Attempts per report (later ones with a format reminder) before a slot falls back to the rule answer."""
    llm_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Model dtype; "auto" = bfloat16 on CUDA, float32 on CPU."""
    llm_device: str = "auto"
    """torch device for the LLM; "auto" = cuda when available."""
    trust_remote_code: bool = False
    """Allow custom model/tokenizer code from ``llm_path`` (off unless you trust it)."""
    propose_templates: bool = False
    """Ask the LLM for candidate question templates from the top words (written for review, never used directly)."""
    top_k_words: int = 100
    """Number of most frequent medical words written to ``word_frequencies.csv``."""
    chart_top_n: int = 30
    """Number of words drawn in ``word_frequencies.png``."""
    stopwords: Optional[str] = None
    """Text file of stop words / general English (one per line, # comments); None = the shipped list."""
    medical_allowlist: Optional[str] = None
    """Text file of medical terms always kept; None = the shipped list."""
    word_filter: Literal["stopwords", "allowlist"] = "stopwords"
    """"stopwords": keep every word not in the stop list (allow-list overrides it); "allowlist": keep only allow-listed words."""
    min_word_length: int = 3
    """Shorter tokens are dropped."""

    def __post_init__(self):
        for name in (
            "chunk_size",
            "rules_max_sentences",
            "llm_batch_size",
            "llm_max_new_tokens",
            "llm_max_report_tokens",
            "llm_max_attempts",
            "top_k_words",
            "chart_top_n",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.backend == "llm" and not self.llm_path:
            raise ValueError("`backend='llm'` needs `llm_path` (a local model directory)")
        if self.propose_templates and not self.llm_path:
            raise ValueError("`propose_templates` needs `llm_path` (a local model directory)")
