r"""A survival head on a language model's reading of a prompt: DeepSurv on the last prompt-token state.

The other way of putting survival into a language model (the distillation student *writes* a
teacher's risk): the decoder reads the patient sentence, and a :class:`~ctvl.survival.heads.CoxHead`
maps its last-layer state at the last prompt token to a log-hazard, trained on the real times with
the Cox partial likelihood (Efron ties),

.. math::
    h(x) = g_\theta\big(H^{(L)}_{\text{last}}(x)\big), \qquad
    L = -\frac{1}{d}\sum_g \Big[\sum_{i \in D_g} h_i - \log\!\sum_{j \in R_g} e^{h_j}\Big]_{\text{Efron}}.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from ctvl.models.ctvl import pool_hidden
from ctvl.survival.heads import CoxHead
from ctvl.survival.losses import neg_partial_log_likelihood


class PromptSurvivalOutput(NamedTuple):
    loss: Optional[torch.Tensor]
    """Cox loss of the batch (None without targets)."""
    risk: torch.Tensor
    """(B,) log-hazards."""


class PromptCoxModel(nn.Module):
    """Causal LM (HF or peft) + CoxHead on the last prompt token: ``(B, L)`` ids -> ``(B,)`` log-hazards."""

    def __init__(self, decoder: nn.Module, hidden_size: int, hidden: Sequence[int] = (64,), dropout: float = 0.1):
        super().__init__()
        self.decoder = decoder
        self.head = CoxHead(hidden_size, hidden, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, event: Optional[torch.Tensor] = None,
                time: Optional[torch.Tensor] = None) -> PromptSurvivalOutput:
        out = self.decoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        state = pool_hidden(out.hidden_states[-1], attention_mask, None, "last")  # (B, H)
        risk = self.head(state.to(self.head.out.weight.dtype))
        loss = neg_partial_log_likelihood(risk, event, time, ties="efron") if event is not None else None
        return PromptSurvivalOutput(loss, risk)
