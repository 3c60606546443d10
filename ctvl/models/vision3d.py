"""Merlin-compatible 3D image encoder: an I3D-inflated ResNet (ResNet-152 by default).

The network reproduces the layout of Merlin's ``merlin/models/i3res.py`` (itself built on
``inflated_convnets_pytorch``) so that Merlin checkpoints load key for key:

* input ``(B, 1, x, y, z)`` (RAS, see :mod:`ctvl.config`), permuted to ``(B, 1, z, x, y)`` and repeated
  to 3 channels, exactly as Merlin's ``I3ResNet.forward`` does;
* stem: ``Conv3d(3, w, (3, 7, 7), stride (1, 2, 2), padding (1, 3, 3), no bias)`` -> BN -> ReLU ->
  ``MaxPool3d(3, stride 2, padding 1)`` on all three axes;
* torchvision v1.5 bottlenecks: conv1 ``1x1x1``, conv2 ``3x3x3`` with stride ``s`` on all axes,
  conv3 ``1x1x1`` (expansion 4), downsample ``1x1x1`` stride ``s`` + BN;
* output permuted back to ctvl's axis order: ``(B, C, x, y, z)``, e.g. ``(B, 2048, 7, 7, 10)`` for a
  ``224 x 224 x 160`` volume.

Merlin keeps the 2D ``BatchNorm2d`` modules; their state dicts equal those of ``BatchNorm3d`` (weight,
bias, running_mean, running_var, num_batches_tracked), which ctvl uses.

Entry points: :func:`build_image_encoder` (random init from a :class:`~ctvl.config.VisionConfig`),
:func:`load_merlin_image_encoder` (from a local Merlin checkpoint, offline), and
:func:`compute_feature_shape` (output grid size without running the network).

Example:
    >>> enc = build_image_encoder(VisionConfig(layers=(1, 1, 1, 1), base_width=8))
    >>> enc(torch.zeros(1, 1, 32, 32, 32)).shape  # (B, C, x, y, z)
    torch.Size([1, 256, 1, 1, 2])
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ctvl.config import VisionConfig

logger = logging.getLogger(__name__)

MERLIN_IMAGE_PREFIX = "encode_image.i3_resnet."
"""Prefix of the image-encoder keys in a Merlin checkpoint."""
MERLIN_UNUSED_HEADS = ("classifier.", "contrastive_head.")
"""Keys under :data:`MERLIN_IMAGE_PREFIX` that belong to Merlin's heads, not to the encoder."""


class Bottleneck3d(nn.Module):
    """Inflated torchvision-v1.5 bottleneck (stride on the 3x3x3 conv, on every axis).

    Args:
        inplanes: input channels.
        planes: bottleneck width; the block outputs ``4 * planes`` channels.
        stride: stride of ``conv2`` and of the downsample branch, applied to all three axes.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv3d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(
                nn.Conv3d(inplanes, out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm3d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class MerlinImageEncoder(nn.Module):
    """The I3D ResNet trunk of Merlin (no classifier / contrastive heads).

    Args:
        layers: bottleneck blocks per stage (ResNet-152: ``(3, 8, 36, 3)``).
        base_width: stem channels (64 for ResNet-152); the output has ``32 * base_width`` channels.
        frozen: keep BatchNorm in eval mode whatever ``train()`` is called with, so that the
            running statistics of a frozen encoder never move.
        gradient_checkpointing: recompute each stage in backward (only when training with grads).
    """

    def __init__(
        self,
        layers: tuple[int, int, int, int] = (3, 8, 36, 3),
        base_width: int = 64,
        frozen: bool = True,
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"`vision.layers` needs four positive block counts, got {layers}")
        if base_width < 1:
            raise ValueError(f"`vision.base_width` must be >= 1, got {base_width}")
        self.frozen = frozen
        self.gradient_checkpointing = gradient_checkpointing
        self.conv1 = nn.Conv3d(3, base_width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        inplanes = base_width
        for i, (blocks, stride) in enumerate(zip(layers, (1, 2, 2, 2)), start=1):
            planes = base_width * 2 ** (i - 1)
            stage = [Bottleneck3d(inplanes, planes, stride)]
            inplanes = planes * Bottleneck3d.expansion
            stage += [Bottleneck3d(inplanes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*stage))
        self.out_channels = inplanes
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision ResNet init; the last BN of each block starts at 1 (not zero-init).
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> "MerlinImageEncoder":
        """Like ``nn.Module.train`` but a frozen encoder always stays in eval mode."""
        return super().train(mode and not self.frozen)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Encode a batch of CT volumes.

        Args:
            image (torch.Tensor, float): shape ``(B, 1, x, y, z)``, RAS, intensities in [0, 1].

        Returns:
            torch.Tensor: ``(B, C, x', y', z')`` feature map (``(B, 2048, 7, 7, 10)`` for ResNet-152
            on ``224 x 224 x 160``).
        """
        if image.dim() != 5 or image.shape[1] != 1:
            raise ValueError(f"image must have shape (B, 1, x, y, z), got {tuple(image.shape)}")
        x = image.permute(0, 1, 4, 2, 3)  # (B, 1, x, y, z) -> (B, 1, z, x, y), Merlin's order
        x = torch.cat((x, x, x), dim=1)  # (B, 3, z, x, y)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, w, z/2, x/4, y/4)
        use_ckpt = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = checkpoint(stage, x, use_reentrant=False) if use_ckpt else stage(x)
        return x.permute(0, 1, 3, 4, 2)  # (B, C, z', x', y') -> (B, C, x', y', z')


