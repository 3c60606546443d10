"""The language decoder f_phi: a stock Hugging Face causal LM, optionally with LoRA (peft).

Entry points:

* :func:`load_decoder` - any causal LM from a **local** directory (``local_files_only=True``, so the hub
  is never called; a hub id instead of a directory is refused), or, when ``DecoderConfig.path`` is
  None, a random-init tiny ``LlamaForCausalLM`` built from the config's tiny fields.
* :func:`resize_embeddings` - grow the vocabulary for added tokens (``<image>``, pad) with
  deterministic new rows (the mean of the old ones), so that a reload reproduces the same weights.
* :func:`apply_lora` / :func:`merge_lora` - wrap with peft LoRA (``lora.r == 0``: no peft, full
  fine-tuning) and merge the adapter back into plain Linear weights for export.

The decoder is never subclassed: ctvl feeds it ``inputs_embeds`` (LLaVA's pattern without
LLaVA's ``LlamaForCausalLM`` subclass, which broke on new transformers releases).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from ctvl.config import DecoderConfig, LoRAConfig

logger = logging.getLogger(__name__)

_LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ARCH_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_TARGETS,
    "mistral": _LLAMA_TARGETS,
    "qwen2": _LLAMA_TARGETS,
    "qwen3": _LLAMA_TARGETS,
    "gemma": _LLAMA_TARGETS,
    "gemma2": _LLAMA_TARGETS,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
}
"""Attention and MLP projections that receive LoRA, per ``model.config.model_type``."""

_DTYPE_KWARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def build_tiny_decoder(
    cfg: DecoderConfig, vocab_size: int, bos_token_id: int = 1, eos_token_id: int = 2, pad_token_id: int = 3
) -> LlamaForCausalLM:
    """Random-init ``LlamaForCausalLM`` from the tiny fields of ``cfg`` (tests, demo); seed with torch."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
        attn_implementation=cfg.attn_implementation,
    )
    model = LlamaForCausalLM(config)
    return model.to(getattr(torch, cfg.dtype))


def load_decoder(cfg: DecoderConfig, vocab_size: int | None = None) -> PreTrainedModel:
    """The decoder named by ``cfg``: local HF directory, or a tiny random Llama when ``cfg.path`` is None.

    Args:
        cfg: path, dtype, attention kernel, remote-code and checkpointing settings.
        vocab_size: vocabulary of the tiny decoder (``len(tokenizer)``); required when ``cfg.path`` is
            None, ignored otherwise (use :func:`resize_embeddings` after adding tokens).

    Returns:
        PreTrainedModel: a causal LM in train mode; gradient checkpointing on when configured.
    """
    if cfg.path is None:
        if vocab_size is None:
            raise ValueError("decoder.path is None: pass vocab_size to build the tiny random-init decoder")
        model = build_tiny_decoder(cfg, vocab_size)
    else:
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise ValueError(
                f"decoder.path {cfg.path!r} is not a local model directory with config.json "
                "(ctvl loads offline only; download the model first)"
            )
        kwargs = {_DTYPE_KWARG: getattr(torch, cfg.dtype)}
        model = AutoModelForCausalLM.from_pretrained(
            str(path),
            local_files_only=True,
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
            **kwargs,
        )
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    return model


def enable_checkpointing(model: PreTrainedModel) -> None:
    """Per-layer activation checkpointing, non-reentrant (works with frozen embeddings and LoRA)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


@torch.no_grad()
def resize_embeddings(model: PreTrainedModel, num_tokens: int) -> bool:
    """Grow input (and untied output) embeddings to ``num_tokens`` rows; new rows = mean of old rows.

    transformers' default ``mean_resizing`` samples new rows at random, so a model rebuilt from the same
    base would differ; the mean is deterministic. Never shrinks. Returns whether it resized.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if num_tokens <= old:
        return False
    model.resize_token_embeddings(num_tokens, mean_resizing=False)
    embeddings = [model.get_input_embeddings()]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != embeddings[0].weight.data_ptr():
        embeddings.append(out)
    for emb in embeddings:
        emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
    logger.info("resized decoder vocabulary %d -> %d", old, num_tokens)
    return True


