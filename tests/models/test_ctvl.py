"""CTVLModel: forward/backward on both heads, image-token merge, loss composition, save/load, LoRA merge."""

import dataclasses
import json

import pytest
import torch

from ctvl.config import IGNORE_INDEX, CTVLConfig, DecoderConfig, LoRAConfig, SurvivalConfig, VisionConfig
from ctvl.data.prompts import build_example, collate_examples
from ctvl.models.ctvl import CTVLModel, build_ctvl_model, compute_deephit_risk, compute_lm_loss, pool_hidden
from ctvl.models.decoder import is_peft_model
from ctvl.models.tokenizer import make_tokenizer
from ctvl.models.vision3d import MERLIN_IMAGE_PREFIX, build_image_encoder

CORPUS = [
    "No pleural effusion. The lungs are clear.",
    "A 3 cm nodule in the right upper lobe.",
    "Mediastinal lymph nodes are enlarged, 12 mm.",
    "64-year-old male former smoker, stage 1.",
] * 8
VISION = VisionConfig(layers=(1, 1, 1, 1), base_width=8)
N_IMG = 1  # a (32, 32, 32) volume gives a (1, 1, 2) map -> 1 token after the mean over z


def tiny_config(head="cox", r=4, **survival) -> CTVLConfig:
    return CTVLConfig(
        vision=VISION,
        decoder=DecoderConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64),
        lora=LoRAConfig(r=r, alpha=8),
        survival=SurvivalConfig(head=head, num_bins=4, adapter_hidden=16, **survival),
    )


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(CORPUS, vocab_size=400)


def make_batch(tok, n_img=N_IMG, seed=0):
    g = torch.Generator().manual_seed(seed)
    examples = [
        build_example(tok, "Is there effusion?", "No pleural effusion.", "64-year-old male.", n_img),
        build_example(tok, "Nodule?", "A 3 cm nodule in the right upper lobe.", None, n_img),
        build_example(tok, "Lymph nodes?", "Mediastinal lymph nodes are enlarged.", "Stage 1.", n_img),
    ]
    batch = collate_examples(examples, tok.pad_token_id)
    batch["image"] = torch.rand(3, 1, 32, 32, 32, generator=g)
    return batch


def survival_targets(head):
    event = torch.tensor([True, False, True])
    if head == "cox":
        return {"event": event, "time": torch.tensor([2.0, 5.0, 7.0])}
    return {"event": event, "bin_index": torch.tensor([0, 2, 3])}


def build(tok, cfg, seed=0):
    torch.manual_seed(seed)
    return build_ctvl_model(cfg, tok)


def perturb_lora(model):
    with torch.no_grad():  # LoRA B starts at zero; give the adapter an effect
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)


@pytest.mark.parametrize("head", ["cox", "discrete"])
def test_forward_backward(tok, head):
    model = build(tok, tiny_config(head))
    model.train()
    batch = make_batch(tok)
    out = model(**batch, **survival_targets(head))
    B, L = batch["input_ids"].shape
    assert out.logits.shape == (B, L, len(tok)) and out.hidden.shape == (B, L, 32)
    assert out.risk.shape == (B,) and out.z_surv.shape == (B, 32)
    if head == "cox":
        assert out.pmf is None and torch.equal(out.risk, out.log_hz)
    else:
        assert out.log_hz is None and out.pmf.shape == (B, 4) and (out.pmf.sum(1) < 1).all()
    s = model.cfg.survival
    expected = out.lm_loss + s.alpha * (out.surv_loss + s.dispersion_weight * out.disp_loss
                                        + s.alignment_weight * out.align_loss)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in grads) and all(g is not None for g in grads.values())
    assert not any(n.startswith("vision.") for n in grads)  # frozen encoder
    assert grads["projector.weight"].abs().sum() > 0 and grads["survival.head.out.weight"].abs().sum() > 0
    assert not model.vision.training  # a frozen encoder stays in eval under model.train()


def test_bfloat16_model_trains(tok):
    # DeepSpeed's bf16 mode casts every submodule (encoder, projector, survival branch) to bfloat16.
    model = build(tok, tiny_config("discrete")).to(torch.bfloat16).train()
    out = model(**make_batch(tok), **survival_targets("discrete"))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.risk.dtype == torch.float32 and out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert model.survival.head.out.weight.grad.abs().sum() > 0


def test_lm_loss_equals_transformers_loss(tok):
    model = build(tok, tiny_config()).eval()
    batch = make_batch(tok)
    with torch.no_grad():
        out = model(**batch)
        embeds = model.embed_inputs(batch["input_ids"], batch["image"])
        mask, labels = batch["attention_mask"], batch["labels"]
        ref = model.decoder(inputs_embeds=embeds, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.lm_loss, ref.loss)
    assert out.surv_loss is None and out.loss is out.lm_loss


