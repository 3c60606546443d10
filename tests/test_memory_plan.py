"""scripts/memory_plan.py: real-configuration counts on the meta device, formulas, quick run."""

import importlib.util

import pytest
import torch

from ctvl.config import CTVLConfig, load_config

from .conftest import load_script


@pytest.fixture(scope="module")
def plan():
    return load_script("memory_plan")


@pytest.fixture(scope="module")
def real_parts(plan):
    cfg = load_config(CTVLConfig, plan.DEFAULT_CONFIG)
    return cfg, plan.build_real_parts(cfg)


def test_real_parameter_counts(plan, real_parts):
    cfg, parts = real_parts
    h, i, layers = 4096, 11008, 32
    # Llama-2-7B: 6,738,415,616 parameters at vocab 32000; two added tokens add 2 * 2 * 4096.
    assert plan.count(parts["decoder"])[0] - plan.count(parts["decoder"])[1] == 6_738_415_616 + 2 * 2 * h
    r = cfg.lora.r
    assert plan.count(parts["decoder"])[1] == layers * r * (4 * 2 * h + 2 * (h + i) + (i + h))
    assert plan.count(parts["projector"]) == (2048 * 4096 + 4096,) * 2
    assert plan.largest_layer(parts["decoder"]) == (32000 + 2) * h
    # I3D ResNet-152: torchvision's 60.19 M minus fc (2.05 M), each 3x3 (and the 7x7 stem) tripled in depth.
    vision_total, vision_trainable = plan.count(parts["vision"])
    assert 110e6 < vision_total < 125e6 and vision_trainable == 0


def test_zero_rows_follow_deepspeed(plan):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total, trainable, largest = 7_000_000_000, 40_000_000, 131_000_000
    rows = {st: (full, lora) for st, full, lora in plan.model_state_rows(total, trainable, largest, 2, 1)}
    assert rows["ZeRO-2"][0] == estimate_zero2_model_states_mem_needs(total, 2, 1, cpu_offload=False)[1]
    assert rows["ZeRO-2"][1] == pytest.approx(2 * total + 18 * trainable / 2)
    expected = 4 * largest + 18 * trainable / 2 + 2 * (total - trainable) / 2
    assert rows["ZeRO-3"][1] == pytest.approx(expected, rel=1e-6)
    assert rows["ZeRO-3"][1] < rows["ZeRO-2"][1] < rows["ZeRO-0 (DDP)"][1]


def test_activation_formula_terms(plan):
    args = dict(b=2, s=100, layers=4, h=64, inter=172, vocab=1000)
    full = plan.decoder_activation_bytes(**args, lora_r=0, lora_dropout=0.0, checkpointing=False)
    assert full == 2 * 100 * (4 * (26.125 * 64 + 8 * 172) + 10 * 1000 + 8 * 64)
    ckpt = plan.decoder_activation_bytes(**args, lora_r=8, lora_dropout=0.1, checkpointing=True)
    assert ckpt == 2 * 100 * (2 * 64 * 4 + 34.125 * 64 + 9 * 172 + 14 * 8 + 10 * 1000 + 4 * 64)


def test_encoder_peak_counts_the_stem(plan):
    from ctvl.config import VisionConfig
    from ctvl.models.vision3d import build_image_encoder

    with torch.device("meta"):
        vision = build_image_encoder(VisionConfig(layers=(1, 1, 1, 1), base_width=8))
    peak = plan.encoder_peak_bytes(vision, 2, (32, 32, 32), torch.float32)
    image3 = 2 * 3 * 32**3 * 4  # the 3-channel copy
    stem = 2 * 8 * 32 * 16 * 16 * 4  # conv1 output (z unstrided, x/y halved); BatchNorm makes a second one
    assert peak >= image3 + 2 * stem
    assert peak < 4 * (image3 + 2 * stem)


def test_quick_run_prints_the_tables(plan, capsys):
    plan.main(["--quick", "--micro-batch", "12"])
    out = capsys.readouterr().out
    assert "| decoder | 6.778 B |" in out
    assert "micro-batch 12 x 256 tokens (49 visual)" in out
    assert "| decoder, LoRA |" in out and "frozen encoder forward peak" in out
    if importlib.util.find_spec("deepspeed"):
        assert "| ZeRO-3 |" in out
