"""scripts/bench_gpu.py runs end to end on the CPU with the tiny architecture, so it cannot rot."""

import re

from .conftest import load_script


def test_tiny_training_table_and_inference_throughput(capsys):
    load_script("bench_gpu").main(["--tiny", "--steps", "1", "--warmup", "0", "--checkpointing", "off",
                                   "--inputs", "both", "--predict", "2", "--predict-workers", "0",
                                   "--predict-batch", "2"])
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (features|volumes) \| off \| 2 \| ([\d.]+) \| ([\d.]+) \|", out, re.M)
    assert [r[0] for r in rows] == ["features", "volumes"]
    assert all(float(step) > 0 and float(rate) > 0 for _, step, rate in rows)
    assert re.search(r"end to end [\d.]+ volumes/s .*\(risk shape \(2, 6\)\)", out), out


def test_model_flops_count_the_lora_step():
    bench = load_script("bench_gpu")
    import torch

    model, _ = bench.build("tiny", lora_r=4, checkpointing=False, device=torch.device("cpu"))
    lora, full = bench.model_flops(model, batch=2, seq_len=16)
    assert 0 < lora < full  # a frozen base skips weight gradients: 4N + attention vs 6N + attention
