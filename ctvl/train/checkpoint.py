"""Checkpoints: rotation, discovery of the newest, RNG state, and the model export.

Layout under ``TrainConfig.out_dir``::

    checkpoints/step_000100/   engine state (DeepSpeed's or TorchEngine's) + client_state (step, epoch,
                               batch position, RNG), written by every rank
    checkpoints/latest         the newest complete tag (written last, so a killed save is never "latest")
    model/                     CTVLModel.save_pretrained export of the newest step (rank 0)
    run_config.yaml            the resolved RunConfig

Everything is loaded with ``weights_only=True`` or from safetensors.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Optional

import torch

from ctvl.utils.atomic import atomic_open

log = logging.getLogger(__name__)

LATEST = "latest"


def step_tag(step: int) -> str:
    return f"step_{step:07d}"


def latest_tag(ckpt_dir: str | Path) -> Optional[str]:
    """The tag named in ``latest``, or None when no checkpoint finished."""
    path = Path(ckpt_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    return tag if (Path(ckpt_dir) / tag).is_dir() else None


def mark_latest(ckpt_dir: str | Path, tag: str) -> None:
    """Atomically point ``latest`` at ``tag``."""
    with atomic_open(Path(ckpt_dir) / LATEST, "w") as fh:
        fh.write(tag)


def prune(ckpt_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step folders."""
    tags = sorted(p for p in Path(ckpt_dir).glob("step_*") if p.is_dir())
    for old in tags[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def rng_state() -> dict:
    """Python and torch RNG state (numpy is not used for randomness during training)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
