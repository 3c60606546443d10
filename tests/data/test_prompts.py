"""Prompt layout, <image> expansion, label masking and padding."""

import pytest
import torch

from ctvl.config import IGNORE_INDEX
from ctvl.data.prompts import (
    build_example,
    collate_examples,
    encode_prompt,
    expand_image_tokens,
    format_prompt,
)
from ctvl.models.tokenizer import make_tokenizer

CORPUS = [
    "No pleural effusion. The lungs are clear.",
    "A 3 cm nodule in the right upper lobe.",
    "Mediastinal lymph nodes are enlarged, 12 mm.",
    "64-year-old male former smoker, stage 1.",
] * 8
Q, A, CTX = "Is there any pleural involvement or effusion?", "No pleural effusion.", "64-year-old male."


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(CORPUS, vocab_size=400)


@pytest.mark.parametrize("n", [1, 49])
def test_image_token_expanded_to_one_contiguous_block(tok, n):
    ex = build_example(tok, Q, A, CTX, num_image_tokens=n)
    image_id = tok.convert_tokens_to_ids("<image>")
    where = (ex["input_ids"] == image_id).nonzero().flatten()
    assert len(where) == n
    assert torch.equal(where, torch.arange(where[0], where[0] + n))
    assert (ex["labels"][where] == IGNORE_INDEX).all()


def test_only_answer_and_eos_are_labelled(tok):
    ex = build_example(tok, Q, A, CTX, num_image_tokens=5)
    labelled = ex["labels"] != IGNORE_INDEX
    first = int(labelled.nonzero()[0])
    assert labelled[first:].all() and not labelled[:first].any()  # one block at the end
    assert torch.equal(ex["labels"][labelled], ex["input_ids"][labelled])
    assert ex["labels"][-1] == tok.eos_token_id
    assert tok.decode(ex["labels"][labelled][:-1]).strip() == A
    prompt_text = tok.decode(ex["input_ids"][:first], skip_special_tokens=True)
    assert prompt_text.endswith("\nQuestion: " + Q + "\nAnswer:")
    assert ex["input_ids"][0] == tok.bos_token_id and ex["attention_mask"].all()


def test_generation_prompt_is_a_prefix_of_the_training_ids(tok):
    prompt = encode_prompt(tok, Q, CTX, num_image_tokens=7)
    ex = build_example(tok, Q, A, CTX, num_image_tokens=7)
    assert ex["input_ids"][: len(prompt)].tolist() == prompt
    assert int((ex["labels"] == IGNORE_INDEX).sum()) == len(prompt)
    gen = build_example(tok, Q, None, CTX, num_image_tokens=7)
    assert gen["input_ids"].tolist() == prompt and (gen["labels"] == IGNORE_INDEX).all()


def test_template_with_and_without_context():
    assert format_prompt(Q, CTX) == f"{CTX}\n<image>\nQuestion: {Q}\nAnswer:"
    assert format_prompt(Q) == f"<image>\nQuestion: {Q}\nAnswer:"
    assert expand_image_tokens(format_prompt(Q), 3).count("<image>") == 3
    with pytest.raises(ValueError, match="exactly once"):
        expand_image_tokens("no image here", 3)


def test_image_token_in_user_text_is_refused(tok):
    with pytest.raises(ValueError, match="must not contain"):
        build_example(tok, "What is <image>?", A, CTX, num_image_tokens=2)


def test_max_length_truncates_the_answer_never_the_prompt(tok):
    prompt_len = len(encode_prompt(tok, Q, CTX, num_image_tokens=10))
    ex = build_example(tok, Q, A, CTX, num_image_tokens=10, max_length=prompt_len + 2)
    assert len(ex["input_ids"]) == prompt_len + 2
    assert int((ex["labels"] != IGNORE_INDEX).sum()) == 2
    with pytest.raises(ValueError, match="> max_length"):
        build_example(tok, Q, A, CTX, num_image_tokens=10, max_length=prompt_len)


def test_collate_right_pads(tok):
    short = build_example(tok, "Nodule?", "No.", None, num_image_tokens=3)
    long = build_example(tok, Q, A, CTX, num_image_tokens=3)
    batch = collate_examples([short, long], tok.pad_token_id, pad_to_multiple_of=8)
    n = len(short["input_ids"])
    length = batch["input_ids"].shape[1]
    assert length % 8 == 0 and length >= len(long["input_ids"])
    assert torch.equal(batch["input_ids"][0, :n], short["input_ids"])
    assert (batch["input_ids"][0, n:] == tok.pad_token_id).all()
    assert (batch["attention_mask"][0, n:] == 0).all() and batch["attention_mask"][0, :n].all()
    assert (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert batch["attention_mask"].sum(1).tolist() == [n, len(long["input_ids"])]


def test_collate_left_pads_for_generation(tok):
    short = build_example(tok, "Nodule?", None, None, num_image_tokens=3)
    long = build_example(tok, Q, None, CTX, num_image_tokens=3)
    batch = collate_examples([short, long], tok.pad_token_id, padding_side="left")
    n, length = len(short["input_ids"]), batch["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][0, length - n :], short["input_ids"])
    assert (batch["input_ids"][0, : length - n] == tok.pad_token_id).all()
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][0, : length - n].any()


def test_tokenizer_without_image_token_is_refused():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=280, special_tokens=["<unk>", "</s>"],
                                                        show_progress=False))
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>")
    with pytest.raises(ValueError, match="has no '<image>' token"):
        build_example(plain, Q, A, num_image_tokens=2)
