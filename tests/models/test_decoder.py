"""Decoder loading (offline), embedding resize, LoRA targets, LoRA merge, tokenizers."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from ctvl.config import DecoderConfig, LoRAConfig, replace
from ctvl.models.decoder import (
    apply_lora,
    build_tiny_decoder,
    is_peft_model,
    load_decoder,
    lora_target_modules,
    merge_lora,
    resize_embeddings,
)
from ctvl.models.tokenizer import add_missing_tokens, load_tokenizer, make_tokenizer

TINY = DecoderConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
CORPUS = ["No pleural effusion. The lungs are clear.", "A 3 cm nodule in the right upper lobe."] * 8


def _ids(vocab: int = 96) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(0))


def test_tiny_decoder_follows_config():
    torch.manual_seed(0)
    model = load_decoder(TINY, vocab_size=96)
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size, c.vocab_size) == (
        32, 2, 4, 64, 96)
    assert model(_ids()).logits.shape == (2, 9, 96)
    with pytest.raises(ValueError, match="vocab_size"):
        load_decoder(TINY)


def test_local_directory_loads_and_hub_ids_are_refused(tmp_path):
    torch.manual_seed(0)
    model = build_tiny_decoder(TINY, vocab_size=96).eval()
    model.save_pretrained(tmp_path / "llama")
    loaded = load_decoder(DecoderConfig(path=str(tmp_path / "llama"), attn_implementation="eager")).eval()
    assert loaded.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(loaded(_ids()).logits, model(_ids()).logits)
    with pytest.raises(ValueError, match="not a local model directory"):
        load_decoder(DecoderConfig(path="StanfordAIMI/RadLLaMA-7b"))


def test_bf16_and_gradient_checkpointing_from_config():
    model = load_decoder(DecoderConfig(hidden_size=32, intermediate_size=64, dtype="bfloat16",
                                       gradient_checkpointing=True), vocab_size=64)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.gradient_checkpointing and not model.config.use_cache


def test_resize_embeddings_is_deterministic_and_never_shrinks():
    torch.manual_seed(0)
    model = build_tiny_decoder(TINY, vocab_size=96)
    old_in = model.get_input_embeddings().weight.detach().clone()
    assert resize_embeddings(model, 98)
    new_in = model.get_input_embeddings().weight
    assert new_in.shape == (98, 32)
    torch.testing.assert_close(new_in[:96], old_in)
    torch.testing.assert_close(new_in[96:], old_in.mean(0, keepdim=True).expand(2, -1))
    assert model.get_output_embeddings().weight.shape == (98, 32)
    assert not resize_embeddings(model, 50) and new_in.shape[0] == 98


def test_lora_targets_per_architecture():
    llama = build_tiny_decoder(TINY, vocab_size=64)
    assert lora_target_modules(llama, LoRAConfig()) == list(LoRAConfig().targets)
    assert lora_target_modules(llama, LoRAConfig(targets=("q_proj", "v_proj"))) == ["q_proj", "v_proj"]
    qwen = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    assert set(lora_target_modules(qwen, LoRAConfig(targets=("Wqkv",)))) == set(LoRAConfig().targets)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(ValueError, match="not found in the 'gpt2' decoder"):
        lora_target_modules(gpt2, LoRAConfig())
    assert lora_target_modules(gpt2, LoRAConfig(targets=("c_attn",))) == ["c_attn"]


def test_lora_trains_only_adapters_with_the_expected_count():
    r, d, i, layers = 4, 32, 64, 2
    model = apply_lora(build_tiny_decoder(TINY, vocab_size=64), LoRAConfig(r=r, alpha=8))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    per_layer = 4 * r * (d + d) + 2 * r * (d + i) + r * (i + d)  # q,k,v,o + gate,up + down
    assert sum(trainable.values()) == layers * per_layer


@pytest.mark.parametrize("adapter_dtype, expected", [("float32", torch.float32), ("decoder", torch.bfloat16)])
def test_lora_adapter_dtype(adapter_dtype, expected):
    model = apply_lora(load_decoder(replace(TINY, dtype="bfloat16"), vocab_size=96),
                       LoRAConfig(r=4, alpha=8, adapter_dtype=adapter_dtype))
    dtypes = {p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert dtypes == {expected}
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16}


def test_rank_zero_means_full_fine_tuning():
    model = build_tiny_decoder(TINY, vocab_size=64)
    out = apply_lora(model, LoRAConfig(r=0))
    assert out is model and not is_peft_model(out)
    assert all(p.requires_grad for p in out.parameters())


def test_merged_lora_logits_equal_unmerged():
    torch.manual_seed(0)
    model = apply_lora(build_tiny_decoder(TINY, vocab_size=96), LoRAConfig(r=4, alpha=8, dropout=0.1)).eval()
    with torch.no_grad():
        base = model.get_base_model()
        with model.disable_adapter():
            plain = model(_ids()).logits
        for n, p in model.named_parameters():
            if "lora_B" in n:  # B starts at zero: make the adapter matter
                p.normal_(0, 0.5)
        unmerged = model(_ids()).logits
        merged_model = merge_lora(model)
        merged = merged_model(_ids()).logits
    assert merged_model is base and not is_peft_model(merged_model)
    assert not any("lora_" in n for n, _ in merged_model.named_parameters())
    assert not torch.allclose(plain, unmerged, atol=1e-3)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_made_tokenizer_round_trips_and_keeps_special_tokens(tmp_path):
    tok = make_tokenizer(CORPUS, vocab_size=300)
    ids = tok("lungs <image><image> clear").input_ids
    image_id = tok.convert_tokens_to_ids("<image>")
    assert ids[0] == tok.bos_token_id and ids.count(image_id) == 2
    assert {tok.unk_token, tok.bos_token, tok.eos_token, tok.pad_token} == {"<unk>", "<s>", "</s>", "<pad>"}
    tok.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert len(again) == len(tok) and again("lungs <image><image> clear").input_ids == ids
    assert again.decode(ids, skip_special_tokens=True) == "lungs  clear"


def test_load_tokenizer_adds_image_and_pad_when_missing(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=280, special_tokens=["<unk>", "</s>"],
                                                        show_progress=False))
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>")
    plain.save_pretrained(tmp_path / "llama_like")
    tok = load_tokenizer(tmp_path / "llama_like")
    assert len(tok) == len(plain) + 2
    assert tok.pad_token == "<pad>" and tok.convert_tokens_to_ids("<image>") == len(plain)
    assert add_missing_tokens(tok) == 0
    with pytest.raises(ValueError, match="not a local directory"):
        load_tokenizer("meta-llama/Llama-2-7b-hf")


class _Out:
    def __init__(self, hidden, **cache):
        self.last_hidden_state = hidden
        for k, v in cache.items():
            setattr(self, k, v)


class _NewDecoder(torch.nn.Module):
    """transformers >= 5.25: the argument and output field are ``cache``; ``past_key_values`` would warn."""

    def forward(self, inputs_embeds=None, cache=None, use_cache=None, **kwargs):
        assert "past_key_values" not in kwargs
        return _Out(inputs_embeds, cache=(cache or []) + [inputs_embeds.shape[1]])


class _OldDecoder(torch.nn.Module):
    def forward(self, inputs_embeds=None, past_key_values=None, use_cache=None, **kwargs):
        return _Out(inputs_embeds, past_key_values=(past_key_values or []) + [inputs_embeds.shape[1]])


@pytest.mark.parametrize("decoder", [_NewDecoder(), _OldDecoder()], ids=["cache", "past_key_values"])
def test_run_with_cache_passes_the_cache_under_the_installed_name(decoder):
    from ctvl.models.decoder import run_with_cache

    hidden, cache = run_with_cache(decoder, inputs_embeds=torch.zeros(1, 3, 2))
    assert hidden.shape == (1, 3, 2) and cache == [3]
    _, cache = run_with_cache(decoder, cache, inputs_embeds=torch.zeros(1, 2, 2))
    assert cache == [3, 2]
