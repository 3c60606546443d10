"""Stage-2 training-step benchmark at the real size (random weights): step time, throughput, memory, MFU.

Builds the paper's model with random weights (Merlin I3D ResNet-152 + a Llama-2-7B-shaped decoder
with LoRA + survival branch; no checkpoint needed), feeds synthetic batches, and times full stage-2
optimiser steps (forward with L = L_LM + alpha (L_surv + L_disp + L_align), backward, AdamW) through
ctvl's own engine for each micro-batch size. Rows "features" read precomputed encoder maps (the
feature-cache path); rows "volumes" run the frozen encoder on 224x224x160 volumes inside the step.

MFU counts model FLOPs of a LoRA step: the frozen base weights need activation gradients but no
weight gradients, so linear layers cost 2N (forward) + 2N (backward) FLOPs per token and attention
3x its forward; recomputation from gradient checkpointing is not counted (that would be HFU).
"MFU(6N)" is the full-fine-tuning convention (6N per token), given for comparison only.

    python scripts/bench_gpu.py                       # on a GPU: 7B decoder, micro-batches 4 8 12
    python scripts/bench_gpu.py --tiny --steps 2      # CPU smoke run (used by the tests)
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ctvl.config import (
    CTVLConfig,
    DecoderConfig,
    LoRAConfig,
    ProjectorConfig,
    SurvivalConfig,
    TrainConfig,
    VisionConfig,
)

PEAK_BF16_TFLOPS = {"H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0,
                    "H200": 989.0, "A100": 312.0, "A6000": 154.8, "L40S": 362.0}
"""Dense bf16 tensor-core peak per GPU (vendor data sheets, no sparsity); "H100 80GB HBM3" is the SXM part."""

SIZES = {
    "7b": dict(vision=VisionConfig(layers=(3, 8, 36, 3), base_width=64),
               decoder=DecoderConfig(hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008,
                                     max_position_embeddings=4096, dtype="bfloat16"),
               vocab=32000, roi=(224, 224, 160)),
    "tiny": dict(vision=VisionConfig(layers=(1, 1, 1, 1), base_width=8),
                 decoder=DecoderConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128),
                 vocab=512, roi=(64, 64, 32)),
}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name or all(part in name for part in key.split()):
            return value
    return None


def build(size: str, lora_r: int, checkpointing: bool, device: torch.device, lora_bf16: bool = False,
          compile_decoder: bool = False):
    """The real architecture with random weights, built directly on ``device``."""
    from ctvl.models.ctvl import CTVLModel, SurvivalBranch
    from ctvl.models.decoder import apply_lora, build_tiny_decoder, compile_layers, enable_checkpointing
    from ctvl.models.projector import build_projector
    from ctvl.models.tokenizer import make_tokenizer
    from ctvl.models.vision3d import random_image_encoder

    spec = SIZES[size]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    decoder_cfg = replace(spec["decoder"], dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    cfg = CTVLConfig(vision=spec["vision"], projector=ProjectorConfig(), decoder=decoder_cfg,
                     lora=LoRAConfig(r=lora_r, alpha=2 * lora_r, dropout=0.0,
                                     adapter_dtype="decoder" if lora_bf16 else "float32"),
                     survival=SurvivalConfig(adapter_hidden=256, adapter_dropout=0.0))
    tokenizer = make_tokenizer(["Is there a pleural effusion?", "No pleural effusion."] * 4, vocab_size=300)
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            vision = random_image_encoder(cfg.vision)
            decoder = build_tiny_decoder(decoder_cfg, spec["vocab"])
        finally:
            torch.set_default_dtype(previous)
        if checkpointing:
            enable_checkpointing(decoder)
        decoder = apply_lora(decoder, cfg.lora)
        if compile_decoder:
            compile_layers(decoder)
        projector = build_projector(cfg.projector, vision.out_channels, decoder_cfg.hidden_size).to(dtype)
        survival = SurvivalBranch(cfg.survival, decoder_cfg.hidden_size)
    model = CTVLModel(cfg, vision, projector, decoder, survival, tokenizer).to(device)
    return model, spec


def make_batch(model, spec, batch: int, seq_len: int, with_volumes: bool, device: torch.device) -> dict:
    """Random prompt ids with the image tokens in place, labels on the last quarter, survival targets."""
    from ctvl.models.projector import num_image_tokens
    from ctvl.models.vision3d import compute_feature_shape

    grid = compute_feature_shape(spec["roi"])
    n_img = num_image_tokens(model.cfg.projector, grid)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, spec["vocab"], (batch, seq_len), generator=g)
    ids[:, 1:1 + n_img] = model.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -seq_len // 4:] = ids[:, -seq_len // 4:]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
              "event": torch.arange(batch) % 2 == 0, "time": torch.rand(batch, generator=g) * 60}
    if with_volumes:
        inputs["image"] = torch.rand(batch, 1, *spec["roi"], generator=g)
    else:
        inputs["image_features"] = torch.randn(batch, model.vision.out_channels, *grid, generator=g)
    return {k: v.to(device) for k, v in inputs.items()}


def model_flops(model, batch: int, seq_len: int) -> tuple[float, float]:
    """(LoRA-step model FLOPs, 6N-convention FLOPs) of one micro-batch through the decoder."""
    from ctvl.models.decoder import base_model

    dec = base_model(model.decoder)
    n = sum(p.numel() for name, p in dec.named_parameters() if "embed_tokens" not in name and "lora_" not in name)
    c = dec.config
    tokens = batch * seq_len
    linear_fwd = 2.0 * n * tokens
    attention_fwd = 4.0 * c.num_hidden_layers * batch * seq_len ** 2 * c.hidden_size
    return 2 * linear_fwd + 3 * attention_fwd, 3 * linear_fwd + 3 * attention_fwd


def profile_step(engine, inputs: dict, rows: int = 25) -> None:
    """Print the kernels of one training step, by total GPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        out = engine(**inputs)
        engine.backward(out.loss)
        engine.step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows))


