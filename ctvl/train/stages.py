"""What trains in each stage: the only place in ctvl that changes ``requires_grad``.

Stage 1, "vqa" (CT-RATE pre-training, paper section 2.3): the visual encoder and the
survival branch are frozen; the projector W and the decoder (its LoRA matrices, or all
of it when LoRA is off) train with the autoregressive loss.

Stage 2, "survival" (joint fine-tuning): the encoder and projector are frozen; the
decoder (LoRA), residual adapter and survival head train with
L = L_LM + alpha (L_surv + L_disp + L_align).

The encoder trains only when ``cfg.vision.frozen`` is False (e.g. after a contrastive
stage 0 for encoders without CT pre-training); a frozen encoder also stays in eval mode
(``MerlinImageEncoder.train`` keeps it there) so its BatchNorm statistics never move.
"""

from __future__ import annotations

import logging
from typing import Literal

from torch import nn

log = logging.getLogger(__name__)

Stage = Literal["vqa", "survival"]


def _decoder_trainable(name: str, has_lora: bool) -> bool:
    return "lora_" in name if has_lora else True


def set_trainable(model: nn.Module, stage: Stage) -> dict[str, int]:
    """Set ``requires_grad`` on every parameter of a ``CTVLModel`` for ``stage``.

    Returns:
        dict: ``{"trainable": n, "total": n}`` parameter counts, also logged per part.
    """
    if stage not in ("vqa", "survival"):
        raise ValueError(f"stage must be 'vqa' or 'survival', got {stage!r}")
    has_lora = any("lora_" in n for n, _ in model.decoder.named_parameters())
    train_vision = not model.cfg.vision.frozen
    for p in model.vision.parameters():
        p.requires_grad_(train_vision)
    for p in model.projector.parameters():
        p.requires_grad_(stage == "vqa")
    for name, p in model.decoder.named_parameters():
        p.requires_grad_(_decoder_trainable(name, has_lora))
    for p in model.survival.parameters():
        p.requires_grad_(stage == "survival")
    model.vision.train(train_vision and model.training)
    counts = {}
    for part in ("vision", "projector", "decoder", "survival"):
        params = list(getattr(model, part).parameters())
        counts[part] = (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
    trainable, total = (sum(c[i] for c in counts.values()) for i in (0, 1))
    log.info("stage %s: %s trainable of %s parameters (%.3f%%); %s", stage, f"{trainable:,}", f"{total:,}",
             100.0 * trainable / max(total, 1),
             ", ".join(f"{k} {v[0]:,}/{v[1]:,}" for k, v in counts.items()))
    return {"trainable": trainable, "total": total}
