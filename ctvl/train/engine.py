"""Training engines: DeepSpeed (ZeRO-2/3, multi-rank) or plain PyTorch, behind one step API.

``build_engine(model, train_cfg)`` returns an object with ``engine(**inputs)``,
``engine.backward(loss)``, ``engine.step()``, ``save_checkpoint`` and
``load_checkpoint``; ``fit()`` in ``loop.py`` never branches on which it got. Both put the
model on ``engine.device`` (``cuda:LOCAL_RANK`` when there is a GPU) and move each batch's
tensors there in ``engine(**inputs)``, so data loaders stay device-agnostic.

DeepSpeed JSON files in ``configs/deepspeed/`` hold only ZeRO/offload settings;
``build_ds_config`` writes batch size, accumulation, clipping and precision from
the ``TrainConfig`` and checks ``global == micro * accum * world`` (no "auto" keys:
those are filled in by the HF Trainer, which ctvl does not use).

Launch (same code everywhere)::

    ctvl train --config configs/train/stage2_tiny.yaml                 # one process
    torchrun --nproc_per_node 8 -m ctvl.cli train --config ...          # DeepSpeed, 8 GPUs
    deepspeed --hostfile hosts -m ctvl.cli train --config ...           # multi-node
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ctvl.config import TrainConfig

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ distributed


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ.get("RANK", 0))


def is_main_process() -> bool:
    return rank() == 0


def launched_with_ranks() -> bool:
    """True when a launcher (torchrun/deepspeed/mpirun) set up rank variables."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed() -> None:
    """Initialise torch.distributed from launcher variables (NCCL on GPU, gloo on CPU); no-op otherwise."""
    if torch.distributed.is_initialized() or not launched_with_ranks():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend=backend)
    log.info("initialised %s process group: rank %d / %d", backend, rank(), world_size())


def resolve_precision(cfg: TrainConfig) -> str:
    """"bf16" on a GPU that supports it when ``precision="auto"``, else "fp32"."""
    if cfg.precision != "auto":
        return cfg.precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def use_deepspeed(cfg: TrainConfig) -> bool:
    if cfg.use_deepspeed == "no":
        return False
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        if cfg.use_deepspeed == "yes":
            raise
        return False
    return cfg.use_deepspeed == "yes" or launched_with_ranks()


# -------------------------------------------------------------------- ds config


def build_ds_config(cfg: TrainConfig, world: int, base: Optional[dict] = None) -> dict:
    """DeepSpeed config: ZeRO settings from ``base`` (or ``cfg.deepspeed_config``) + ctvl's batch/clip/precision.

    Raises:
        ValueError: when ``base`` sets a key that ctvl owns, or the global batch does not add up.
    """
    if base is None:
        base = json.loads(Path(cfg.deepspeed_config).read_text()) if cfg.deepspeed_config else {}
    owned = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
             "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler"}
    clash = sorted(owned & set(base))
    if clash:
        raise ValueError(f"DeepSpeed JSON must hold only ZeRO/offload settings; ctvl writes {clash} itself")
    ds = json.loads(json.dumps(base))
    ds.setdefault("zero_optimization", {})
    if cfg.deepspeed_config is None or "stage" not in ds["zero_optimization"]:
        ds["zero_optimization"]["stage"] = cfg.zero_stage
    ds["zero_allow_untested_optimizer"] = True  # ctvl passes torch.optim.AdamW (no op build without offload)
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum_steps
    ds["train_batch_size"] = cfg.global_batch(world)
    ds["gradient_clipping"] = cfg.grad_clip
    ds["bf16"] = {"enabled": resolve_precision(cfg) == "bf16"}
    ds["steps_per_print"] = max(cfg.max_steps + 1, 10**9)  # ctvl logs itself
    ds["wall_clock_breakdown"] = False
    return ds


# ---------------------------------------------------------------- optimisation


def offloads_optimizer(ds_config: Optional[dict]) -> bool:
    """Whether a DeepSpeed config moves optimizer states to the CPU (ZeRO-Offload)."""
    offload = ((ds_config or {}).get("zero_optimization") or {}).get("offload_optimizer") or {}
    return offload.get("device", "none") in ("cpu", "nvme")


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters in optimiser groups: one per learning rate x weight decay.

    A parameter takes the learning rate of the first ``cfg.lr_groups`` prefix its name starts with
    (``cfg.lr`` when none does). Parameters named by ``model.no_weight_decay()`` (timm's convention;
    optional) get no weight decay. Groups keep the order of ``model.named_parameters()``; empty ones
    are left out.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters: check set_trainable() for this stage")
    exempt = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    rates = [(prefix, float(lr)) for prefix, lr in cfg.lr_groups]
    unused = [prefix for prefix, _ in rates if not any(n.startswith(prefix) for n, _ in named)]
    if unused:
        raise ValueError(f"train.lr_groups prefixes {unused} name no trainable parameter")

    def lr_of(name: str) -> float:
        return next((lr for prefix, lr in rates if name.startswith(prefix)), cfg.lr)

    groups: dict[tuple[float, bool], list] = {}
    for lr in [cfg.lr] + [lr for _, lr in rates]:
        for decayed in (True, False):
            groups.setdefault((lr, decayed), [])
    for name, p in named:
        groups[(lr_of(name), name not in exempt)].append(p)
    return [{"params": params, "lr": lr, **({} if decayed else {"weight_decay": 0.0})}
            for (lr, decayed), params in groups.items() if params]


