"""Parameter counts and a GPU memory plan for ctvl's real model (Merlin ResNet-152 + Llama-2-7B + LoRA).

Run:
    python scripts/memory_plan.py                      # configs/model/merlin_radllama7b.yaml, 2 GPUs
    python scripts/memory_plan.py --gpus 8 --lora-r 128 --micro-batch 4 --seq-len 512
    python scripts/memory_plan.py --quick               # seconds; used by tests/test_memory_plan.py

Prints markdown tables:

1. Parameter counts (total / trainable). The real model is built on the ``meta`` device (no memory, no
   weights): the Merlin I3D ResNet-152, ``Linear(2048, 4096)``, a Llama-2-7B-shaped ``LlamaForCausalLM``
   (hidden 4096, 32 layers, 32 heads, intermediate 11008, vocab 32000 + ``<image>`` + pad) wrapped with peft
   LoRA from the config, and the survival branch. Trainable sets follow the paper: stage 1 = projector +
   LoRA, stage 2 = LoRA + survival adapter/head. The tiny configuration is built for real and counted.
2. Model-state memory per GPU for ZeRO stages 0-3 (bf16 mixed precision, Adam). DeepSpeed's own
   estimators (``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs``, the
   functions behind ``*_all_cold``) assume every parameter is trained: they give the full fine-tuning
   column. With LoRA only ``P_t`` parameters carry gradients and optimizer states, so ctvl applies the same
   estimators to ``P_t`` and adds 2 bytes per frozen bf16 parameter ``P_f`` (replicated for ZeRO 0-2,
   partitioned over the N GPUs for ZeRO-3). DeepSpeed has no stage-0/1 estimator; those rows use
   ``2P + 18P_t`` (0) and ``2P + 2P_t + 16P_t/N`` (1), DeepSpeed's 18 bytes/trainable parameter split as
   2 (bf16 grad) + 16 (fp32 grad, fp32 master weight, Adam m and v).
3. Activation memory of one micro-batch (default 12 = the paper's local batch) of ``s`` tokens
   (``N_img`` visual + text), bf16, memory-efficient/flash SDPA, per decoder layer and token (bytes):

   * full fine-tuning:          ``A = 26.125 h + 8 I``
   * LoRA, dropout 0:           ``A = 22.125 h + 8 I + 14 r``
   * LoRA, dropout > 0:         ``A = 34.125 h + 9 I + 14 r``

   from what autograd keeps in a Llama layer: RMSNorm fp32 input (4h, twice), its bf16 output when its
   weight trains (2h, twice), Linear inputs of trained layers (2h qkv, 2h o, 2h gate/up, 2I down), RoPE'd
   q, k and v plus the SDPA output (8h), SiLU input, SiLU output and up output (6I), cos/sin (0.125h); a LoRA
   dropout > 0 stores its bool mask (1 byte) and its output (2 bytes) per input element of each adapted
   Linear (q, k, v, o, gate, up: 6 x 3h; down: 3I) instead of the frozen Linear's input, and lora_A's
   output (2r, 7 modules). The LM head peaks at ``10 V + 4 h`` per token (bf16 logits, their fp32 copy and
   the fp32 log-softmax; ``8 h`` when the head trains). Without checkpointing the decoder peaks at
   ``b s (L A + 10V + 4h)``; with HF per-layer checkpointing it keeps each layer's input (``2 h`` per token
   and layer) and recomputes one layer at a time: ``b s (2 h L + A + 10V + 4h)``.
   The frozen encoder runs without autograd; its transient forward peak is simulated on the meta device by
   tracking live tensors (stem conv + BatchNorm outputs dominate at 224 x 224 x 160).

   Checked with ``--measure-cuda`` on an H100 (random weights, LoRA r=16, dropout 0.05), estimate / measured
   peak above the weights: micro-batch 12 x 256 tokens 22.85 / 23.26 GiB without checkpointing and
   2.40 / 2.05 GiB with it; 4 x 1024 tokens 30.47 / 31.19 and 3.20 / 2.74 GiB; encoder (12 volumes)
   6.46 / 6.46 GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import sys
import time
import weakref
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctvl.config import CTVLConfig, load_config  # noqa: E402
from ctvl.models.ctvl import SurvivalBranch, build_ctvl_model  # noqa: E402
from ctvl.models.decoder import apply_lora  # noqa: E402
from ctvl.models.projector import build_projector, num_image_tokens  # noqa: E402
from ctvl.models.vision3d import random_image_encoder, compute_feature_shape  # noqa: E402

GiB = 2**30
LLAMA2_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008,
                 vocab_size=32000)
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "model" / "merlin_radllama7b.yaml"


def count(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def largest_layer(module: nn.Module) -> int:
    """Largest number of parameters owned directly by one module (DeepSpeed's ``largest_layer_params``)."""
    return max(sum(p.numel() for p in m.parameters(recurse=False)) for m in module.modules())


def build_real_parts(cfg: CTVLConfig, added_tokens: int = 2) -> dict[str, nn.Module]:
    """The real model's parts on the meta device (LoRA from ``cfg.lora``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = dict(LLAMA2_7B, vocab_size=LLAMA2_7B["vocab_size"] + added_tokens)
    with torch.device("meta"):
        vision = random_image_encoder(cfg.vision)
        decoder = LlamaForCausalLM(LlamaConfig(**llama, num_key_value_heads=32, tie_word_embeddings=False))
        decoder = apply_lora(decoder, cfg.lora)
        projector = build_projector(cfg.projector, vision.out_channels, llama["hidden_size"])
        survival = SurvivalBranch(cfg.survival, llama["hidden_size"])
    return {"vision": vision, "projector": projector, "decoder": decoder, "survival": survival}


def stage_trainable(parts: dict[str, nn.Module]) -> dict[str, int]:
    """Trainable parameters per stage: 1 = projector + LoRA (or the full decoder), 2 = LoRA + survival."""
    _, dec_t = count(parts["decoder"])
    return {"stage 1": count(parts["projector"])[0] + dec_t, "stage 2": dec_t + count(parts["survival"])[0]}


def model_state_rows(total: int, trainable: int, largest: int, gpus: int, nodes: int) -> list[tuple]:
    """(stage, full fine-tuning bytes, ctvl LoRA-aware bytes) per GPU, no offload."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n = gpus * nodes
    frozen = total - trainable

    def z2(p):
        return estimate_zero2_model_states_mem_needs(p, gpus, nodes, cpu_offload=False)[1]

    def z3(p):
        return estimate_zero3_model_states_mem_needs(p, largest, gpus, nodes, cpu_offload=False,
                                                     cpu_offload_params=False)[1]

    return [
        ("ZeRO-0 (DDP)", 20 * total, 2 * total + 18 * trainable),
        ("ZeRO-1", 4 * total + 16 * total / n, 2 * total + 2 * trainable + 16 * trainable / n),
        ("ZeRO-2", z2(total), z2(trainable) + 2 * frozen),
        ("ZeRO-3", z3(total), z3(trainable) + 2 * frozen / n),
    ]


def deepspeed_tables(total: int, largest: int, gpus: int, nodes: int) -> str:
    """DeepSpeed's printed ``*_all_cold`` tables (full fine-tuning of ``total`` parameters)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        estimate_zero2_model_states_mem_needs_all_cold(total, gpus, nodes)
        estimate_zero3_model_states_mem_needs_all_cold(total, largest, gpus, nodes)
    return buf.getvalue()


def decoder_layer_bytes_per_token(h: int, inter: int, lora_r: int, lora_dropout: float) -> float:
    """Activation bytes autograd keeps per token in one Llama layer (formulas in the module docstring)."""
    if lora_r == 0:
        return 26.125 * h + 8 * inter
    if lora_dropout == 0:
        return 22.125 * h + 8 * inter + 14 * lora_r
    return 34.125 * h + 9 * inter + 14 * lora_r


def decoder_activation_bytes(b: int, s: int, layers: int, h: int, inter: int, vocab: int,
                             lora_r: int, lora_dropout: float, checkpointing: bool) -> float:
    """Decoder activations of one micro-batch; see the module docstring."""
    per_layer = decoder_layer_bytes_per_token(h, inter, lora_r, lora_dropout)
    head = 10 * vocab + (4 if lora_r else 8) * h
    kept = 2 * h * layers + per_layer if checkpointing else layers * per_layer
    return b * s * (kept + head)


class _LiveBytes(TorchDispatchMode):
    """Tracks bytes of live tensors created under the mode (weakref finalizers), and their peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage()._cdata
                if key not in self._seen:  # views and in-place results reuse a storage
                    nbytes = t.untyped_storage().nbytes()
                    self._seen.add(key)
                    self.live += nbytes
                    weakref.finalize(t, self._release, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


def encoder_peak_bytes(vision: nn.Module, b: int, roi: tuple[int, int, int], dtype: torch.dtype) -> int:
    """Transient peak of a no-grad encoder forward (input included), simulated on the meta device."""
    vision = vision.to(dtype).eval()
    image = torch.empty(b, 1, *roi, dtype=dtype, device="meta")
    with torch.no_grad(), _LiveBytes() as mode:
        vision(image)
    return mode.peak + image.numel() * image.element_size()


def measure_tiny() -> dict[str, tuple[int, int]]:
    """Build the tiny configuration for real (tests' sizes) and count its parameters."""
    from ctvl.models.tokenizer import make_tokenizer

    cfg = load_config(CTVLConfig, DEFAULT_CONFIG.parent / "tiny.yaml")
    tok = make_tokenizer(["No pleural effusion. The lungs are clear. A 3 cm nodule."] * 4, vocab_size=300)
    model = build_ctvl_model(cfg, tok)
    parts = {name: getattr(model, name) for name in ("vision", "projector", "decoder", "survival")}
    return {name: count(m) for name, m in parts.items()} | {"total": count(model)}


def fmt_n(n: float) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{int(n):,}"


def fmt_b(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="CTVLConfig YAML (model shape, LoRA)")
    p.add_argument("--lora-r", type=int, default=None, help="override lora.r")
    p.add_argument("--micro-batch", type=int, default=12)
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample, visual tokens included")
    p.add_argument("--roi", type=int, nargs=3, default=(224, 224, 160), help="volume size (x, y, z)")
    p.add_argument("--gpus", type=int, default=2, help="GPUs per node")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="skip the tiny build and DeepSpeed's printed tables")
    p.add_argument("--measure-cuda", action="store_true",
                   help="also run the real shapes on this GPU (random weights): measured vs estimated")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    cfg = load_config(CTVLConfig, args.config)
    if args.lora_r is not None:
        cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, r=args.lora_r))
    parts = build_real_parts(cfg)
    counts = {name: count(m) for name, m in parts.items()}
    total = sum(c[0] for c in counts.values())
    trainable = max(stage_trainable(parts).values())
    largest = max(largest_layer(m) for m in parts.values())
    n_img = num_image_tokens(cfg.projector, compute_feature_shape(tuple(args.roi)))
    lines = [f"## ctvl memory plan: {args.config.name}, LoRA r={cfg.lora.r} (dropout {cfg.lora.dropout}), "
             f"{args.nodes} node(s) x {args.gpus} GPU(s), bf16", "",
             "| part | parameters | trainable (as built) |", "|---|---|---|"]
    lines += [f"| {k} | {fmt_n(t)} | {fmt_n(tr)} |" for k, (t, tr) in counts.items()]
    lines += [f"| **total** | {fmt_n(total)} | |"]
    lines += [f"| trainable, {k} | | {fmt_n(v)} |" for k, v in stage_trainable(parts).items()]
    acts = activation_bytes(cfg, parts, args)
    lines += activation_lines(acts, args, n_img)
    if importlib.util.find_spec("deepspeed") is None:
        lines += ["", "(deepspeed is not installed: model-state tables skipped)"]
    else:
        states = model_state_rows(total, trainable, largest, args.gpus, args.nodes)
        lines += ["", f"Model states per GPU (no offload; P = {fmt_n(total)}, P_t = {fmt_n(trainable)}, "
                      f"largest layer {fmt_n(largest)}):", "",
                  "| ZeRO stage | full fine-tuning (DeepSpeed estimator, all P trained) "
                  "| ctvl: LoRA, P_t trained |",
                  "|---|---|---|"]
        lines += [f"| {st} | {fmt_b(full)} | {fmt_b(lora)} |" for st, full, lora in states]
        lines += peak_lines(states, acts, cfg.lora.r)
    if args.measure_cuda:
        lines += measure_cuda(cfg, args, acts)
    if not args.quick:
        tiny = measure_tiny()
        lines += ["", "Tiny configuration (configs/model/tiny.yaml, built for real):", "",
                  "| part | parameters | trainable |", "|---|---|---|"]
        lines += [f"| {k} | {t:,} | {tr:,} |" for k, (t, tr) in tiny.items()]
    if not args.quick and importlib.util.find_spec("deepspeed") is not None:
        lines += ["", "DeepSpeed's own estimates (full fine-tuning):", "", "```",
                  deepspeed_tables(total, largest, args.gpus, args.nodes).rstrip(), "```"]
    lines += ["", f"({time.perf_counter() - t0:.1f} s)"]
    print("\n".join(lines))


