"""``ctvl generate``: answers to the questions about each volume, and a per-case report with the risk group.

For each batch of volumes: encode once, score every question's risk with the shared-prefix ensemble
(:func:`ctvl.infer.prefix.score_questions`), and answer every (case, question) prompt in one batched
``generate`` call (prompts left-padded, :func:`ctvl.data.prompts.collate_examples`), greedy by default or
sampled (``do_sample``, ``temperature``, ``top_p``, seeded).

Files under ``out_dir``::

    answers.jsonl   one record per (case, question): case_id, question_id, question, answer, risk;
                    appended per batch, so a rerun skips finished cases (a torn last line is dropped)
    report.md       per-case report: risk, risk group (high if risk > threshold), the answers
    report.html     the same, as one self-contained page
    errors.csv      case_id, file, stage, reason of the failures of this run

The risk-group threshold is ``risk_threshold`` (e.g. the training cohort's median risk) or, by default,
the median risk of the cases in ``answers.jsonl``.

Entry points: :func:`run_generate` -> :class:`GenerateSummary`, :func:`load_answers`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ctvl.config import PreprocessConfig
from ctvl.data.prompts import build_example, collate_examples
from ctvl.infer.inputs import (
    CONTEXT_STAGE,
    NO_CONTEXT_REASON,
    iter_volume_batches,
    load_model_run,
    model_contexts,
    resolve_inputs,
    resolve_preprocess,
    resolve_questions,
)
from ctvl.infer.prefix import score_questions
from ctvl.utils.atomic import atomic_open
from ctvl.utils.errors import ErrorLog

logger = logging.getLogger(__name__)

ANSWERS = "answers.jsonl"


@dataclass
class GenerateSummary:
    """What one :func:`run_generate` call did; ``exit_code`` is 0 only when nothing failed."""

    out_dir: Path
    n_cases: int
    n_generated: int
    n_skipped: int
    n_failed: int
    seconds: float
    threshold: Optional[float] = None
    """Risk-group threshold used in the reports."""
    failed: list[str] = field(default_factory=list)

    @property
    def answers_path(self) -> Path:
        return self.out_dir / ANSWERS

    @property
    def errors_path(self) -> Path:
        return self.out_dir / "errors.csv"

    @property
    def ok(self) -> bool:
        return self.n_failed == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def load_answers(path: str | os.PathLike) -> list[dict]:
    """Records of an ``answers.jsonl``; a torn last line (killed job) is dropped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                logger.warning("%s: dropping a torn last line", path)
                break
            raise ValueError(f"{path}:{i + 1}: {err}") from err
    return records


def _rewrite(path: Path, records: list[dict]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _done_cases(records: list[dict], question_ids: list[str]) -> set[str]:
    """Cases whose every question has an answer."""
    seen: dict[str, set] = {}
    for r in records:
        seen.setdefault(r["case_id"], set()).add(r["question_id"])
    return {c for c, q in seen.items() if set(question_ids) <= q}


@torch.no_grad()
def generate_answers(model, image_features: torch.Tensor, questions: list[str], contexts: list[Optional[str]],
                     num_image_tokens: int, **generate_kwargs) -> list[list[str]]:
    """Answers ``[case][question]`` from one batched ``CTVLModel.generate`` call over every prompt.

    Args:
        model: an eval-mode ``CTVLModel``.
        image_features (torch.Tensor, float): ``(B, C, x, y, z)`` encoder maps (or pooled ``(B, N, C)``).
        questions: Q question texts.
        contexts: B context sentences (None = none).
        num_image_tokens: image-token copies per prompt.
        **generate_kwargs: ``max_new_tokens``, ``do_sample``, ``temperature``, ``top_p``, ...
    """
    tok = model.tokenizer
    device = next(model.decoder.parameters()).device
    examples = [build_example(tok, q, None, ctx, num_image_tokens, image_token=model.cfg.image_token)
                for ctx in contexts for q in questions]  # case-major
    batch = collate_examples(examples, tok.pad_token_id, padding_side="left")
    feats = image_features.repeat_interleave(len(questions), dim=0)  # (B*Q, ...)
    new = model.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                         image_features=feats, eos_token_id=tok.eos_token_id, **generate_kwargs)
    texts = [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    q = len(questions)
    return [texts[i * q:(i + 1) * q] for i in range(len(contexts))]


def _generate_kwargs(max_new_tokens: int, do_sample: bool, temperature: float, top_p: float) -> dict:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample}
    if do_sample:  # greedy decoding ignores them (and transformers warns when they are set)
        if temperature <= 0 or not 0 < top_p <= 1:
            raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        kwargs.update(temperature=temperature, top_p=top_p)
    return kwargs


def _answer_batch(run, items, contexts, questions, gen_kwargs) -> list[dict]:
    model = run.model
    image = torch.from_numpy(np.stack([it["image"] for it in items])).to(run.device)
    with torch.no_grad():
        feats = model.vision(image.to(model.vision.conv1.weight.dtype))  # (B, C, x', y', z')
    n_img = model.num_image_tokens(feats.shape)
    ctx = [contexts.get(it["case_id"]) for it in items]
    texts = [q for _, q in questions]
    risk = score_questions(model, texts, ctx, image_features=feats, num_image_tokens=n_img).risk.cpu().numpy()
    answers = generate_answers(model, feats, texts, ctx, n_img, **gen_kwargs)
    return [{"case_id": it["case_id"], "question_id": qid, "question": q, "answer": answers[b][j],
             "risk": float(risk[b, j])}
            for b, it in enumerate(items) for j, (qid, q) in enumerate(questions)]


