r"""Answers from a fixed candidate set: constrained generation and exact answer probabilities.

A causal LM asked for one of ``C`` candidate answers (e.g. the integers 0-100) is read two ways:

- **constrained generation**: :class:`TrieLogitsProcessor` masks, at every step, the tokens that
  continue no candidate, so ``model.generate`` can only write a candidate followed by EOS;
- **the distribution over the candidates**, :func:`score_answers`: the probability that
  constrained sampling writes candidate :math:`c = (y_1, \dots, y_L)`,

  .. math::
      p(c \mid x) = \prod_{k=1}^{L} \frac{\exp z_{y_k}(x, y_{<k})}{\sum_{v \in A(y_{<k})} \exp z_v(x, y_{<k})},

  with :math:`A(y_{<k})` the tokens allowed after the prefix (the children of its node in the
  candidates' token trie) and :math:`z` the model's logits. A node with one child contributes 1, so
  only branching nodes need a forward pass. :math:`\sum_c p(c \mid x) = 1` exactly, and the
  expected value :math:`\sum_c p(c \mid x)\, v_c` is a continuous score without ties.

Candidates are tokenised as a continuation of the prompt: ``tokenizer(" " + candidate)`` without
special tokens, then EOS; training must build its targets the same way (:func:`answer_token_ids`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor


def answer_token_ids(tokenizer, answers: Sequence[str]) -> list[list[int]]:
    """Token ids of each answer as the prompt's continuation: ``" " + answer`` without special tokens, + EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: a candidate answer could not end")
    return [tokenizer(" " + a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in answers]


class AnswerTrie:
    """Prefix tree of the candidates' token sequences (each ending with EOS)."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_token_id: int):
        self.sequences = [tuple(int(t) for t in s) for s in sequences]
        if len(set(self.sequences)) < len(self.sequences):
            raise ValueError("two candidate answers tokenise to the same ids")
        self.eos_token_id = int(eos_token_id)
        children: dict[tuple, set] = defaultdict(set)
        for seq in self.sequences:
            for k in range(len(seq)):
                children[seq[:k]].add(seq[k])
        self.children = {prefix: sorted(c) for prefix, c in children.items()}
        self.branching = [prefix for prefix, c in self.children.items() if len(c) > 1]
        """Prefixes with more than one allowed next token (the only ones that need logits)."""

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow ``prefix``; after a complete answer (or off the tree) only EOS."""
        return self.children.get(tuple(int(t) for t in prefix), [self.eos_token_id])


class TrieLogitsProcessor(LogitsProcessor):
    """For ``model.generate``: logits of tokens that continue no candidate become -inf.

    Args:
        trie: the candidates.
        prompt_length: length of the (left-padded) prompt batch; tokens after it are the answer.
    """

    def __init__(self, trie: AnswerTrie, prompt_length: int):
        self.trie, self.prompt_length = trie, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids[:, self.prompt_length:].tolist()):
            mask[row, self.trie.allowed(ids)] = 0.0
        return scores + mask


def _pad(rows: Sequence[Sequence[int]], pad_id: int, device, left: bool = False):
    """Id lists -> ``ids (R, L)``, ``mask (R, L)`` and ``lengths (R,)`` (long, on ``device``), padded on the
    right (``left``: on the left, as batched ``generate`` needs)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max())
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, slice(width - len(r), width) if left else slice(0, len(r))] = torch.as_tensor(r, dtype=torch.long)
    positions = torch.arange(width)[None]
    mask = (positions >= (width - lengths)[:, None]) if left else (positions < lengths[:, None])
    return ids.to(device), mask.long().to(device), lengths.to(device)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_constrained(model, prompts: Sequence[Sequence[int]], trie: AnswerTrie, pad_id: int,
                         batch_size: int = 64) -> list[tuple[int, ...]]:
    """Greedy ``model.generate`` under :class:`TrieLogitsProcessor`: each prompt's answer token ids
    (EOS included); every one is a candidate of ``trie``."""
    from transformers import LogitsProcessorList

    model.eval()
    longest = max(len(s) for s in trie.sequences)
    out: list[tuple[int, ...]] = []
    for start in range(0, len(prompts), batch_size):
        ids, mask, _ = _pad(prompts[start:start + batch_size], pad_id, _device(model), left=True)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=longest, do_sample=False,
                             logits_processor=LogitsProcessorList([TrieLogitsProcessor(trie, ids.shape[1])]),
                             pad_token_id=pad_id, eos_token_id=trie.eos_token_id)
        for row in gen[:, ids.shape[1]:].tolist():
            end = row.index(trie.eos_token_id) + 1 if trie.eos_token_id in row else len(row)
            out.append(tuple(row[:end]))
    return out


def _last_logits_and_states(model, sequences: list[list[int]], pad_id: int, want_states: bool):
    """Right-padded forward; logits (B, V) and last-layer states (B, H) at each sequence's last token."""
    device = _device(model)
    ids, mask, lengths = _pad(sequences, pad_id, device)
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=want_states)
    last = lengths - 1
    rows = torch.arange(len(sequences), device=device)
    logits = out.logits[rows, last].float()
    states = out.hidden_states[-1][rows, last].float() if want_states else None
    return logits, states


def _log_cond_from_logits(logits: torch.Tensor, trie: AnswerTrie, nodes: list) -> np.ndarray:
    """``(B, N, V)`` logits at the branching nodes -> ``(B, N, K)`` log-softmax over each node's children."""
    width = max(len(trie.children[p]) for p in nodes)
    out = np.zeros((logits.shape[0], len(nodes), width))
    for j, prefix in enumerate(nodes):
        allowed = trie.children[prefix]
        out[:, j, :len(allowed)] = torch.log_softmax(logits[:, j, allowed].float(), dim=-1).double().cpu().numpy()
    return out