def test_lm_loss_without_labelled_tokens_is_zero_not_nan():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    loss = compute_lm_loss(logits, torch.full((2, 5), IGNORE_INDEX))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_no_targets_no_loss(tok):
    model = build(tok, tiny_config()).eval()
    batch = make_batch(tok)
    del batch["labels"]
    with torch.no_grad():
        out = model(**batch)
    assert out.loss is None and out.lm_loss is None and out.risk.shape == (3,)


def test_visual_tokens_land_on_image_positions(tok):
    model = build(tok, tiny_config()).eval()
    batch = make_batch(tok, n_img=N_IMG)
    with torch.no_grad():
        feats = model.get_image_features(batch["image"])  # (B, N, D)
        embeds = model.embed_inputs(batch["input_ids"], batch["image"])
        text = model.decoder.get_input_embeddings()(batch["input_ids"])
    mask = batch["input_ids"] == model.image_token_id
    assert feats.shape == (3, N_IMG, 32)
    torch.testing.assert_close(embeds[mask], feats.reshape(-1, 32))
    torch.testing.assert_close(embeds[~mask], text[~mask])


def test_image_token_mismatch_raises(tok):
    model = build(tok, tiny_config()).eval()
    batch = make_batch(tok, n_img=2)
    with pytest.raises(ValueError, match=r"image tokens 6 != image features 3"):
        model(**batch)
    batch = make_batch(tok)
    del batch["image"]
    with pytest.raises(ValueError, match="neither image nor image_features"):
        model(**batch)


def test_precomputed_features_match_images(tok):
    model = build(tok, tiny_config()).eval()
    batch = make_batch(tok)
    image = batch.pop("image")
    with torch.no_grad():
        ref = model(image=image, **batch)
        fmap = model.vision(image)  # (B, C, x, y, z)
        from_map = model(image_features=fmap, **batch)
        from_tokens = model(image_features=fmap.mean(-1).flatten(2).transpose(1, 2), **batch)
    for out in (from_map, from_tokens):
        torch.testing.assert_close(out.logits, ref.logits)
        torch.testing.assert_close(out.risk, ref.risk)


@pytest.mark.parametrize("pooling", ["last_prompt", "last", "mean_answer", "mean_all"])
def test_hidden_pooling(pooling):
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7]])
    expected = {"last_prompt": [0.0, 6.0], "last": [2.0, 7.0], "mean_answer": [1.5, 7.0], "mean_all": [1.0, 5.5]}[pooling]
    assert pool_hidden(hidden, mask, labels, pooling)[:, 0].tolist() == expected


def test_last_prompt_risk_does_not_depend_on_the_answer(tok):
    """Training (prompt + answer, labels) and inference (prompt only) read the same hidden state."""
    model = build(tok, tiny_config(pooling="last_prompt")).eval()
    fmap = torch.randn(1, model.vision.out_channels, 2, 2, 2)
    from ctvl.data.prompts import build_example
    from ctvl.models.projector import num_image_tokens

    k = num_image_tokens(model.cfg.projector, fmap.shape)
    full = build_example(tok, "Is there an effusion?", "Small left effusion.", "70-year-old male.", k)
    prompt = build_example(tok, "Is there an effusion?", None, "70-year-old male.", k)
    with torch.no_grad():
        a = model(image_features=fmap, **{key: v[None] for key, v in full.items()})
        b = model(image_features=fmap, input_ids=prompt["input_ids"][None], attention_mask=prompt["attention_mask"][None])
    torch.testing.assert_close(a.risk, b.risk, rtol=1e-5, atol=1e-6)


def test_mean_answer_pooling_needs_labels(tok):
    model = build(tok, tiny_config(pooling="mean_answer")).eval()
    batch = make_batch(tok)
    del batch["labels"]
    with pytest.raises(ValueError, match="needs labels"):
        model(**batch)


def test_deephit_risk_is_k_minus_expected_bin():
    pmf = torch.tensor([[0.5, 0.3, 0.1], [0.0, 0.1, 0.2]])  # rest beyond the last cut (bin 3)
    full = torch.cat([pmf, 1 - pmf.sum(1, keepdim=True)], 1)
    expected_bin = (full * torch.arange(4.0)).sum(1)
    torch.testing.assert_close(compute_deephit_risk(pmf), 3 - expected_bin)


