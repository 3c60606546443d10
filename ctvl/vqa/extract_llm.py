"""Instruct-LLM answer extraction (paper section 2.2: Mistral-7B-Instruct-v0.2 reads each report).

The model and tokenizer are read from a local directory only (``local_files_only=True``; custom code
only with ``trust_remote_code``). Each report becomes one prompt asking for exactly one JSON object
whose keys are the question ids; prompts are wrapped in Mistral's ``<s>[INST] ... [/INST]`` format or
the tokenizer's chat template, batched with left padding and decoded greedily (deterministic).

Per report: parse the first JSON object of the reply, validate its keys and values, and retry the
missing slots (up to ``max_attempts``, later attempts with a format reminder). A slot still missing
falls back to the rule-based answer, flagged ``fallback=True`` with the reason in provenance. Reports
longer than ``max_report_tokens`` are truncated (warning + ``truncated=True``). "Not mentioned"
variants become the question set's canonical phrase.

Entry points:
    build_llm_extractor(cfg: VQAConfig) -> LLMExtractor
    load_llm_extractor(path, **options) -> LLMExtractor
    LLMExtractor.extract(reports, questions) -> list[list[Answer]]
    LLMExtractor.generate(messages) -> list[str]     (also used to propose question templates)
    parse_llm_output(text, ids, not_mentioned) -> (answers, problems)

Example:
    >>> parse_llm_output('Sure! ```json\\n{"tumor": "A 3 cm mass.", "pleura": "N/A"}\\n```', ["tumor", "pleura"], "NM.")
    ({'tumor': 'A 3 cm mass.', 'pleura': 'NM.'}, [])
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Literal, Optional

from ctvl.data.questions import QuestionSet
from ctvl.vqa.answer import Answer, Provenance, normalise_answer
from ctvl.vqa.config import VQAConfig
from ctvl.vqa.extract_rules import RuleExtractor, unicode_clean

logger = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 1000
"""Longer values are refused as runaway generations."""

_INSTRUCTION = (
    "Read the chest CT report below and answer each question using only information in the report.\n"
    "Reply with exactly one JSON object and nothing else. Its keys are the question ids listed below; each value "
    "is a short answer string (one or two sentences; keep sizes, sides and locations as written in the report). "
    'If the report does not mention something, answer "{not_mentioned}"\n\n'
    "Questions:\n{questions}\n\nReport:\n<<<\n{report}\n>>>"
)
_REMINDER = (
    "\n\nYour previous reply could not be used ({problem}). Reply again with only one JSON object with exactly "
    "these keys: {keys}."
)


def build_prompt(report: str, questions: QuestionSet, problem: str = "") -> str:
    """The user message for one report (plus a format reminder on retries)."""
    listed = "\n".join(f'- "{q.id}": {q.text}' for q in questions.questions)
    msg = _INSTRUCTION.format(not_mentioned=questions.not_mentioned, questions=listed, report=report)
    if problem:
        msg += _REMINDER.format(problem=problem, keys=", ".join(f'"{k}"' for k in questions.ids))
    return msg


def _first_json_object(text: str) -> Optional[dict]:
    decoder = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


def _key(k: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(k).strip().lower())


def parse_llm_output(text: str, ids: list[str], not_mentioned: str) -> tuple[dict[str, str], list[str]]:
    """Valid answers found in one reply, and what was wrong (missing keys, bad values, no JSON).

    Args:
        text: the generated reply.
        ids: expected keys (question ids).
        not_mentioned: canonical phrase for "not mentioned" variants and JSON null.

    Returns:
        (answers, problems): ``{question_id: answer}`` for the valid slots only; problems is empty when
        every id was answered.
    """
    obj = _first_json_object(text or "")
    if obj is None:
        return {}, ["no JSON object in the reply"]
    by_key = {_key(k): v for k, v in obj.items()}
    answers, problems = {}, []
    for qid in ids:
        if qid not in by_key:
            problems.append(f"missing key {qid!r}")
            continue
        value = normalise_answer(by_key[qid], not_mentioned)
        if len(value) > MAX_ANSWER_CHARS:
            problems.append(f"answer to {qid!r} longer than {MAX_ANSWER_CHARS} characters")
            continue
        answers[qid] = value
    return answers, problems


class LLMExtractor:
    """Answer extraction with a causal LM (see the module docstring).

    Args:
        model: a ``transformers`` causal LM (eval mode, on its device); None only for tests that
            replace :meth:`generate`.
        tokenizer: its tokenizer (left padding is set here).
        name: model name written into provenance.
        prompt_format: "mistral", "chat_template", or "auto" (the chat template when the tokenizer has one).
        batch_size: prompts per ``generate`` call.
        max_new_tokens: generation budget.
        max_report_tokens: reports are truncated to this many tokens.
        max_attempts: generations per report before falling back to rules for the missing slots.
        fallback: rule extractor for fallbacks (a default one when None).
    """

    name = "llm"

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = "",
        prompt_format: Literal["auto", "mistral", "chat_template"] = "auto",
        batch_size: int = 4,
        max_new_tokens: int = 512,
        max_report_tokens: int = 3072,
        max_attempts: int = 3,
        fallback: Optional[RuleExtractor] = None,
    ):
        if max_attempts < 1 or batch_size < 1:
            raise ValueError(f"max_attempts and batch_size must be >= 1, got {max_attempts}, {batch_size}")
        self.model, self.tokenizer, self.model_name = model, tokenizer, name
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.max_report_tokens, self.max_attempts = max_report_tokens, max_attempts
        self.fallback = fallback or RuleExtractor()
        tokenizer.padding_side = "left"  # decoder-only batching: prompts end where generation starts
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if prompt_format == "chat_template" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"prompt_format='chat_template' but the tokenizer of {name!r} has no chat template"
            )
        self.prompt_format = (
            prompt_format
            if prompt_format != "auto"
            else ("chat_template" if getattr(tokenizer, "chat_template", None) else "mistral")
        )

    # ------------------------------------------------------------------ generation

    def format_prompt(self, message: str) -> str:
        """User message -> the model's full prompt string."""
        if self.prompt_format == "chat_template":
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
            )
        return f"{self.tokenizer.bos_token or ''}[INST] {message} [/INST]"

    def generate(self, messages: list[str]) -> list[str]:
        """Greedy completions of user messages, batched with left padding (input order kept)."""
        import torch

        prompts = [self.format_prompt(m) for m in messages]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
        gen_cfg = self._generation_config()
        out = [""] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.model.device)
            with torch.inference_mode():
                ids = self.model.generate(**enc, generation_config=gen_cfg)
            texts = self.tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, t in zip(idx, texts):
                out[i] = t.strip()
        return out

    def _generation_config(self):
        """Greedy decoding on top of the model's own config (keeps e.g. Llama-3's several end-of-turn ids)."""
        from transformers import GenerationConfig

        base = getattr(self.model, "generation_config", None)
        cfg = copy.deepcopy(base) if base is not None else GenerationConfig()
        cfg.update(
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            num_beams=1,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if cfg.eos_token_id is None:
            cfg.eos_token_id = self.tokenizer.eos_token_id
        return cfg

    def _safe_generate(self, messages: list[str]) -> tuple[list[str], str]:
        try:
            return self.generate(messages), ""
        except Exception as err:  # noqa: BLE001 -- one failed batch (OOM, bad input) must not stop the job
            logger.warning("LLM generation failed for %d prompt(s): %s", len(messages), err)
            return [""] * len(messages), f"generation error: {type(err).__name__}: {err}"

    # ------------------------------------------------------------------ extraction

    def truncate(self, report: str) -> tuple[str, bool]:
        """Cut a report to ``max_report_tokens`` tokens (warns); returns ``(text, truncated)``."""
        ids = self.tokenizer(report, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_report_tokens:
            return report, False
        logger.warning("report of %d tokens truncated to %d for the LLM", len(ids), self.max_report_tokens)
        return self.tokenizer.decode(
            ids[: self.max_report_tokens], skip_special_tokens=True
        ).strip() + " [...]", True

    def extract(self, reports: list[str], questions: QuestionSet) -> list[list[Answer]]:
        """One answer per (report, question); see the module docstring for retries and fallbacks."""
        texts = [unicode_clean(r) for r in reports]
        cut = [self.truncate(t) if t else ("", False) for t in texts]
        found: list[dict[str, str]] = [{} for _ in reports]
        attempts, problems = [0] * len(reports), [[] for _ in reports]
        pending = [i for i, (t, _) in enumerate(cut) if t]
        for attempt in range(self.max_attempts):
            if not pending:
                break
            msgs = [
                build_prompt(cut[i][0], questions, "; ".join(problems[i]) if attempt else "") for i in pending
            ]
            replies, error = self._safe_generate(msgs)
            for i, reply in zip(pending, replies):
                attempts[i] += 1
                got, problems[i] = parse_llm_output(reply, questions.ids, questions.not_mentioned)
                problems[i] = [error] if error else problems[i]
                found[i] = {**got, **found[i]}  # the first valid answer of a slot is kept
            pending = [i for i in pending if len(found[i]) < len(questions.ids)]
        return [
            self._assemble(texts[i], found[i], attempts[i], problems[i], cut[i][1], questions)
            for i in range(len(reports))
        ]

    def _assemble(self, report, found, attempts, problems, truncated, questions) -> list[Answer]:
        prov = Provenance(
            "llm", model=self.model_name, templates=questions.tag, attempts=attempts, truncated=truncated
        )
        rules = None
        answers = []
        for q in questions.questions:
            if q.id in found:
                answers.append(Answer(q.id, found[q.id], prov))
                continue
            rules = rules or self.fallback.extract([report], questions)[0]
            reason = (
                "empty report"
                if not report
                else (f"llm: {'; '.join(problems) or 'no answer'} after {attempts} attempt(s)")
            )
            answers.append(
                rules[questions.ids.index(q.id)].with_provenance(
                    model=self.model_name,
                    attempts=attempts,
                    fallback=bool(report),
                    reason=reason,
                    truncated=truncated,
                )
            )
        return answers


# ---------------------------------------------------------------------------- loading


def _torch_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def load_llm_extractor(
    path: str | Path, *, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False, **options
) -> LLMExtractor:
    """Load an instruct model + tokenizer from a local directory (never from a hub).

    Args:
        path: directory with ``config.json``, weights and tokenizer files.
        dtype: "auto" (bfloat16 on CUDA, float32 on CPU), "float32", "bfloat16" or "float16".
        device: torch device; "auto" = CUDA when available.
        trust_remote_code: allow custom code from ``path``.
        **options: :class:`LLMExtractor` keyword arguments.
    """
    import torch
    from transformers import AutoTokenizer

    from ctvl.config import DecoderConfig
    from ctvl.models.decoder import load_decoder

    path = Path(path)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    torch_dtype = str(_torch_dtype(dtype, device)).removeprefix("torch.")
    # load_decoder refuses anything but a local model directory: ctvl never downloads.
    model = load_decoder(DecoderConfig(path=str(path), dtype=torch_dtype, trust_remote_code=trust_remote_code))
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=trust_remote_code)
    model.to(device).eval()
    logger.info("loaded %s on %s (%s)", path.name, device, model.dtype)
    return LLMExtractor(model, tokenizer, name=path.name, **options)


def build_llm_extractor(cfg: VQAConfig) -> LLMExtractor:
    """The LLM back-end described by a :class:`VQAConfig` (its ``llm_*`` fields)."""
    if not cfg.llm_path:
        raise ValueError("VQAConfig.llm_path is empty: the LLM back-end needs a local model directory")
    return load_llm_extractor(
        cfg.llm_path,
        dtype=cfg.llm_dtype,
        device=cfg.llm_device,
        trust_remote_code=cfg.trust_remote_code,
        prompt_format=cfg.llm_prompt_format,
        batch_size=cfg.llm_batch_size,
        max_new_tokens=cfg.llm_max_new_tokens,
        max_report_tokens=cfg.llm_max_report_tokens,
        max_attempts=cfg.llm_max_attempts,
        fallback=RuleExtractor(cfg.rules_max_sentences),
    )
