"""The shared-prefix ensemble gives the risks of independent full ``CTVLModel.forward`` passes."""

import pandas as pd
import pytest
import torch

from ctvl.data.clinical_text import build_clinical_texts, load_clinical_template
from ctvl.data.feature_cache import load_features
from ctvl.data.prompts import build_example, collate_examples
from ctvl.infer.inputs import resolve_questions
from ctvl.infer.prefix import encode_question_prompts, score_questions, split_shared_prefix
from ctvl.models.ctvl import CTVLModel
from ctvl.models.decoder import is_peft_model
from ctvl.models.projector import num_image_tokens

QUESTIONS = [text for _, text in resolve_questions()]


def _batch(cohort, template, n=3):
    manifest = pd.read_csv(cohort.manifest, dtype={"case_id": str}).head(n)
    contexts = build_clinical_texts(manifest, load_clinical_template(template)).tolist()
    feats = torch.stack([torch.from_numpy(load_features(cohort.feature_cache, c).astype("float32"))
                         for c in manifest["case_id"]])  # (B, C, x, y, z)
    return feats, contexts


def _forward_risks(model, feats, contexts, n_img):
    """One independent ``model.forward`` per (case, question): the reference."""
    risks = torch.empty(len(contexts), len(QUESTIONS))
    for b, ctx in enumerate(contexts):
        for j, q in enumerate(QUESTIONS):
            example = build_example(model.tokenizer, q, None, ctx, n_img)
            batch = collate_examples([example], model.tokenizer.pad_token_id)
            with torch.no_grad():
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            image_features=feats[b:b + 1])
            risks[b, j] = out.risk[0]
    return risks


@pytest.mark.parametrize("head", ["cox", "discrete"])
@pytest.mark.parametrize("with_context", [True, False])
def test_shared_prefix_equals_full_passes(cohort, cox_model, deephit_model, template, head, with_context):
    model = CTVLModel.from_pretrained(cox_model if head == "cox" else deephit_model)
    assert is_peft_model(model.decoder) and model.cfg.survival.head == head
    feats, contexts = _batch(cohort, template)
    contexts = contexts if with_context else [None] * len(contexts)
    contexts[1] = None  # a case without clinical data next to cases with it
    n_img = num_image_tokens(model.cfg.projector, feats.shape)
    shared = score_questions(model, QUESTIONS, contexts, num_image_tokens=n_img, image_features=feats)
    plain = score_questions(model, QUESTIONS, contexts, num_image_tokens=n_img, image_features=feats,
                            shared_prefix=False)
    reference = _forward_risks(model, feats, contexts, n_img)
    assert shared.risk.shape == (3, len(QUESTIONS))
    assert reference.std() > 1e-3  # the questions and cases really differ
    torch.testing.assert_close(shared.risk, reference, rtol=0, atol=1e-4)
    torch.testing.assert_close(plain.risk, reference, rtol=0, atol=1e-4)
    torch.testing.assert_close(shared.z_surv, plain.z_surv, rtol=0, atol=1e-4)
    if head == "discrete":
        torch.testing.assert_close(shared.surv, plain.surv, rtol=0, atol=1e-5)
        assert bool((shared.surv[..., 1:] <= shared.surv[..., :-1] + 1e-7).all())


def test_shared_prefix_holds_context_and_image_tokens(cox_model, template):
    model = CTVLModel.from_pretrained(cox_model)
    prompts = encode_question_prompts(model.tokenizer, QUESTIONS, "A 64 year-old male.", 3)
    prefix, suffixes = split_shared_prefix(prompts)
    assert prefix.count(model.image_token_id) == 3
    assert all(p == prefix + s for p, s in zip(prompts, suffixes))
    assert len({tuple(s[:1]) for s in suffixes}) > 1  # the suffixes start where the questions differ
