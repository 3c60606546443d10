"""VQA data construction from radiology reports (paper section 2.2) for stage-1 instruction tuning.

A folder of reports (CT-RATE: ~50k) becomes clinician-reviewable question-answer pairs:

* :mod:`ctvl.vqa.config`        -- ``VQAConfig`` (the job's settings).
* :mod:`ctvl.vqa.wordfreq`      -- top-100 medical words (CSV + bar chart) that seed the questions.
* :mod:`ctvl.vqa.templates`     -- LLM-proposed candidate questions.
* :mod:`ctvl.vqa.answer`        -- ``Answer`` / ``Provenance`` and the ``AnswerExtractor`` protocol.
* :mod:`ctvl.vqa.extract_rules` -- deterministic keyword-rule back-end (default, no model).
* :mod:`ctvl.vqa.extract_llm`   -- instruct-LLM back-end (local Mistral-7B-Instruct or any chat model).
* :mod:`ctvl.vqa.review`        -- review CSV export / import.
* :mod:`ctvl.vqa.build`         -- ``run_build_vqa`` (the ``ctvl build-vqa`` job) and ``run_import_review``.
* :mod:`ctvl.vqa.evaluate`      -- ``evaluate_extraction`` against known findings (synthetic cohort).

Question sets live in :mod:`ctvl.data.questions`; clinical covariates -> context sentence in
:mod:`ctvl.data.clinical_text` (its template: :class:`ctvl.config.ClinicalTextConfig`).
Importing this package loads no model code (torch / transformers are imported by the LLM back-end only).
"""

from ctvl.vqa.config import VQAConfig

__all__ = ["VQAConfig"]
