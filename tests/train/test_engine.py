"""DeepSpeed config assembly, the LR schedule, and the plain-PyTorch engine's accumulation."""

import json
from pathlib import Path

import pytest
import torch

from ctvl.config import TrainConfig
from ctvl.train.engine import TorchEngine, build_ds_config, cosine_with_warmup, default_device

DS_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"


@pytest.mark.parametrize("path", sorted(DS_DIR.glob("*.json")), ids=lambda p: p.name)
def test_shipped_deepspeed_json_holds_only_zero_settings(path):
    cfg = TrainConfig(micro_batch_size=12, grad_accum_steps=8, deepspeed_config=str(path), precision="bf16")
    ds = build_ds_config(cfg, world=2)
    assert ds["train_batch_size"] == 12 * 8 * 2
    assert ds["train_micro_batch_size_per_gpu"] == 12 and ds["gradient_accumulation_steps"] == 8
    assert ds["bf16"] == {"enabled": True}
    assert ds["zero_optimization"]["stage"] == json.loads(path.read_text())["zero_optimization"]["stage"]
    assert "auto" not in json.dumps(ds)


def test_global_batch_mismatch_is_explained():
    cfg = TrainConfig(micro_batch_size=12, grad_accum_steps=8, global_batch_size=96)
    assert build_ds_config(cfg, world=1, base={})["train_batch_size"] == 96
    with pytest.raises(ValueError, match="x world_size 2 = 192"):
        build_ds_config(cfg, world=2, base={})


def test_json_owning_batch_keys_is_refused():
    with pytest.raises(ValueError, match="train_batch_size"):
        build_ds_config(TrainConfig(), world=1, base={"train_batch_size": "auto"})


def test_cosine_schedule_shape():
    lrs = [cosine_with_warmup(s, warmup=10, total=100) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] < 0.01


def test_accumulated_micro_batches_equal_one_big_batch():
    torch.manual_seed(0)
    x, y = torch.randn(8, 5), torch.randn(8, 1)

    def run(micro, accum):
        torch.manual_seed(1)
        model = torch.nn.Linear(5, 1)
        engine = TorchEngine(model, TrainConfig(micro_batch_size=micro, grad_accum_steps=accum, lr=0.1,
                                                warmup_steps=1, max_steps=10, grad_clip=0.0))
        for i in range(0, 8, micro):
            loss = torch.nn.functional.mse_loss(model(x[i:i + micro]), y[i:i + micro])
            engine.backward(loss)
            engine.step()
        return model.weight.detach().clone()

    torch.testing.assert_close(run(2, 4), run(8, 1), rtol=1e-6, atol=1e-7)


class _DeviceProbe(torch.nn.Module):
    """Records the device of each input it receives."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.seen: dict[str, torch.device] = {}

    def forward(self, x, lengths, names):
        self.seen = {"x": x.device, "lengths": lengths.device, "weight": self.weight.device}
        return names


def test_engine_puts_model_and_batch_on_its_device():
    # "meta" stands in for a GPU: it is a non-CPU device every build of torch has.
    engine = TorchEngine(_DeviceProbe(), TrainConfig(), device="meta")
    names = ["a", "b"]
    assert engine(x=torch.zeros(2, 3), lengths=torch.tensor([3, 1]), names=names) is names
    assert set(engine.module.seen.values()) == {torch.device("meta")}
    assert engine.device == torch.device("meta")


def test_default_device_follows_cuda_and_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert default_device() == torch.device("cuda", 3)


def test_lr_groups_give_parts_their_own_learning_rate_and_the_schedule_scales_each():
    from ctvl.train.engine import TorchEngine

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))  # names 0.weight, 0.bias, 1.*
    model.no_weight_decay = lambda: {"0.bias", "1.bias"}
    cfg = TrainConfig(lr=1e-3, lr_groups=(("1.", 1e-1),), weight_decay=0.1, warmup_steps=2, max_steps=10,
                      grad_accum_steps=1, grad_clip=0.0)
    engine = TorchEngine(model, cfg, device="cpu")
    groups = [(g["lr"], g["weight_decay"], len(g["params"])) for g in engine.optimizer.param_groups]
    assert groups == [(5e-4, 0.1, 1), (5e-4, 0.0, 1), (5e-2, 0.1, 1), (5e-2, 0.0, 1)]  # warm-up step 1 of 2
    x = torch.randn(8, 3)
    before = [p.detach().clone() for p in model.parameters()]
    engine.backward(model(x).pow(2).mean())
    engine.step()
    moved = [float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before)]
    # Adam's first step moves each weight by about its lr: the second layer 100x further.
    assert all(abs(m / 5e-4 - 1) < 0.1 for m in moved[:2]) and all(abs(m / 5e-2 - 1) < 0.1 for m in moved[2:])


def test_lr_groups_must_name_trainable_parameters_and_constant_schedule_keeps_lr():
    from ctvl.train.engine import build_optimizer, build_scheduler

    model = torch.nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"prefixes \['decoder.'\] name no trainable parameter"):
        build_optimizer(model, TrainConfig(lr_groups=(("decoder.", 1e-4),)))
    with pytest.raises(ValueError, match="lr_groups"):
        TrainConfig(lr_groups=(("x.", -1.0),))
    opt = build_optimizer(model, TrainConfig(lr=2e-3))
    sched = build_scheduler(opt, TrainConfig(lr=2e-3, lr_schedule="constant", max_steps=5))
    for _ in range(7):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == 2e-3