def activation_bytes(cfg: CTVLConfig, parts, args) -> dict[str, float]:
    """Estimated activation bytes of one micro-batch (decoder: full / LoRA, with / without ckpt; encoder)."""
    b, s, L = args.micro_batch, args.seq_len, LLAMA2_7B["num_hidden_layers"]
    h, i, v = LLAMA2_7B["hidden_size"], LLAMA2_7B["intermediate_size"], LLAMA2_7B["vocab_size"] + 2
    out = {}
    for name, r, p in (("full", 0, 0.0), ("lora", cfg.lora.r, cfg.lora.dropout)):
        for ck in (False, True):
            out[f"{name}, ckpt={ck}"] = decoder_activation_bytes(b, s, L, h, i, v, r, p, ck)
    out["encoder"] = encoder_peak_bytes(parts["vision"], b, tuple(args.roi), torch.bfloat16)
    return out


def activation_lines(acts: dict[str, float], args, n_img: int) -> list[str]:
    """Markdown rows for the decoder activations (with/without checkpointing) and the encoder peak."""
    b, s = args.micro_batch, args.seq_len
    rows = ["", f"Activations for micro-batch {b} x {s} tokens ({n_img} visual), bf16:",
            "", "| component | no checkpointing | gradient checkpointing |", "|---|---|---|"]
    for key, name in (("full", "decoder, full fine-tuning"), ("lora", "decoder, LoRA")):
        rows.append(f"| {name} | {fmt_b(acts[f'{key}, ckpt=False'])} | {fmt_b(acts[f'{key}, ckpt=True'])} |")
    enc = fmt_b(acts["encoder"])
    rows.append(f"| frozen encoder forward peak (transient, no autograd) | {enc} | {enc} |")
    return rows


