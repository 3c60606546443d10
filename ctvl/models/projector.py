"""Visual tokens and the projector into the decoder's embedding space (H_v = W Z_v).

Two steps, both driven by :class:`~ctvl.config.ProjectorConfig`:

1. :func:`pool_visual_tokens` turns the encoder map ``(B, C, x, y, z)`` into tokens ``(B, N, C)``:

   * ``"mean_z"`` (default): average over z, then flatten ``(x, y)`` **x-major** (token
     ``i_x * Y + i_y``) -> ``N = x * y`` (49 for Merlin's ``7 x 7 x 10`` map). This is the paper's
     "averaged over the last (spatial) dimension" read in ctvl's ``(x, y, z)`` axis order.
   * ``"none"``: every voxel, flattened x-major then y then z (token ``(i_x * Y + i_y) * Z + i_z``)
     -> ``N = x * y * z`` (490), as Merlin's report generator feeds RadLLaMA (its order is z-major).
   * ``"adaptive"``: average over z, then adaptive average pooling of the ``(x, y)`` grid to a
     ``g x g`` grid with ``g * g = num_tokens`` (x-major).

2. :func:`build_projector` maps ``C -> D_llm``: ``"linear"`` is the paper's ``W`` (``nn.Linear``,
   state-dict keys ``weight``/``bias``); ``"mlp2x_gelu"`` is LLaVA-1.5's ``Linear -> GELU -> Linear``
   with LLaVA's ``mm_projector`` keys (``0.*``, ``2.*``).

:func:`num_image_tokens` gives ``N`` for a feature-map shape; the prompt builder expands ``<image>``
to that many copies.

Example:
    >>> feats = torch.randn(2, 16, 7, 7, 10)
    >>> pool_visual_tokens(feats, ProjectorConfig()).shape
    torch.Size([2, 49, 16])
    >>> num_image_tokens(ProjectorConfig(token_pooling="none"), (7, 7, 10))
    490
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ctvl.config import ProjectorConfig


def _adaptive_grid(num_tokens: int) -> int:
    side = math.isqrt(num_tokens)
    if num_tokens < 1 or side * side != num_tokens:
        raise ValueError(
            f"`projector.num_tokens` must be a perfect square (g * g tokens) for "
            f'token_pooling="adaptive", got {num_tokens}'
        )
    return side


def num_image_tokens(cfg: ProjectorConfig, feature_shape: tuple[int, ...]) -> int:
    """Number of visual tokens per image.

    Args:
        cfg: projector config (``token_pooling``, ``num_tokens``).
        feature_shape: the encoder output grid ``(x, y, z)``; longer shapes such as ``(C, x, y, z)`` or
            ``(B, C, x, y, z)`` are accepted and their last three entries used.

    Returns:
        int: ``x * y`` for ``"mean_z"``, ``x * y * z`` for ``"none"``, ``num_tokens`` for ``"adaptive"``.
    """
    if len(feature_shape) < 3:
        raise ValueError(f"feature_shape needs (x, y, z), got {tuple(feature_shape)}")
    x, y, z = (int(n) for n in feature_shape[-3:])
    if cfg.token_pooling == "mean_z":
        return x * y
    if cfg.token_pooling == "none":
        return x * y * z
    _adaptive_grid(cfg.num_tokens)
    return cfg.num_tokens


def pool_visual_tokens(features: torch.Tensor, cfg: ProjectorConfig) -> torch.Tensor:
    """Encoder feature map -> visual token sequence (see the module docstring for the orders).

    Args:
        features (torch.Tensor, float): shape ``(B, C, x, y, z)``.
        cfg: projector config.

    Returns:
        torch.Tensor: ``(B, N, C)`` with ``N = num_image_tokens(cfg, features.shape)``.
    """
    if features.dim() != 5:
        raise ValueError(f"features must be (B, C, x, y, z), got {tuple(features.shape)}")
    if cfg.token_pooling == "none":
        return features.flatten(2).transpose(1, 2)  # (B, C, x, y, z) -> (B, x*y*z, C)
    grid = features.mean(dim=-1)  # (B, C, x, y, z) -> (B, C, x, y)
    if cfg.token_pooling == "adaptive":
        side = _adaptive_grid(cfg.num_tokens)
        grid = F.adaptive_avg_pool2d(grid, (side, side))  # (B, C, x, y) -> (B, C, g, g)
    return grid.flatten(2).transpose(1, 2)  # (B, C, x, y) -> (B, x*y, C), x-major


def build_projector(cfg: ProjectorConfig, in_dim: int, out_dim: int) -> nn.Module:
    """The projection ``W``: ``(B, N, in_dim) -> (B, N, out_dim)``.

    Args:
        cfg: ``cfg.kind`` selects ``"linear"`` or ``"mlp2x_gelu"``.
        in_dim: visual channels C (2048 for Merlin).
        out_dim: decoder hidden size D_llm (4096 for Llama-2-7B).
    """
    if cfg.kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if cfg.kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"`projector.kind` must be 'linear' or 'mlp2x_gelu', got {cfg.kind!r}")
