"""The prompts a model is trained with, kept as data so that inference rebuilds exactly the same ones.

A prompt is ``<clinical sentence>\\n<image>\\n<question>`` (:mod:`ctvl.data.prompts`); what makes it is the
clinical-text template, the question set and the image placeholder: a :class:`ctvl.config.PromptConfig`.

* ``ctvl build-vqa`` renders the pairs' prompts and writes their ``prompts.yaml`` beside them
  (:func:`write_prompt_config`);
* training reads it from the VQA folder (:func:`training_prompt_config`) and the model saves it in its own
  folder (``CTVLModel.save_pretrained``);
* ``ctvl predict`` / ``generate`` read it back from the model, so the README's commands need no template.

Entry points: :func:`make_prompt_config`, :func:`write_prompt_config`, :func:`read_prompt_config`,
:func:`training_prompt_config`.

Example:
    >>> from ctvl.data.questions import QuestionSet
    >>> cfg = make_prompt_config(None, QuestionSet())
    >>> cfg.has_context, cfg.questions[0][0]
    (False, 'tumor')
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from ctvl.config import ClinicalTextConfig, PromptConfig, load_config, save_config
from ctvl.data.clinical_text import load_clinical_template
from ctvl.data.questions import QuestionSet, load_question_set

logger = logging.getLogger(__name__)

PROMPTS_FILE = "prompts.yaml"
"""Name of the prompt config in a VQA folder (and in a saved model folder)."""


def make_prompt_config(template: Optional[ClinicalTextConfig], questions: QuestionSet,
                       image_token: str = "<image>") -> PromptConfig:
    """The template (or None), the questions' ``(id, text)`` and the placeholder as one config."""
    return PromptConfig(template, tuple((q.id, q.text) for q in questions.questions), image_token)


def write_prompt_config(cfg: PromptConfig, folder: str | Path) -> Path:
    """Write ``folder/prompts.yaml``; returns its path."""
    path = Path(folder) / PROMPTS_FILE
    save_config(cfg, path)
    return path


def read_prompt_config(path: str | Path) -> Optional[PromptConfig]:
    """A ``prompts.yaml`` (or a folder holding one) -> :class:`PromptConfig`; None when there is none.

    Raises:
        ValueError: the file exists but is not a prompt config (the message names it).
    """
    path = Path(path)
    if path.is_dir():
        path = path / PROMPTS_FILE
    if not path.is_file():
        return None
    try:
        return load_config(PromptConfig, path)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a prompt config ({err})") from None


def _legacy_template(vqa_folder: Path) -> Optional[str]:
    """The template path an older ``build_settings.json`` recorded (before ``prompts.yaml`` existed)."""
    settings = vqa_folder / "build_settings.json"
    if not settings.is_file():
        return None
    return json.loads(settings.read_text()).get("clinical_template") or None


def training_prompt_config(vqa: str | Path, clinical_template: str = "", questions: str = "") -> PromptConfig:
    """The prompt config of a training run on the pairs in ``vqa`` (a LLaVA JSONL).

    The VQA folder's ``prompts.yaml`` when ``ctvl build-vqa`` wrote one; else (an older build) the template
    its ``build_settings.json`` names, or the run's ``data.clinical_template``, with the run's question file.

    Args:
        vqa: the pairs' JSONL (``data.vqa``).
        clinical_template: the run's ``data.clinical_template`` (YAML path; "" = none).
        questions: the run's ``data.questions`` (YAML path; "" or a missing file = the paper's six).
    """
    folder = Path(vqa).parent
    saved = read_prompt_config(folder)
    if saved is not None:
        if clinical_template and load_clinical_template(clinical_template) != saved.clinical_template:
            logger.warning("data.clinical_template %s differs from the template %s/%s was built with; the "
                           "pairs' template is kept with the model", clinical_template, folder, PROMPTS_FILE)
        return saved
    template = _legacy_template(folder) or clinical_template or None
    if template is not None and not Path(template).is_file():
        logger.warning("%s: the clinical template %s of this VQA build is gone; the model is saved without "
                       "one and inference will need --clinical_template", folder, template)
        template = None
    question_set = load_question_set(questions if questions and Path(questions).is_file() else None)
    return make_prompt_config(load_clinical_template(template) if template else None, question_set)