def peak_lines(states: list[tuple], acts: dict[str, float], lora_r: int) -> list[str]:
    """Peak per GPU = model states + max(encoder transient, decoder activations); the encoder runs first."""
    key = "lora" if lora_r else "full"
    rows = ["", f"Estimated peak per GPU ({'LoRA' if lora_r else 'full fine-tuning'}; model states + "
                "max(encoder transient, decoder activations)):", "",
            "| ZeRO stage | no checkpointing | gradient checkpointing |", "|---|---|---|"]
    for stage, full, lora in states:
        st = lora if lora_r else full
        peaks = [st + max(acts["encoder"], acts[f"{key}, ckpt={ck}"]) for ck in (False, True)]
        rows.append(f"| {stage} | {fmt_b(peaks[0])} | {fmt_b(peaks[1])} |")
    return rows


def measure_cuda(cfg: CTVLConfig, args, acts: dict[str, float]) -> list[str]:
    """Run the real shapes on the GPU with random weights: measured vs estimated activation memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ctvl.models.ctvl import compute_lm_loss
    from ctvl.models.decoder import enable_checkpointing

    dev, b, s = torch.device("cuda"), args.micro_batch, args.seq_len
    rows = ["", f"Measured on {torch.cuda.get_device_name()} (random weights; bytes above the weights):", "",
            "| component | estimate | measured peak |", "|---|---|---|"]
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(dev):
        llama = LlamaForCausalLM(LlamaConfig(**dict(LLAMA2_7B, vocab_size=LLAMA2_7B["vocab_size"] + 2),
                                             num_key_value_heads=32, tie_word_embeddings=False))
    torch.set_default_dtype(torch.float32)
    model = apply_lora(llama, cfg.lora).to(torch.bfloat16).train()
    for ck in (False, True):
        if ck:
            enable_checkpointing(llama)
        embeds = torch.randn(b, s, LLAMA2_7B["hidden_size"], device=dev, dtype=torch.bfloat16)
        embeds.requires_grad_(True)
        labels = torch.randint(0, 32000, (b, s), device=dev)
        mask = torch.ones(b, s, dtype=torch.long, device=dev)
        mask[0, -8:] = 0  # one padded row: the masked (memory-efficient) SDPA kernel, as in real batches
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = model(inputs_embeds=embeds, attention_mask=mask, use_cache=False)
        compute_lm_loss(out.logits, labels).backward()
        peak = torch.cuda.max_memory_allocated() - base
        est = acts[f"{'lora' if cfg.lora.r else 'full'}, ckpt={ck}"]
        note = "" if cfg.lora.r else " (measured includes the weight gradients)"
        rows.append(f"| decoder, checkpointing={ck}{note} | {fmt_b(est)} | {fmt_b(peak)} |")
        del out, embeds
        model.zero_grad(set_to_none=True)
    del model, llama
    torch.cuda.empty_cache()
    vision = random_image_encoder(cfg.vision).to(dev, torch.bfloat16).eval()
    image = torch.rand(b, 1, *args.roi, device=dev, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() - image.numel() * image.element_size()
    with torch.no_grad():
        vision(image)
    rows.append(f"| frozen encoder forward | {fmt_b(acts['encoder'])} | "
                f"{fmt_b(torch.cuda.max_memory_allocated() - base)} |")
    return rows


if __name__ == "__main__":
    main()
