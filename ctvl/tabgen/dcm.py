r"""CK4Gen's networks: a Deep Cox Mixture encoder and the SynthNet decoder (paper 003, figure 1 e-f).

:class:`DCMEncoder` maps encoded covariates :math:`x` (``TabularEncoder`` output: standardised numbers,
0/1 columns, one-hot blocks) to a representation :math:`z` and scores it with :math:`K` Cox experts under
a soft assignment (Deep Cox Mixtures, Nagpal et al. 2021, with the experts sharing one baseline):

.. math::

    z = f_\theta(x), \qquad \pi(z) = \operatorname{softmax}(G z + b), \qquad
    r(x) = \log \sum_{k=1}^{K} \pi_k(z)\, e^{w_k^\top z},

so that :math:`e^{r}` is the mixture's relative hazard at the baseline. Distillation fits :math:`r` to the
CoxPH teacher's standardised log-hazard (:func:`distillation_loss`). :class:`SynthNetDecoder` maps
:math:`z` back to the encoded covariates; :func:`reconstruction_loss` scores each block by its kind
(squared error for numbers, binary cross-entropy for 0/1 and missing-indicator columns, cross-entropy
for one-hot blocks) and :func:`decode_blocks` turns its output into the encoder's matrix layout.

    >>> _ = torch.manual_seed(0)
    >>> enc, dec = DCMEncoder(5, (8,), latent_dim=3, experts=2), SynthNetDecoder(3, (8,), 5)
    >>> z = enc(torch.randn(4, 5))
    >>> z.shape, enc.risk(z).shape, dec(z).shape
    (torch.Size([4, 3]), torch.Size([4]), torch.Size([4, 5]))
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctvl.survival.heads import mlp_stack

__all__ = ["DCMEncoder", "SynthNetDecoder", "decode_blocks", "distillation_loss", "draw_discrete",
           "reconstruction_loss"]

Blocks = Sequence[tuple[str, str, int, int]]
"""``TabularEncoder.blocks()``: (column, role, start, stop) per block of matrix columns."""


class DCMEncoder(nn.Module):
    """Covariates (B, D) -> representation z (B, L); ``risk(z)`` (B,) the K-expert mixture log-hazard."""

    def __init__(self, dim: int, hidden: Sequence[int], latent_dim: int, experts: int, dropout: float = 0.0):
        super().__init__()
        self.trunk, width = mlp_stack(dim, hidden, dropout)
        self.to_latent = nn.Linear(width, latent_dim)
        self.experts = nn.Linear(latent_dim, experts, bias=False)  # w_k: a bias would be the baseline's
        self.gate = nn.Linear(latent_dim, experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.trunk(x))  # (B, D) -> (B, L)

    def risk(self, z: torch.Tensor) -> torch.Tensor:
        log_pi = F.log_softmax(self.gate(z), dim=-1)  # (B, K)
        return torch.logsumexp(log_pi + self.experts(z), dim=-1)  # (B,)


class SynthNetDecoder(nn.Module):
    """Representation z (B, L) -> raw outputs (B, D): numbers, logits of 0/1 columns and of one-hot levels."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], dim: int, dropout: float = 0.0):
        super().__init__()
        self.trunk, width = mlp_stack(latent_dim, tuple(hidden), dropout)
        self.out = nn.Linear(width, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.trunk(z))  # (B, L) -> (B, D)


def distillation_loss(risk: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    r"""Mean squared error :math:`\frac1B \sum_i (r_i - \tilde h_i)^2` to the teacher's standardised log-hazard."""
    return F.mse_loss(risk, teacher)


def reconstruction_loss(output: torch.Tensor, target: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """Mean over blocks of each block's loss: MSE (numeric, ordinal), BCE (binary, indicator), CE (one-hot).

    Args:
        output: (B, D) decoder output.
        target: (B, D) encoded covariates.
        blocks: the encoder's blocks.
    """
    losses = []
    for _, role, a, b in blocks:
        out, tgt = output[:, a:b], target[:, a:b]
        if role in ("numeric", "ordinal"):
            losses.append(F.mse_loss(out, tgt))
        elif role in ("binary", "indicator") or b - a == 1:  # a one-level one-hot block is a 0/1 column
            losses.append(F.binary_cross_entropy_with_logits(out, tgt))
        else:
            losses.append(F.cross_entropy(out, tgt.argmax(1)))
    return torch.stack(losses).mean()


def decode_blocks(output: torch.Tensor, blocks: Blocks) -> torch.Tensor:
    """Decoder output (B, D) -> the encoder's layout (B, D): numbers as they are, 0/1 columns as probabilities,
    one-hot blocks as level probabilities (``TabularEncoder.inverse_transform`` thresholds / takes the argmax)."""
    out = output.clone()
    for _, role, a, b in blocks:
        if role in ("binary", "indicator") or (role == "onehot" and b - a == 1):
            out[:, a:b] = torch.sigmoid(output[:, a:b])
        elif role == "onehot":
            out[:, a:b] = torch.softmax(output[:, a:b], dim=1)
    return out


def draw_discrete(decoded: np.ndarray, blocks: Blocks, rng: np.random.Generator) -> np.ndarray:
    """Decoded probabilities (n, D) -> the same matrix with each 0/1 column drawn as Bernoulli(p) and each one-hot
    block as one level drawn from its probabilities (numbers unchanged). Where the decoder is sure this is its
    argmax; where it hesitates, rare levels and missing cells keep their share instead of vanishing."""
    out = decoded.copy()
    for _, role, a, b in blocks:
        if role in ("binary", "indicator") or (role == "onehot" and b - a == 1):
            out[:, a:b] = (rng.uniform(size=(len(out), b - a)) < decoded[:, a:b]).astype(np.float64)
        elif role == "onehot":
            cum = np.cumsum(decoded[:, a:b], axis=1)
            level = (rng.uniform(size=(len(out), 1)) * cum[:, -1:] > cum).sum(1)
            out[:, a:b] = np.eye(b - a)[np.minimum(level, b - a - 1)]
    return out