def _weight_leaf_names(model: nn.Module) -> set[str]:
    """Last name component of every leaf module with a 2-D weight (Linear, GPT-2's Conv1D), except lm_head."""
    names = set()
    for name, m in model.named_modules():
        weight = getattr(m, "weight", None)
        is_2d = isinstance(weight, torch.Tensor) and weight.dim() == 2
        if name and is_2d and not isinstance(m, nn.Embedding):
            names.add(name.rsplit(".", 1)[-1])
    return names - {"lm_head"}


def lora_target_modules(model: PreTrainedModel, lora_cfg: LoRAConfig) -> list[str]:
    """Linear names that receive LoRA.

    ``lora_cfg.targets`` when all of them exist in ``model`` (so an explicit choice such as q/v only is
    honoured); otherwise the attention + MLP projections of the architecture
    (:data:`ARCH_LORA_TARGETS`, keyed by ``model.config.model_type``).
    """
    present = _weight_leaf_names(model)
    configured = list(lora_cfg.targets)
    if configured and set(configured) <= present:
        return configured
    model_type = getattr(model.config, "model_type", None)
    arch = ARCH_LORA_TARGETS.get(model_type)
    if arch is not None and set(arch) <= present:
        logger.warning(
            "lora.targets %s not all in this %s decoder; using %s", configured, model_type, list(arch)
        )
        return list(arch)
    missing = sorted(set(configured) - present)
    raise ValueError(
        f"lora.targets {missing} not found in the {model_type!r} decoder; "
        f"its projection layers: {sorted(present)}"
    )


def apply_lora(model: PreTrainedModel, lora_cfg: LoRAConfig) -> nn.Module:
    """Wrap ``model`` with peft LoRA (rank, alpha, dropout from ``lora_cfg``); ``r == 0`` returns it as is.

    Returns:
        nn.Module: a ``peft.PeftModelForCausalLM`` whose base weights are frozen, or ``model``.
    """
    if lora_cfg.r == 0:
        logger.info("lora.r = 0: full fine-tuning of the decoder, no LoRA")
        return model
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_target_modules(model, lora_cfg),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft reads transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, peft_cfg, autocast_adapter_dtype=lora_cfg.adapter_dtype == "float32")


def load_lora_adapter(model: PreTrainedModel, adapter_dir: str | Path, adapter_dtype: str = "float32") -> nn.Module:
    """Wrap ``model`` with a saved peft adapter (``save_pretrained`` output), trainable like a new one."""
    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True,
                                         autocast_adapter_dtype=adapter_dtype == "float32")


def compile_layers(model: nn.Module) -> None:
    """``torch.compile`` every decoder layer in place (regional compilation: the layers share one graph)."""
    layers = base_model(model).get_decoder().layers
    for layer in layers:
        layer.compile()
    logger.info("compiled %d decoder layers", len(layers))


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is wrapped by peft."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merge_lora(model: nn.Module) -> PreTrainedModel:
    """Fold LoRA updates into the base weights and drop peft (for export); a plain model passes through."""
    if not is_peft_model(model):
        return model
    return model.merge_and_unload()


def base_model(model: nn.Module) -> PreTrainedModel:
    """The underlying transformers model (unwraps peft)."""
    return model.get_base_model() if is_peft_model(model) else model


def run_with_cache(decoder: nn.Module, cache=None, **inputs):
    """One pass of a transformer ``decoder`` (no LM head) that keeps its key/value cache.

    transformers renamed the cache argument and output field from ``past_key_values`` to ``cache`` (the old
    name warns, and its removal is announced); this passes and reads whichever the installed version uses.

    Args:
        decoder: e.g. ``LlamaModel`` (``base_model(model).get_decoder()``).
        cache: a cache from an earlier call to continue from, or None to start one.
        inputs: the forward's other keyword arguments (``inputs_embeds``, ``attention_mask``, ...).

    Returns:
        (last_hidden_state ``(B, L, D)``, the cache after this pass).
    """
    name = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    if cache is not None:
        inputs[name] = cache
    out = decoder(use_cache=True, **inputs)
    return out.last_hidden_state, getattr(out, name)