def random_image_encoder(cfg: VisionConfig) -> MerlinImageEncoder:
    """Random-init encoder of ``cfg``'s shape (``cfg.checkpoint`` is not read); a frozen one has
    ``requires_grad=False`` and stays in eval. For weights loaded into it afterwards, or none at all."""
    enc = MerlinImageEncoder(cfg.layers, cfg.base_width, cfg.frozen, cfg.gradient_checkpointing)
    if cfg.frozen:
        enc.requires_grad_(False)
        enc.eval()
    return enc


def build_image_encoder(cfg: VisionConfig) -> MerlinImageEncoder:
    """The encoder of a config: ``cfg.checkpoint`` (a Merlin ``.pt``) loaded strictly when set, else random.

    The one place that decides between the two (see :func:`load_merlin_image_encoder` for the loading).
    """
    if cfg.checkpoint:
        return load_merlin_image_encoder(cfg.checkpoint, cfg)
    return random_image_encoder(cfg)


def compute_feature_shape(roi_size: tuple[int, int, int], num_stages: int = 4) -> tuple[int, int, int]:
    """Output grid ``(x', y', z')`` of the encoder for an input of ``roi_size`` voxels ``(x, y, z)``.

    Pure shape arithmetic of the stem (stride 1 on z, 2 in-plane), the max-pool (stride 2) and the
    stride-2 stages 2-4 (kernel 3, padding 1): ``n -> floor((n - 1) / 2) + 1``.

    Example:
        >>> compute_feature_shape((224, 224, 160))
        (7, 7, 10)
    """

    def halve(n: int) -> int:
        return (n - 1) // 2 + 1

    out = []
    for axis, n in enumerate(roi_size):
        n = halve(n) if axis < 2 else n  # stem: stride 2 in-plane, 1 along z
        for _ in range(num_stages):  # the max-pool, then the stride-2 stages 2..num_stages
            n = halve(n)
        out.append(n)
    return tuple(out)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ValueError(f"Merlin checkpoint {str(path)!r} does not exist (vision.checkpoint)")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict or {{'state_dict': ...}}, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _extract_image_keys(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    image = {
        k[len(MERLIN_IMAGE_PREFIX) :]: v for k, v in state.items() if k.startswith(MERLIN_IMAGE_PREFIX)
    }
    if not image:
        raise ValueError(f"{path}: no '{MERLIN_IMAGE_PREFIX}*' keys; is this a Merlin checkpoint?")
    skipped = len(state) - len(image)
    image = {k: v for k, v in image.items() if not k.startswith(MERLIN_UNUSED_HEADS)}
    logger.info("%s: %d image-encoder tensors (%d other keys ignored)", path, len(image), skipped)
    return image


def _check_compatible(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    problems = [f"missing: {k} {tuple(v.shape)}" for k, v in expected.items() if k not in state]
    problems += [f"unexpected: {k} {tuple(v.shape)}" for k, v in state.items() if k not in expected]
    problems += [
        f"shape mismatch: {k} checkpoint {tuple(v.shape)} != model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        raise ValueError(
            f"{path} does not fit the image encoder (keys relative to '{MERLIN_IMAGE_PREFIX}'):\n  "
            + "\n  ".join(problems)
        )


def load_merlin_image_encoder(path: str | Path, cfg: VisionConfig = VisionConfig()) -> MerlinImageEncoder:
    """Build the encoder of ``cfg`` and load a local Merlin checkpoint into it, strictly and offline.

    Reads ``path`` with ``torch.load(weights_only=True)`` (a raw state dict or ``{"state_dict": ...}``),
    keeps the ``encode_image.i3_resnet.*`` keys and ignores the text encoder (``encode_text.*``),
    ``logit_scale`` and Merlin's ``classifier``/``contrastive_head``.

    Args:
        path: the Merlin ``.pt`` file (e.g. ``i3_resnet_clinical_longformer_best_clip_*.pt``).
        cfg: encoder shape and frozen/checkpointing flags (``cfg.checkpoint`` is ignored: ``path`` is read;
            :func:`build_image_encoder` reads ``cfg.checkpoint``).

    Returns:
        MerlinImageEncoder: loaded, frozen and in eval mode when ``cfg.frozen``.

    Raises:
        ValueError: file missing, no image keys, or any missing/unexpected/shape-mismatched key
            (all listed by name in one message).
    """
    path = Path(path)
    state = _extract_image_keys(_read_state_dict(path), path)
    model = random_image_encoder(cfg)
    _check_compatible(model, state, path)
    model.load_state_dict(state, strict=True)
    return model
