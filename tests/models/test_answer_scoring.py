"""Answers from a candidate set: constrained decoding never leaves it, probabilities are exact."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ctvl.models.answer_scoring import AnswerTrie, TrieLogitsProcessor, generate_constrained, score_answers

EOS, PAD = 0, 9
# Toy vocabulary: 1..5 are answer pieces, 6..8 prompt words. Candidates: "1 2", "1 3", "4", "5 2 3".
CANDIDATES = [(1, 2, EOS), (1, 3, EOS), (4, EOS), (5, 2, 3, EOS)]


class TableLM(torch.nn.Module):
    """Logits depend only on the last real token: a fixed (V, V) table; hidden state = one-hot of it."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **_):
        logits = self.table[input_ids]  # (B, L, V)
        hidden = torch.nn.functional.one_hot(input_ids, self.table.shape[0]).float()
        return SimpleNamespace(logits=logits, hidden_states=(hidden,) if output_hidden_states else None)


def test_probabilities_equal_a_hand_computation_and_sum_to_one():
    torch.manual_seed(0)
    table = torch.randn(10, 10)
    trie = AnswerTrie(CANDIDATES, EOS)
    model = TableLM(table)
    prompts = [[6, 7], [8]]
    probs, states = score_answers(model, prompts, trie, PAD, batch_size=3, return_states=True, shared_prompt=False)

    def restricted(last: int, allowed: list[int], token: int) -> float:
        z = table[last, allowed]
        return float(torch.softmax(z, 0)[allowed.index(token)])

    for i, prompt in enumerate(prompts):
        last = prompt[-1]
        first = [1, 4, 5]  # allowed after the prompt
        hand = [restricted(last, first, 1) * restricted(1, [2, 3], 2),  # "1 2" then EOS (one child: 1)
                restricted(last, first, 1) * restricted(1, [2, 3], 3),
                restricted(last, first, 4),
                restricted(last, first, 5)]  # "5 2 3": after 5 and after 5 2 a single child
        np.testing.assert_allclose(probs[i], hand, rtol=1e-6)
        assert probs[i].sum() == pytest.approx(1.0, abs=1e-12)
        assert states[i].argmax() == last  # the last prompt token's state
    values = np.array([12.0, 13.0, 4.0, 523.0])
    expected = probs @ values  # the continuous score: E[value] under the constrained distribution
    assert np.all((expected > values.min()) & (expected < values.max()))


def test_constrained_processor_never_leaves_the_candidates_on_random_logits():
    trie = AnswerTrie(CANDIDATES, EOS)
    rng = np.random.default_rng(0)
    for trial in range(300):
        prompt = torch.tensor([[6, 7, 8]])
        ids = prompt
        proc = TrieLogitsProcessor(trie, prompt.shape[1])
        for _ in range(6):
            scores = torch.as_tensor(rng.normal(0, 5, (1, 10)), dtype=torch.float32)
            masked = proc(ids, scores)
            p = torch.softmax(masked, -1)[0].numpy().astype(np.float64)
            token = int(rng.choice(10, p=p / p.sum()))
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
            if token == EOS:
                break
        answer = tuple(ids[0, prompt.shape[1]:].tolist())
        assert answer in CANDIDATES, (trial, answer)


def test_greedy_generation_follows_the_largest_allowed_logit():
    from ctvl.config import DecoderConfig
    from ctvl.models.decoder import build_tiny_decoder

    torch.manual_seed(1)
    model = build_tiny_decoder(DecoderConfig(), vocab_size=10, bos_token_id=8, eos_token_id=EOS, pad_token_id=PAD)
    trie = AnswerTrie(CANDIDATES, EOS)
    prompts = [[8, 6, 7], [8, 7]]
    answers = generate_constrained(model, prompts, trie, PAD)
    for prompt, answer in zip(prompts, answers):
        walk = ()
        while not walk or walk[-1] != EOS:
            allowed = trie.allowed(walk)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt + list(walk)])).logits[0, -1]
            walk += (allowed[int(logits[allowed].argmax())],)
        assert answer == walk and answer in CANDIDATES


def test_two_candidates_with_the_same_tokens_are_refused():
    with pytest.raises(ValueError, match="same ids"):
        AnswerTrie([(1, EOS), (1, EOS)], EOS)


def test_shared_prompt_cache_gives_the_scores_of_full_passes():
    from ctvl.config import DecoderConfig
    from ctvl.models.decoder import build_tiny_decoder

    torch.manual_seed(2)
    model = build_tiny_decoder(DecoderConfig(), vocab_size=10, bos_token_id=8, eos_token_id=EOS, pad_token_id=PAD)
    trie = AnswerTrie(CANDIDATES, EOS)
    prompts = [[8, 6, 7, 6], [8, 7], [8, 6, 6]]  # unequal lengths: right padding under the shared cache
    shared, s_states = score_answers(model, prompts, trie, PAD, batch_size=2, return_states=True)
    full, f_states = score_answers(model, prompts, trie, PAD, batch_size=2, return_states=True, shared_prompt=False)
    np.testing.assert_allclose(shared, full, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(s_states, f_states, rtol=1e-5, atol=1e-6)


def test_text_only_tokenizer_gets_no_image_token(tmp_path):
    """A distillation student's tokenizer keeps the model's vocabulary (no embedding resize, small adapters)."""
    from ctvl.models.tokenizer import load_tokenizer, make_tokenizer

    tok = make_tokenizer(["a patient aged 54", "risk 42"], vocab_size=300, image_token="<img>")
    tok.save_pretrained(tmp_path)
    assert len(load_tokenizer(tmp_path, image_token=None)) == len(tok)
    assert len(load_tokenizer(tmp_path)) == len(tok) + 1  # the VLM's <image> is added