def _shared_prompt_pass(model, prompts: Sequence[Sequence[int]], nodes: list, pad_id: int):
    """Logits ``(B, N, V)`` at every branching node and last-prompt states ``(B, H)``: the prompts run once
    with a key/value cache, repeated once per node, and only the nodes' prefix tokens run on it."""
    from ctvl.models.decoder import base_model, run_with_cache

    device = _device(model)
    decoder = base_model(model).get_decoder()
    head = model.get_output_embeddings()
    b, n = len(prompts), len(nodes)
    ids, mask, lengths = _pad(prompts, pad_id, device)
    hidden, cache = run_with_cache(decoder, input_ids=ids, attention_mask=mask)  # (B, Lp, H)
    rows = torch.arange(b, device=device)
    last = hidden[rows, lengths - 1]  # (B, H): the state before the answer
    logits = torch.zeros((b, n, head.weight.shape[0]), device=device)
    deep = [j for j, prefix in enumerate(nodes) if prefix]
    if () in nodes:
        logits[:, nodes.index(())] = head(last).float()
    if deep:
        cache.batch_repeat_interleave(len(deep))  # (B, ...) -> (B * D, ...), prompt-major
        s_ids, s_mask, s_len = _pad([nodes[j] for j in deep], pad_id, device)
        s_ids, s_mask, s_len = s_ids.repeat(b, 1), s_mask.repeat(b, 1), s_len.repeat(b)
        positions = lengths.repeat_interleave(len(deep))[:, None] + torch.arange(s_ids.shape[1], device=device)
        full_mask = torch.cat([mask.repeat_interleave(len(deep), dim=0), s_mask], dim=1)
        out, _ = run_with_cache(decoder, cache, input_ids=s_ids, attention_mask=full_mask, position_ids=positions)
        at = out[torch.arange(out.shape[0], device=device), s_len - 1]  # (B * D, H)
        logits[:, deep] = head(at).float().reshape(b, len(deep), -1)
    return logits, last.float()


def _full_pass(model, prompts: Sequence[Sequence[int]], nodes: list, pad_id: int):
    """The same as :func:`_shared_prompt_pass`, the plain way: every prompt + node prefix from scratch."""
    logits, last = _last_logits_and_states(model, [list(p) for p in prompts], pad_id, True)
    per_node = []
    for prefix in nodes:
        node_logits = logits if not prefix else _last_logits_and_states(
            model, [list(p) + list(prefix) for p in prompts], pad_id, False)[0]
        per_node.append(node_logits)
    return (torch.stack(per_node, dim=1) if per_node else logits[:, None]), last


@torch.no_grad()
def score_answers(model, prompts: Sequence[Sequence[int]], trie: AnswerTrie, pad_id: int,
                  batch_size: int = 64, return_states: bool = False, shared_prompt: bool = True):
    """Probability of every candidate for every prompt under constrained sampling (module docstring).

    Each batch of prompts runs once with a key/value cache; the prefix tokens of the trie's branching
    nodes then run on copies of it, so a prompt costs one pass plus a few tokens per node (tested equal
    to scoring every prompt + prefix from scratch).

    Args:
        model: a causal LM (HF or peft-wrapped), used in eval mode.
        prompts: ``n`` prompt token-id lists.
        trie: the ``C`` candidates (:class:`AnswerTrie`), in the order of ``trie.sequences``.
        pad_id: padding token.
        batch_size: prompts per pass (each repeated once per branching node on the cache).
        return_states: also return the last-layer hidden state of each prompt's last token.
        shared_prompt: False scores every prompt + prefix from scratch (any model with ``logits`` and
            ``hidden_states`` outputs; True needs a transformers causal LM).

    Returns:
        probs ``(n, C)`` float64 rows summing to 1, and (``return_states``) states ``(n, H)`` float32.
    """
    model.eval()
    nodes = sorted(trie.branching, key=len)
    node_index = {prefix: j for j, prefix in enumerate(nodes)}
    log_cond = np.zeros((len(prompts), len(nodes), max([len(trie.children[p]) for p in nodes], default=1)))
    states: Optional[np.ndarray] = None
    order = np.argsort([len(p) for p in prompts], kind="stable")  # similar lengths share a batch
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        run = _shared_prompt_pass if shared_prompt else _full_pass
        logits, last = run(model, [prompts[i] for i in idx], nodes, pad_id)
        if nodes:
            log_cond[idx, :, :] = _log_cond_from_logits(logits, trie, nodes)
        if return_states:
            if states is None:
                states = np.zeros((len(prompts), last.shape[1]), dtype=np.float32)
            states[idx] = last.cpu().numpy()
    log_p = np.zeros((len(prompts), len(trie.sequences)))
    for c, seq in enumerate(trie.sequences):
        for k in range(len(seq)):
            j = node_index.get(seq[:k])
            if j is not None:
                log_p[:, c] += log_cond[:, j, trie.children[seq[:k]].index(seq[k])]
    probs = np.exp(log_p)
    probs /= probs.sum(axis=1, keepdims=True)  # 1 up to rounding
    return (probs, states) if return_states else probs


@torch.no_grad()
def last_token_states(model, prompts: Sequence[Sequence[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """Last-layer hidden state ``(n, H)`` at each prompt's last token (float32)."""
    model.eval()
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        _, states = _last_logits_and_states(model, [list(prompts[i]) for i in idx], pad_id, True)
        if out is None:
            out = np.zeros((len(prompts), states.shape[1]), dtype=np.float32)
        out[idx] = states.cpu().numpy()
    return out
