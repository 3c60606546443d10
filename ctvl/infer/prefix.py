r"""Risk of every question about a volume, with the shared prompt prefix computed once.

The paper's risk is the mean over six questions asked of the same volume (Liu et al. 2026, section 2.3).
The six prompts (:func:`ctvl.data.prompts.encode_prompt`) differ only in their question::

    <s> {clinical sentence} \n <image> x N \n Question: {question} \n Answer:
    \__________________ shared prefix ______________/ \______ suffix _______/

Because the text segments are tokenised separately, the prefix ids are exactly equal across the
questions. :func:`score_questions` runs the decoder once over each case's prefix (``use_cache=True``),
repeats the key/value cache once per question (``DynamicCache.batch_repeat_interleave``) and runs the
question suffixes as one batch on it: right-padded suffixes, attention mask = prefix mask + suffix mask,
position ids continuing after each case's real prefix length. The hidden state of each suffix's last
real token is the "last_prompt" state that :meth:`ctvl.models.ctvl.CTVLModel.forward` pools, so the risks
equal those of full passes (tested to 1e-4). The shared part is the longest common token prefix of the
prompts, so the ``\nQuestion:`` tokens common to all questions are computed once as well; the context and
each question are tokenised once (:func:`encode_prompt_parts`).

Decoder cost per case drops from :math:`Q(P + S)` to :math:`P + QS` tokens (``P`` prefix, ``S`` suffix
tokens, ``Q`` questions), and the vocabulary projection (``lm_head``) is skipped: only hidden states are
needed. ``shared_prefix=False`` runs the plain way, ``Q`` full ``CTVLModel.forward`` passes, for comparison
(``scripts/bench_predict.py``).

Entry points: :func:`score_questions` -> :class:`QuestionScores`, :func:`encode_prompt_parts`,
:func:`encode_question_prompts`, :func:`split_shared_prefix`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ctvl.data.prompts import build_example, collate_examples, encode_prompt
from ctvl.models.ctvl import CTVLModel
from ctvl.models.decoder import base_model, run_with_cache

logger = logging.getLogger(__name__)

SHARED_POOLINGS = ("last_prompt", "last")
"""Survival poolings whose state is a single prompt position (the shared-prefix path reproduces them)."""


@dataclass
class QuestionScores:
    """Survival outputs for B cases x Q questions (float32, on the model's device).

    Attributes:
        risk: ``(B, Q)`` higher = earlier event (``log_hz`` for Cox, ``K - E[bin]`` for DeepHit).
        z_surv: ``(B, Q, D)`` survival latents (adapter outputs).
        pmf: ``(B, Q, K)`` DeepHit probability mass per time bin; None for Cox.
        surv: ``(B, Q, K)`` DeepHit survival at the K cut points; None for Cox.
    """

    risk: torch.Tensor
    z_surv: torch.Tensor
    pmf: Optional[torch.Tensor] = None
    surv: Optional[torch.Tensor] = None


def encode_question_prompts(tokenizer, questions: Sequence[str], context: Optional[str],
                            num_image_tokens: int, image_token: str = "<image>") -> list[list[int]]:
    """Prompt ids of every question for one case (exactly the ids training and ``forward`` see)."""
    return [encode_prompt(tokenizer, q, context or None, num_image_tokens, image_token) for q in questions]


def encode_prompt_parts(
    tokenizer, questions: Sequence[str], contexts: Sequence[Optional[str]], num_image_tokens: int,
    image_token: str = "<image>",
) -> tuple[list[list[int]], list[list[int]]]:
    """Shared prefixes (one per case) and question suffixes (one per question, the same for every case).

    ``prefixes[b] + suffixes[j] == encode_prompt(questions[j], contexts[b])`` for every pair: the context
    and the question are tokenised once each (``encode_prompt`` tokenises its segments separately), and
    the tokens common to every question (``"\\nQuestion:"``) move into the prefix. The identity is
    checked on the first case, so a change of the prompt layout fails loudly instead of silently.
    """
    bare = encode_question_prompts(tokenizer, questions, None, num_image_tokens, image_token)
    _, suffixes = split_shared_prefix(bare)  # bare = [<s>] + image tokens + question part
    prefixes = []
    for ctx in contexts:
        full = encode_prompt(tokenizer, questions[0], ctx or None, num_image_tokens, image_token)
        head = full[: len(full) - len(suffixes[0])]  # [<s>] context \n image tokens + common question tokens
        if full[len(head):] != suffixes[0]:
            raise ValueError("prompt layout changed: the question part is no longer a suffix of the prompt")
        prefixes.append(head)
    check = encode_prompt(tokenizer, questions[-1], contexts[0] or None, num_image_tokens, image_token)
    if check != prefixes[0] + suffixes[-1]:
        raise ValueError("prompt layout changed: prefix + question suffix != encode_prompt")
    return prefixes, suffixes


def split_shared_prefix(prompts: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """Longest common token prefix of ``prompts`` and the remaining suffixes (each keeps >= 1 token).

    Example:
        >>> split_shared_prefix([[1, 5, 6, 7], [1, 5, 6, 8, 9]])
        ([1, 5, 6], [[7], [8, 9]])
        >>> split_shared_prefix([[1, 2], [1, 2, 3]])
        ([1], [[2], [2, 3]])
    """
    if not prompts:
        raise ValueError("split_shared_prefix needs at least one prompt")
    limit = min(len(p) for p in prompts) - 1  # the last token of each prompt stays in its suffix
    n = 0
    while n < limit and all(p[n] == prompts[0][n] for p in prompts):
        n += 1
    return list(prompts[0][:n]), [list(p[n:]) for p in prompts]


@torch.no_grad()
def score_questions(
    model: CTVLModel, questions: Sequence[str], contexts: Sequence[Optional[str]], *,
    num_image_tokens: Optional[int] = None,
    image: Optional[torch.Tensor] = None, image_features: Optional[torch.Tensor] = None,
    shared_prefix: bool = True,
) -> QuestionScores:
    """Survival outputs of every (case, question) pair, as ``CTVLModel.forward`` computes them.

    Args:
        model: an eval-mode :class:`~ctvl.models.ctvl.CTVLModel` (peft-wrapped decoder or not).
        questions: the Q question texts (the same for every case).
        contexts: B clinical-context sentences (None or "" = no context line).
        num_image_tokens: image-token copies per prompt; None = the model's count for these features.
        image (torch.Tensor, float): ``(B, 1, x, y, z)`` preprocessed volumes; encoded once.
        image_features (torch.Tensor, float): instead of ``image``, encoder maps ``(B, C, x, y, z)`` or
            pooled tokens ``(B, N, C)``.
        shared_prefix: True: prefix once + question suffixes on its KV cache; False: Q full
            ``model.forward`` passes (the plain way). Poolings other than the last prompt token always
            take the plain way.

    Returns:
        QuestionScores with ``(B, Q, ...)`` tensors.
    """
    if not questions:
        raise ValueError("score_questions needs at least one question")
    if image_features is None:
        if image is None:
            raise ValueError("score_questions needs `image` or `image_features`")
        image_features = model.vision(image.to(model.vision.conv1.weight.dtype))  # (B, C, x, y, z)
    if num_image_tokens is None:
        num_image_tokens = model.num_image_tokens(image_features.shape)
    if len(contexts) != image_features.shape[0]:
        raise ValueError(f"{len(contexts)} contexts for {image_features.shape[0]} images")
    if shared_prefix and model.cfg.survival.pooling not in SHARED_POOLINGS:
        logger.warning("survival.pooling=%r reads more than one position: using full passes",
                       model.cfg.survival.pooling)
        shared_prefix = False
    if shared_prefix:
        return _score_shared(model, questions, contexts, image_features, num_image_tokens)
    return _score_full(model, questions, contexts, image_features, num_image_tokens)


def _device(model: CTVLModel) -> torch.device:
    return next(model.decoder.parameters()).device


def _pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """Right-pad id lists -> ``ids (R, L)``, ``mask (R, L)`` and ``lengths (R,)`` (all long)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    ids = torch.full((len(rows), int(lengths.max())), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    return ids.to(device), mask.to(device), lengths.to(device)


def _scores(out, b: int, q: int) -> QuestionScores:
    """Survival outputs of ``R = B*Q`` rows in case-major order -> :class:`QuestionScores` ``(B, Q, ...)``."""
    risk, z, pmf, surv = (None if t is None else t.reshape(b, q, *t.shape[1:])
                          for t in (out.risk, out.z_surv, out.pmf, out.surv))
    return QuestionScores(risk=risk, z_surv=z, pmf=pmf, surv=surv)


def _score_shared(model: CTVLModel, questions, contexts, image_features, n_img: int) -> QuestionScores:
    tok, device = model.tokenizer, _device(model)
    b, q = len(contexts), len(questions)
    prefixes, suffixes = encode_prompt_parts(tok, questions, contexts, n_img, model.cfg.image_token)
    if any(i == model.image_token_id for s in suffixes for i in s):
        raise ValueError("image tokens after the shared prefix: the questions differ before the image")
    p_ids, p_mask, p_len = _pad(prefixes, tok.pad_token_id, device)
    p_emb = model.embed_inputs(p_ids, image_features=image_features)  # (B, Lp, D), image tokens filled
    embed = model.decoder.get_input_embeddings()
    decoder = base_model(model.decoder).get_decoder()  # the transformer without lm_head; LoRA layers inside
    _, cache = run_with_cache(decoder, inputs_embeds=p_emb, attention_mask=p_mask)
    cache.batch_repeat_interleave(q)  # (B, H, Lp, d) -> (B*Q, H, Lp, d), case-major
    s_ids, s_mask, s_len = _pad(suffixes, tok.pad_token_id, device)  # (Q, Ls): the same for every case
    s_ids, s_mask, s_len = s_ids.repeat(b, 1), s_mask.repeat(b, 1), s_len.repeat(b)  # (B*Q, ...), case-major
    positions = p_len.repeat_interleave(q)[:, None] + torch.arange(s_ids.shape[1], device=device)  # (B*Q, Ls)
    mask = torch.cat([p_mask.repeat_interleave(q, dim=0), s_mask], dim=1)  # (B*Q, Lp + Ls)
    hidden, _ = run_with_cache(decoder, cache, inputs_embeds=embed(s_ids), attention_mask=mask,
                               position_ids=positions)  # (B*Q, Ls, D)
    h = hidden[torch.arange(b * q, device=device), s_len - 1]  # (B*Q, D): each question's last prompt token
    return _scores(model.survival_outputs(h)[0], b, q)


def _score_full(model: CTVLModel, questions, contexts, image_features, n_img: int) -> QuestionScores:
    """Q independent ``model.forward`` passes (each over the B cases), the plain way."""
    tok, device = model.tokenizer, _device(model)
    per_question = []
    for question in questions:
        examples = [build_example(tok, question, None, ctx or None, n_img, image_token=model.cfg.image_token)
                    for ctx in contexts]
        batch = collate_examples(examples, tok.pad_token_id)
        out = model(input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device), image_features=image_features)
        per_question.append((out.risk.float(), out.z_surv, out.pmf, out.surv))
    stacked = [None if parts[0] is None else torch.stack(parts, dim=1) for parts in zip(*per_question)]
    return QuestionScores(*stacked)


