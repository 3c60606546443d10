"""Training/evaluation samples: one (volume, question, answer) pair with its survival target.

Inputs:
    * VQA pairs in LLaVA JSONL (``ctvl build-vqa`` writes ``vqa_llava.jsonl``):
      ``{"id": "<case_id>__<question_id>", "image": ..., "conversations": [
      {"from": "human", "value": "<clinical context>\\n<image>\\n<question>"}, {"from": "gpt", "value": "<answer>"}]}``.
    * An image source: the preprocessed-volume cache (``ctvl preprocess``) or the frozen-encoder feature
      cache (``ctvl encode``); both are looked up by ``case_id``.
    * Optional survival targets from the manifest (``time``, ``event``; DeepHit bins from a fitted
      :class:`ctvl.survival.TimeDiscretizer`).

``collate`` returns ``(inputs, meta)``: ``inputs`` keys are exactly ``CTVLModel.forward`` kwargs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ctvl.data.prompts import build_example, collate_examples

PAIR_SEPARATOR = "__"


@dataclass(frozen=True)
class VQAPair:
    """One question about one volume."""

    case_id: str
    question_id: str
    question: str
    answer: Optional[str]
    context: str = ""


def parse_llava_record(record: dict, image_token: str = "<image>") -> VQAPair:
    """A LLaVA record -> :class:`VQAPair`; the human turn is ``[context\\n]<image>\\nquestion``."""
    rid = str(record["id"])
    case_id, _, question_id = rid.rpartition(PAIR_SEPARATOR)
    if not case_id:
        case_id, question_id = rid, ""
    turns = record.get("conversations") or []
    if len(turns) < 1 or image_token not in turns[0].get("value", ""):
        raise ValueError(f"VQA record {rid!r}: first turn must hold {image_token!r}")
    context, _, question = turns[0]["value"].partition(image_token)
    answer = turns[1]["value"] if len(turns) > 1 else None
    return VQAPair(case_id, question_id, question.strip(), answer, context.strip())


def load_vqa_pairs(path: str | Path, case_ids: Optional[set[str]] = None) -> list[VQAPair]:
    """Read LLaVA JSONL; keep only ``case_ids`` when given. Raises naming the file and line on bad JSON."""
    pairs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                pair = parse_llava_record(json.loads(line))
            except (json.JSONDecodeError, KeyError, ValueError) as err:
                raise ValueError(f"{path}:{lineno}: {err}") from err
            if case_ids is None or pair.case_id in case_ids:
                pairs.append(pair)
    return pairs


class VQASurvivalDataset(Dataset):
    """Tokenised (image, prompt, answer) samples with optional survival targets.

    Args:
        pairs: the VQA pairs.
        tokenizer: tokenizer holding ``<image>`` (see ``ctvl.models.tokenizer``).
        num_image_tokens: image-token copies per prompt (``CTVLModel`` knows it from its config).
        load_image: ``case_id -> torch.Tensor``: a preprocessed volume ``(1, x, y, z)`` or encoder
            features ``(C, x, y, z)``; ``image_key`` says which forward kwarg it feeds.
        image_key: ``"image"`` or ``"image_features"``.
        targets: DataFrame indexed by case_id with ``time``, ``event`` (and ``bin_index`` for DeepHit).
        max_length: maximum text length in tokens (answers are truncated, prompts never).
    """

    def __init__(self, pairs: Sequence[VQAPair], tokenizer, num_image_tokens: int,
                 load_image: Callable[[str], torch.Tensor], *, image_key: str = "image",
                 targets: Optional[pd.DataFrame] = None, max_length: Optional[int] = None):
        if image_key not in ("image", "image_features"):
            raise ValueError(f"image_key must be 'image' or 'image_features', got {image_key!r}")
        if targets is not None:
            missing = sorted({p.case_id for p in pairs} - set(targets.index))
            if missing:
                raise ValueError(f"{len(missing)} VQA case(s) have no survival target, e.g. {missing[:3]}")
        self.pairs = list(pairs)
        self.tokenizer, self.num_image_tokens = tokenizer, num_image_tokens
        self.load_image, self.image_key = load_image, image_key
        self.targets, self.max_length = targets, max_length

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def events(self) -> Optional[list[bool]]:
        """Per-sample event flags (for the event-aware sampler), None without targets."""
        if self.targets is None:
            return None
        return [bool(self.targets.at[p.case_id, "event"]) for p in self.pairs]

    def __getitem__(self, i: int) -> dict:
        pair = self.pairs[i]
        item = build_example(self.tokenizer, pair.question, pair.answer, pair.context or None,
                             self.num_image_tokens, self.max_length)
        item[self.image_key] = torch.as_tensor(np.asarray(self.load_image(pair.case_id)), dtype=torch.float32)
        if self.targets is not None:
            row = self.targets.loc[pair.case_id]
            item["event"] = torch.tensor(bool(row["event"]))
            item["time"] = torch.tensor(float(row["time"]), dtype=torch.float32)
            if "bin_index" in row:
                item["bin_index"] = torch.tensor(int(row["bin_index"]))
        item["meta"] = {"case_id": pair.case_id, "question_id": pair.question_id}
        return item


def collate(items: list[dict], pad_token_id: int) -> tuple[dict, dict]:
    """Samples -> ``(inputs, meta)``; text right-padded, images stacked ``(B, C, x, y, z)``."""
    inputs = collate_examples(items, pad_token_id)
    for key in ("image", "image_features", "event", "time", "bin_index"):
        if key in items[0]:
            inputs[key] = torch.stack([it[key] for it in items])
    meta = {k: [it["meta"][k] for it in items] for k in items[0]["meta"]}
    return inputs, meta
