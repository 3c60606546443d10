"""Train a :class:`~ctvl.models.prompt_survival.PromptCoxModel` on prompts and real survival times.

Batches are right-padded prompts with their ``event``/``time``; the event-aware sampler puts at least
one event in every micro-batch (the Cox loss of an event-free batch is zero). Runs in ctvl's one
training loop (:func:`ctvl.train.loop.fit`).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ctvl.config import IGNORE_INDEX, TrainConfig
from ctvl.data.prompts import collate_examples
from ctvl.data.sampler import EpochBatchSampler
from ctvl.train.engine import build_engine, rank, world_size
from ctvl.train.loop import FitResult, TrainingTask, batch_stream, fit


def collate_prompts(items: list[dict], pad_token_id: int) -> tuple[dict, dict]:
    """Right-padded ``input_ids`` / ``attention_mask`` ``(B, L)`` (``collate_examples``), ``event`` (B,) bool,
    ``time`` (B,) float."""
    ids = [torch.as_tensor(it["input_ids"], dtype=torch.long) for it in items]
    padded = collate_examples([{"input_ids": t, "attention_mask": torch.ones_like(t),
                                "labels": torch.full_like(t, IGNORE_INDEX)} for t in ids], pad_token_id)
    inputs = {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"],
              "event": torch.tensor([it["event"] for it in items], dtype=torch.bool),
              "time": torch.tensor([it["time"] for it in items], dtype=torch.float32)}
    return inputs, {"case_id": [it["case_id"] for it in items]}


def fit_prompt_cox(model, case_ids: Sequence[str], prompts: Sequence[Sequence[int]], event, time,
                   tc: TrainConfig, pad_token_id: int, out_dir: Optional[Path] = None,
                   progress: bool = True) -> FitResult:
    """Train ``model`` (in place) with the Cox loss for ``tc.max_steps`` steps; see the module docstring."""
    event, time = np.asarray(event, dtype=bool), np.asarray(time, dtype=np.float64)
    items = [{"case_id": c, "input_ids": list(p), "event": bool(e), "time": float(t)}
             for c, p, e, t in zip(case_ids, prompts, event, time)]
    if len(items) < tc.micro_batch_size * world_size():
        raise ValueError(f"{len(items)} prompts < one micro-batch per rank ({tc.micro_batch_size} x {world_size()})")
    engine = build_engine(model, tc)
    sampler = EpochBatchSampler(len(items), tc.micro_batch_size, rank=rank(), world_size=world_size(), seed=tc.seed,
                                events=event)
    collate = partial(collate_prompts, pad_token_id=pad_token_id)
    task = TrainingTask(engine=engine, name="prompt Cox", count_tokens=True,
                        batches=lambda epoch, position: batch_stream(items, sampler, epoch, position, collate))
    return fit(task, tc, out_dir, progress)


@torch.no_grad()
def predict_prompt_risk(model, prompts: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 64) -> np.ndarray:
    """Log-hazards ``(n,)`` of prompts (eval mode)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        items = [{"case_id": "", "input_ids": list(p), "event": False, "time": 0.0}
                 for p in prompts[start:start + batch_size]]
        inputs, _ = collate_prompts(items, pad_token_id)
        out.append(model(inputs["input_ids"].to(device), inputs["attention_mask"].to(device)).risk.double().cpu())
    return torch.cat(out).numpy()