def build_optimizer(model: nn.Module, cfg: TrainConfig, ds_config: Optional[dict] = None) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (the paper: betas (0.9, 0.999)), grouped by :func:`parameter_groups`.

    With ZeRO-Offload (``ds_config`` offloads the optimizer) DeepSpeed's ``DeepSpeedCPUAdam`` (AdamW mode),
    which DeepSpeed requires there; its kernel is compiled on first use. Otherwise ``torch.optim.AdamW``.
    """
    params = parameter_groups(model, cfg)
    kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if offloads_optimizer(ds_config):
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``cfg.lr_schedule`` as a multiplier of every group's learning rate."""
    if cfg.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    warmup = min(cfg.warmup_steps, cfg.max_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, warmup, cfg.max_steps))


# --------------------------------------------------------------------- engines


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (the launcher's local rank, 0 without one), else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def to_device(inputs: dict, device: torch.device) -> dict:
    """Tensors of a batch dict moved to ``device`` (non-blocking from pinned memory); other values as they are."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in inputs.items()}


class TorchEngine:
    """Single-process engine with DeepSpeed's step semantics (accumulation, clipping, scheduler)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, device: Optional[torch.device | str] = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.module = model.to(self.device)
        self.cfg = cfg
        self.optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.micro_steps = 0

    def __call__(self, **inputs):
        return self.module(**to_device(inputs, self.device))

    def train(self):
        self.module.train()

    def eval(self):
        self.module.eval()

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro_steps + 1) % self.cfg.grad_accum_steps == 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.grad_accum_steps).backward()

    def step(self) -> None:
        if self.is_gradient_accumulation_boundary():
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_([p for p in self.module.parameters() if p.requires_grad], self.cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.micro_steps += 1

    def get_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def save_checkpoint(self, save_dir: str | Path, tag: str, client_state: dict) -> None:
        path = Path(save_dir) / tag
        path.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach().cpu() for n, p in self.module.named_parameters() if p.requires_grad}
        from safetensors.torch import save_file

        save_file(trainable, str(path / "trainable.safetensors"))
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "micro_steps": self.micro_steps, "client_state": client_state}
        torch.save(state, path / "engine_state.pt")

    def load_checkpoint(self, load_dir: str | Path, tag: str) -> dict:
        from safetensors.torch import load_file

        path = Path(load_dir) / tag
        trainable = load_file(str(path / "trainable.safetensors"))
        missing = self.module.load_state_dict(trainable, strict=False)
        if missing.unexpected_keys:
            raise ValueError(f"{path}: checkpoint has parameters the model lacks: {missing.unexpected_keys[:5]}")
        state = torch.load(path / "engine_state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.micro_steps = state["micro_steps"]
        return state["client_state"]


class DeepSpeedEngine:
    """Thin adapter over ``deepspeed.DeepSpeedEngine`` exposing TorchEngine's API."""

    def __init__(self, model: nn.Module, cfg: TrainConfig):
        import deepspeed

        self.cfg = cfg
        ds_config = build_ds_config(cfg, world_size())
        optimizer = build_optimizer(model, cfg, ds_config)
        scheduler = build_scheduler(optimizer, cfg)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config,
            dist_init_required=not torch.distributed.is_initialized(),
        )
        self.module = self.engine.module
        self.device = self.engine.device
        log.info("DeepSpeed ZeRO-%d, world %d, precision %s", ds_config["zero_optimization"]["stage"],
                 world_size(), resolve_precision(cfg))

    def __call__(self, **inputs):
        return self.engine(**to_device(inputs, self.device))

    def train(self):
        self.engine.train()

    def eval(self):
        self.engine.eval()

    def is_gradient_accumulation_boundary(self) -> bool:
        return self.engine.is_gradient_accumulation_boundary()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def get_lr(self) -> float:
        return self.engine.get_lr()[0]

    def save_checkpoint(self, save_dir: str | Path, tag: str, client_state: dict) -> None:
        self.engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state)

    def load_checkpoint(self, load_dir: str | Path, tag: str) -> dict:
        _, client_state = self.engine.load_checkpoint(str(load_dir), tag=tag)
        if client_state is None:
            raise ValueError(f"{load_dir}/{tag}: not a DeepSpeed checkpoint")
        return client_state


def build_engine(model: nn.Module, cfg: TrainConfig) -> Any:
    """DeepSpeed when configured/launched (see ``TrainConfig.use_deepspeed``), else the plain-PyTorch engine."""
    if use_deepspeed(cfg):
        return DeepSpeedEngine(model, cfg)
    if world_size() > 1:
        raise ValueError("several ranks without DeepSpeed are not supported: set train.use_deepspeed to auto/yes")
    return TorchEngine(model, cfg)