def run_generate(model_dir: str | os.PathLike, inputs, out_dir: str | os.PathLike, *, clinical=None,
                 clinical_template: Optional[str] = None, questions=None,
                 preprocess_cfg: Optional[PreprocessConfig] = None, max_new_tokens: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 2,
                 workers: int = 0, risk_threshold: Optional[float] = None, seed: int = 0, resume: bool = True,
                 progress: bool = True, device: Optional[str] = None,
                 allow_missing_context: bool = False) -> GenerateSummary:
    """Answer ``questions`` about every volume of ``inputs``; write ``answers.jsonl`` and the reports.

    Args:
        model_dir: a ``CTVLModel.save_pretrained`` directory.
        inputs: manifest, folder of NIfTI files or folder of DICOM-series folders (as :func:`run_predict`).
        out_dir: output folder (created).
        clinical, clinical_template, questions, preprocess_cfg, allow_missing_context: as
            :func:`ctvl.infer.predict.run_predict` (by default the model's own template and questions).
        max_new_tokens: answer length limit.
        do_sample: sample instead of greedy decoding; ``temperature`` and ``top_p`` apply then.
        batch_size: volumes per batch (``batch_size x n_questions`` prompts per ``generate`` call).
        workers: DataLoader worker processes for loading + preprocessing.
        risk_threshold: high/low split of the report; None = the median risk of the answered cases.
        seed: torch seed (sampling).
        resume: skip cases whose every question is already in ``answers.jsonl``.
        progress: tqdm progress bar.
        device: default CUDA when available, else CPU.

    Returns:
        GenerateSummary; ``exit_code`` 1 when any case failed.
    """
    from tqdm.auto import tqdm

    from ctvl.infer.report import write_case_reports

    start = time.perf_counter()
    gen_kwargs = _generate_kwargs(max_new_tokens, do_sample, temperature, top_p)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = resolve_inputs(inputs)
    errors = ErrorLog(out / "errors.csv", mode="w")
    resolved.record_rejected(errors)
    run = load_model_run(model_dir, device)
    questions = resolve_questions(questions, run)
    cfg = resolve_preprocess(preprocess_cfg, run.run_cfg)
    answers_path = out / ANSWERS
    records = load_answers(answers_path) if resume else []
    done = _done_cases(records, [qid for qid, _ in questions])
    records = [r for r in records if r["case_id"] in done]  # drop half-answered cases: they are redone
    _rewrite(answers_path, records)
    cases = resolved.cases
    todo = [(c, f) for c, f in zip(cases["case_id"], cases["image"]) if c not in done]
    contexts = model_contexts(run, [c for c, _ in todo], clinical_template, clinical=clinical,
                              table=resolved.table, allow_missing_context=allow_missing_context)
    summary = GenerateSummary(out, len(cases), 0, len(cases) - len(todo), len(resolved.rejected), 0.0,
                              failed=[r.case_id for r in resolved.rejected])
    refused = set(contexts.refused)
    for case_id, file in todo:
        if case_id in refused:
            errors.add(case_id, file, CONTEXT_STAGE, NO_CONTEXT_REASON)
            summary.n_failed += 1
            summary.failed.append(case_id)
    todo = [(c, f) for c, f in todo if c not in refused]
    torch.manual_seed(seed)
    with open(answers_path, "a", encoding="utf-8") as fh, \
            tqdm(total=len(todo), disable=not progress, unit="case", desc="generate") as bar:
        for batch in iter_volume_batches(todo, cfg, batch_size, workers):
            good = [it for it in batch if it["error"] is None]
            failed = [(it, *it["error"]) for it in batch if it["error"] is not None]
            if good:
                try:
                    new = _answer_batch(run, good, contexts.sentences, questions, gen_kwargs)
                    fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new))
                    fh.flush()
                    summary.n_generated += len(good)
                except Exception as exc:  # noqa: BLE001 -- one failing batch must not stop the job
                    logger.exception("generation failed on a batch of %d case(s)", len(good))
                    failed += [(it, "model", f"{type(exc).__name__}: {exc}") for it in good]
            for it, stage, reason in failed:
                errors.add(it["case_id"], it["file"], stage, reason)
                logger.warning("%s: %s failed: %s", it["case_id"], stage, reason)
                summary.n_failed += 1
                summary.failed.append(it["case_id"])
            bar.update(len(batch))
    summary.threshold = write_case_reports(load_answers(answers_path), out, risk_threshold,
                                           title=f"ctvl answers: {Path(model_dir).resolve().parent.name}")
    summary.seconds = time.perf_counter() - start
    logger.info("generate: %d answered, %d skipped, %d failed in %.1f s -> %s", summary.n_generated,
                summary.n_skipped, summary.n_failed, summary.seconds, out)
    return summary