def time_steps(model, inputs: dict, steps: int, warmup: int, device: torch.device,
               profile: bool = False) -> tuple[float, float]:
    """Median seconds per optimiser step and peak memory (GiB) through ctvl's TorchEngine."""
    from ctvl.train.engine import TorchEngine
    from ctvl.train.stages import set_trainable

    set_trainable(model, "survival")
    model.train()
    engine = TorchEngine(model, TrainConfig(stage="survival", micro_batch_size=inputs["input_ids"].shape[0],
                                            grad_accum_steps=1, lr=1e-5, warmup_steps=1, max_steps=steps + warmup))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = engine(**inputs)
        engine.backward(out.loss)
        engine.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if profile and device.type == "cuda":
        profile_step(engine, inputs)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    del engine
    return sorted(times)[len(times) // 2], peak


def _write_one(args) -> Path:
    from ctvl.data.synthetic.ctrate_like import write_volumes

    folder, i, shape = args
    (folder / f"v{i}").mkdir()
    return write_volumes(folder / f"v{i}", 1, shape, (0.7, 0.7, 1.0), np.random.default_rng(i))[0]


def bench_predict(model, spec, n: int, batch_size: int, workers: int, device: torch.device, tiny: bool) -> None:
    """Volumes/s of batch inference including preprocessing: CT-RATE-sized .nii.gz files -> Merlin
    preprocessing in DataLoader workers -> frozen encoder -> six questions on one shared prefix."""
    import tempfile
    from concurrent.futures import ThreadPoolExecutor  # zlib and NumPy release the GIL

    from ctvl.config import PreprocessConfig
    from ctvl.infer.inputs import iter_volume_batches
    from ctvl.infer.prefix import score_questions
    from ctvl.models.projector import num_image_tokens
    from ctvl.models.vision3d import compute_feature_shape
    from ctvl.data.questions import load_question_set

    questions = [q.text for q in load_question_set().questions]
    shape = (64, 64, 40) if tiny else (512, 512, 300)
    cfg = PreprocessConfig(roi_size=spec["roi"], spacing=(6.0, 6.0, 6.0) if tiny else (1.5, 1.5, 3.0))
    n_img = num_image_tokens(model.cfg.projector, compute_feature_shape(spec["roi"]))
    context = "64 year-old male former smoker lung cancer patient, stage 1, T stage is T4, N stage is N1, M stage is M0."
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            files = list(pool.map(_write_one, [(Path(tmp), i, shape) for i in range(n)]))
        cases = [(f"case{i}", str(f)) for i, f in enumerate(files)]
        t0, gpu = time.perf_counter(), 0.0
        for batch in iter_volume_batches(cases, cfg, batch_size, workers):
            images = torch.stack([torch.from_numpy(item["image"]) for item in batch]).to(device)
            t1 = time.perf_counter()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                scores = score_questions(model, questions, [context] * len(batch), num_image_tokens=n_img,
                                         image=images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            gpu += time.perf_counter() - t1
        total = time.perf_counter() - t0
    print(f"\nbatch inference, {n} volumes {shape} int16 .nii.gz -> roi {spec['roi']}, {workers} preprocessing "
          f"workers, batch {batch_size}, {len(questions)} questions on a shared prefix:")
    print(f"  end to end {n / total:.2f} volumes/s ({total:.1f} s); model only {n / gpu:.2f} volumes/s "
          f"(risk shape {tuple(scores.risk.shape)})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny architecture (CPU smoke run)")
    p.add_argument("--micro-batches", type=int, nargs="+", default=None)
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sample, visual tokens included")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    p.add_argument("--inputs", choices=["features", "volumes", "both"], default="both")
    p.add_argument("--lora-bf16", action="store_true", help="lora.adapter_dtype=decoder (peft's default: float32)")
    p.add_argument("--compile", action="store_true", help="decoder.compile: torch.compile each decoder layer")
    p.add_argument("--profile", action="store_true", help="print a kernel profile of one step per row")
    p.add_argument("--predict", type=int, default=0, metavar="N",
                   help="also time batch inference on N CT-RATE-sized volumes (preprocessing included)")
    p.add_argument("--predict-workers", type=int, default=8)
    p.add_argument("--predict-batch", type=int, default=4)
    p.add_argument("--train", choices=["yes", "no"], default="yes", help="run the training-step table")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    size = "tiny" if args.tiny else "7b"
    micro = args.micro_batches or ([2] if args.tiny else [4, 8, 12])
    seq_len = min(args.seq_len, 64) if args.tiny else args.seq_len
    peak = peak_tflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; decoder {size}; LoRA r {args.lora_r}{' bf16' if args.lora_bf16 else ''}; seq {seq_len}; "
          f"compile {args.compile}; torch {torch.__version__}; peak bf16 {peak or 'unknown'} TFLOP/s")
    print("| inputs | ckpt | micro-batch | step s | samples/s | tokens/s | peak GiB | MFU | MFU(6N) |")
    print("|---|---|---|---|---|---|---|---|---|")
    ckpts = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    kinds = {"features": [False], "volumes": [True], "both": [False, True]}[args.inputs]
    for checkpointing in ckpts if args.train == "yes" else []:
        torch.manual_seed(0)
        model, spec = build(size, args.lora_r, checkpointing, device, args.lora_bf16, args.compile)
        for with_volumes in kinds:
            for b in micro:
                inputs = make_batch(model, spec, b, seq_len, with_volumes, device)
                try:
                    step, mem = time_steps(model, inputs, args.steps, args.warmup, device, args.profile)
                except torch.OutOfMemoryError:
                    print(f"| {'volumes' if with_volumes else 'features'} | {checkpointing} | {b} | OOM |")
                    torch.cuda.empty_cache()
                    continue
                lora_flops, full_flops = model_flops(model, b, seq_len)
                mfu = f"{lora_flops / step / (peak * 1e12):.1%}" if peak else "n/a"
                mfu6 = f"{full_flops / step / (peak * 1e12):.1%}" if peak else "n/a"
                print(f"| {'volumes' if with_volumes else 'features'} | {'on' if checkpointing else 'off'} | {b} | "
                      f"{step:.3f} | {b / step:.2f} | {b * seq_len / step:,.0f} | {mem:.2f} | {mfu} | {mfu6} |",
                      flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.predict:
        torch.manual_seed(0)
        model, spec = build(size, args.lora_r, False, device, args.lora_bf16, args.compile)
        bench_predict(model, spec, args.predict, args.predict_batch, args.predict_workers, device, args.tiny)


if __name__ == "__main__":
    main()
