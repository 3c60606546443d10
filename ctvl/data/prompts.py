"""Prompt layout, ``<image>`` expansion and label masking for visual instruction tuning.

One template (:data:`PROMPT_TEMPLATE`), the paper's order: clinical context, image, question, answer::

    <s>{context}\\n<image>...<image>\\nQuestion: {question}\\nAnswer: {answer}</s>
       \\________ prompt: labels -100 _________________________/ \\__ labelled __/

* The context line is left out (with its newline) when there is no clinical context.
* ``<image>`` becomes ``num_image_tokens`` copies of the image-token id, inserted as ids between the
  separately tokenised text segments, so a tokenizer can never merge or split them; the model then
  scatters one visual feature into each copy (:meth:`ctvl.models.ctvl.CTVLModel.forward`).
* ``labels`` are -100 everywhere except the answer tokens and the closing ``</s>``.
* Because the segments are tokenised separately, the ids of the prompt without an answer (generation)
  are exactly a prefix of the training ids.

Entry points: :func:`format_prompt`, :func:`build_example`, :func:`collate_examples`.

Example:
    >>> format_prompt("Is there a pleural effusion?", "64-year-old male former smoker.")
    '64-year-old male former smoker.\\n<image>\\nQuestion: Is there a pleural effusion?\\nAnswer:'
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch

from ctvl.config import IGNORE_INDEX

logger = logging.getLogger(__name__)

PROMPT_TEMPLATE = "{context}\n{image}\nQuestion: {question}\nAnswer:"
"""The prompt; the answer follows as ``" {answer}"`` and the tokenizer's end-of-sequence token."""


def format_prompt(question: str, context: str | None = None, image_token: str = "<image>") -> str:
    """The prompt text with a single ``image_token`` (no context -> no context line)."""
    text = PROMPT_TEMPLATE.format(context=context or "", image=image_token, question=question.strip())
    return text if context else text[1:]  # drop the empty context line's newline


def expand_image_tokens(text: str, num_image_tokens: int, image_token: str = "<image>") -> str:
    """Replace the single ``image_token`` of ``text`` by ``num_image_tokens`` copies (string form)."""
    if text.count(image_token) != 1:
        raise ValueError(f"prompt must contain {image_token!r} exactly once, found {text.count(image_token)}")
    return text.replace(image_token, image_token * num_image_tokens)


def _image_token_id(tokenizer, image_token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(image_token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"tokenizer has no {image_token!r} token; "
            "use ctvl.models.tokenizer.load_tokenizer or add_missing_tokens"
        )
    return token_id


def encode_prompt(
    tokenizer,
    question: str,
    context: str | None = None,
    num_image_tokens: int = 49,
    image_token: str = "<image>",
) -> list[int]:
    """Token ids of the prompt: ``[<s>] context \\n [image_id] * N \\n Question: ... Answer:``."""
    if num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be >= 1, got {num_image_tokens}")
    prompt = format_prompt(question, context, image_token)
    parts = prompt.split(image_token)
    if len(parts) != 2:
        raise ValueError(f"context/question must not contain {image_token!r}: {prompt!r}")
    before, after = (tokenizer.encode(p, add_special_tokens=False) if p else [] for p in parts)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + before + [_image_token_id(tokenizer, image_token)] * num_image_tokens + after


def build_example(
    tokenizer,
    question: str,
    answer: str | None,
    context: str | None = None,
    num_image_tokens: int = 49,
    max_length: int | None = None,
    image_token: str = "<image>",
) -> dict[str, torch.Tensor]:
    """Tokenise one (context, image, question, answer) sample.

    Args:
        tokenizer: a HF tokenizer holding ``image_token`` and an end-of-sequence token.
        question: the question text.
        answer: the target answer; None for generation (prompt only, all labels -100).
        context: optional clinical-context sentence placed before the image.
        num_image_tokens: copies of the image token (``ctvl.models.projector.num_image_tokens``).
        max_length: truncate the answer (never the prompt) to fit; None = no limit.
        image_token: the placeholder token.

    Returns:
        dict: ``input_ids``, ``attention_mask``, ``labels``; 1-D ``torch.long`` tensors of equal length.
        ``labels`` is -100 except on the answer tokens and ``</s>``.
    """
    prompt_ids = encode_prompt(tokenizer, question, context, num_image_tokens, image_token)
    answer_ids: list[int] = []
    if answer is not None:
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos token; the answer needs one to end")
        answer_ids = tokenizer.encode(" " + answer.strip(), add_special_tokens=False)
        answer_ids.append(tokenizer.eos_token_id)
    if max_length is not None:
        if len(prompt_ids) + (1 if answer_ids else 0) > max_length:
            raise ValueError(
                f"prompt is {len(prompt_ids)} tokens ({num_image_tokens} image tokens) "
                f"> max_length {max_length}"
            )
        if len(prompt_ids) + len(answer_ids) > max_length:
            logger.debug("answer truncated from %d tokens", len(answer_ids))
            answer_ids = answer_ids[: max_length - len(prompt_ids)]
    input_ids = torch.tensor(prompt_ids + answer_ids, dtype=torch.long)
    labels = torch.tensor([IGNORE_INDEX] * len(prompt_ids) + answer_ids, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def collate_examples(
    examples: Sequence[dict[str, torch.Tensor]],
    pad_token_id: int,
    pad_to_multiple_of: int | None = None,
    padding_side: Literal["right", "left"] = "right",
) -> dict[str, torch.Tensor]:
    """Pad examples from :func:`build_example` into a batch (right for training, left for generation).

    Args:
        examples: dicts of 1-D tensors (``input_ids``, ``attention_mask``, ``labels``).
        pad_token_id: id written into padded ``input_ids`` (padding has attention 0 and label -100).
        pad_to_multiple_of: round the padded length up to a multiple (tensor-core friendly).
        padding_side: "left" puts every prompt's end at the last position, as batched
            ``generate`` needs.

    Returns:
        dict: the same keys as ``(B, L)`` ``torch.long`` tensors.
    """
    if not examples:
        raise ValueError("collate_examples needs at least one example")
    if pad_token_id is None:
        raise ValueError("pad_token_id is None: the tokenizer needs a pad token (load_tokenizer adds one)")
    length = max(len(e["input_ids"]) for e in examples)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    batch = {}
    for key, value in fill.items():
        batch[key] = torch.full((len(examples), length), value, dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e[key])
            span = slice(0, n) if padding_side == "right" else slice(length - n, length)
            batch[key][i, span] = e[key]
    return batch
