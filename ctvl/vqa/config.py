"""Typed configuration of the ``ctvl build-vqa`` job (:class:`VQAConfig`: columns, back-end, LLM settings,
word filter).

Question sets are :class:`ctvl.data.questions.QuestionSet`; clinical-text templates are
:class:`ctvl.config.ClinicalTextConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


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
