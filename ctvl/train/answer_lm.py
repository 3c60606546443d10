"""Fine-tune a causal LM to write an answer after a prompt, loss on the answer tokens only.

Each example is ``prompt ids + answer ids`` (the answer as built by
:func:`ctvl.models.answer_scoring.answer_token_ids`, EOS included); labels are ``IGNORE_INDEX`` on
the prompt, so the loss is the mean cross-entropy of the answer tokens. Training runs in ctvl's one
loop (:func:`ctvl.train.loop.fit`) on the engine of the ``TrainConfig`` (plain PyTorch, or DeepSpeed
under a launcher).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import torch

from ctvl.config import IGNORE_INDEX, TrainConfig
from ctvl.data.prompts import collate_examples
from ctvl.data.sampler import EpochBatchSampler
from ctvl.train.engine import build_engine, rank, world_size
from ctvl.train.loop import FitResult, TrainingTask, batch_stream, fit


def answer_examples(case_ids: Sequence[str], prompts: Sequence[Sequence[int]],
                    answers: Sequence[Sequence[int]]) -> list[dict]:
    """One ``{"case_id", "input_ids", "attention_mask", "labels"}`` per (prompt, answer); labels mask the prompt."""
    if not len(case_ids) == len(prompts) == len(answers):
        raise ValueError(f"{len(case_ids)} ids, {len(prompts)} prompts and {len(answers)} answers")
    return [{"case_id": c, "input_ids": list(p) + list(a), "attention_mask": [1] * (len(p) + len(a)),
             "labels": [IGNORE_INDEX] * len(p) + list(a)} for c, p, a in zip(case_ids, prompts, answers)]


def collate_answers(items: list[dict], pad_token_id: int) -> tuple[dict, dict]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` ``(B, L)`` (``collate_examples``); meta ``case_id``."""
    keys = ("input_ids", "attention_mask", "labels")
    tensors = [{k: torch.as_tensor(it[k], dtype=torch.long) for k in keys} for it in items]
    return collate_examples(tensors, pad_token_id), {"case_id": [it["case_id"] for it in items]}


def fit_answer_lm(model, examples: list[dict], tc: TrainConfig, pad_token_id: int,
                  out_dir: Optional[Path] = None, progress: bool = True) -> FitResult:
    """Train ``model`` (in place) on ``examples`` for ``tc.max_steps`` optimiser steps.

    Args:
        model: causal LM returning ``.loss`` from ``labels`` (HF or peft-wrapped); its trainable
            parameters are those with ``requires_grad``.
        examples: from :func:`answer_examples`; at least one micro-batch per rank.
        tc: batch size, steps, learning rate(s), schedule, seed, intervals.
        out_dir: run folder for ``metrics.csv`` and checkpoints (resumed from), or None for none.

    Returns:
        FitResult with one history row per ``tc.log_interval`` steps (mean answer-token loss).
    """
    if len(examples) < tc.micro_batch_size * world_size():
        raise ValueError(f"{len(examples)} examples < one micro-batch per rank ({tc.micro_batch_size} x {world_size()})")
    engine = build_engine(model, tc)
    sampler = EpochBatchSampler(len(examples), tc.micro_batch_size, rank=rank(), world_size=world_size(), seed=tc.seed)
    collate = partial(collate_answers, pad_token_id=pad_token_id)
    task = TrainingTask(engine=engine, name="answer LM", count_tokens=True,
                        batches=lambda epoch, position: batch_stream(examples, sampler, epoch, position, collate))
    return fit(task, tc, out_dir, progress)