def test_batched_generation_matches_single_forward(tok):
    model = build(tok, tiny_config()).eval()
    prompts = (("Nodule?", None), ("Is there effusion?", "Male."))
    examples = [build_example(tok, q, None, c, N_IMG) for q, c in prompts]
    batch = collate_examples(examples, tok.pad_token_id, padding_side="left")
    image = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    new = model.generate(ids, mask, image=image, max_new_tokens=3, do_sample=False)
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 3
    for i, ex in enumerate(examples):  # first greedy token == argmax after the unpadded prompt
        with torch.no_grad():
            logits = model(image=image[i : i + 1], input_ids=ex["input_ids"][None]).logits
        assert new[i, 0] == logits[0, -1].argmax()


def _outputs(model, batch):
    with torch.no_grad():
        return model(**batch)


@pytest.mark.parametrize("head,r", [("cox", 4), ("discrete", 0)])
def test_save_load_gives_identical_outputs(tok, tmp_path, head, r):
    model = build(tok, tiny_config(head, r=r))
    perturb_lora(model)
    with torch.no_grad():
        model.survival.adapter.up.weight.normal_()  # non-identity adapter
    model.eval()
    batch = make_batch(tok)
    ref = _outputs(model, batch)
    model.save_pretrained(tmp_path / "ckpt")
    manifest = json.loads((tmp_path / "ckpt" / "ctvl_model.json").read_text())
    assert manifest["vision"] == "vision.safetensors" and manifest["decoder"] == "decoder"
    assert (manifest["decoder_adapter"] is not None) == (r > 0)
    loaded = CTVLModel.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training and is_peft_model(loaded.decoder) == (r > 0)
    assert loaded.cfg == model.cfg
    out = _outputs(loaded, batch)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.risk, ref.risk, rtol=0, atol=0)


def test_merged_model_saves_without_adapter(tok, tmp_path):
    model = build(tok, tiny_config())
    perturb_lora(model)
    model.eval()
    batch = make_batch(tok)
    unmerged = _outputs(model, batch)
    model.merge_lora()
    assert not is_peft_model(model.decoder)
    merged = _outputs(model, batch)
    torch.testing.assert_close(merged.logits, unmerged.logits, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path / "merged")
    assert not (tmp_path / "merged" / "decoder_adapter").exists()
    loaded = CTVLModel.from_pretrained(tmp_path / "merged")
    assert not is_peft_model(loaded.decoder)
    torch.testing.assert_close(_outputs(loaded, batch).logits, merged.logits, rtol=0, atol=0)


def test_frozen_merlin_encoder_is_rebuilt_from_its_checkpoint(tok, tmp_path):
    torch.manual_seed(3)
    enc = build_image_encoder(VISION)
    state = {MERLIN_IMAGE_PREFIX + k: v for k, v in enc.state_dict().items()}
    state["logit_scale"] = torch.tensor(1.0)
    torch.save(state, tmp_path / "merlin.pt")
    vision = dataclasses.replace(VISION, checkpoint=str(tmp_path / "merlin.pt"))
    cfg = dataclasses.replace(tiny_config(), vision=vision)
    model = build(tok, cfg).eval()
    for k, v in enc.state_dict().items():
        assert torch.equal(model.vision.state_dict()[k], v)
    batch = make_batch(tok)
    ref = _outputs(model, batch)
    model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "vision.safetensors").exists()
    (tmp_path / "merlin.pt").rename(tmp_path / "moved.pt")
    with pytest.raises(ValueError, match="does not exist"):
        CTVLModel.from_pretrained(tmp_path / "ckpt")
    loaded = CTVLModel.from_pretrained(tmp_path / "ckpt", vision_checkpoint=tmp_path / "moved.pt")
    torch.testing.assert_close(_outputs(loaded, batch).risk, ref.risk, rtol=0, atol=0)


def test_from_pretrained_refuses_other_directories(tmp_path):
    with pytest.raises(ValueError, match="ctvl_model.json"):
        CTVLModel.from_pretrained(tmp_path)


@pytest.mark.gpu
def test_cuda_bfloat16_forward_backward(tok):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cpu = build(tok, tiny_config()).eval()
    model = build(tok, tiny_config()).to("cuda", torch.bfloat16).train()
    batch = make_batch(tok)
    targets = survival_targets("cox")
    out = model(**{k: v.cuda() for k, v in {**batch, **targets}.items()})
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.projector.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # same weights (same seed): bf16 on the GPU close to float32 on the CPU
        gpu_risk = model(**{k: v.cuda() for k, v in batch.items()}).risk.cpu()
        cpu_risk = cpu(**batch).risk
    torch.testing.assert_close(gpu_risk, cpu_risk, atol=0.1, rtol=0.1)
