"""open_clip's ``ClipLoss`` for the contrastive stage 0, loadable on any torch build.

``import open_clip`` runs its package ``__init__``, which imports torchvision (for open_clip's image
towers); torchvision wheels must match the torch build (the PyPI ones need CUDA torch libraries), so
on a CPU-only torch the import fails. ``open_clip/loss.py`` needs only torch: when the package import
fails, :func:`load_clip_loss_class` executes that file directly from the installed distribution.
ctvl never reimplements the loss.

Install: ``pip install 'ctvl[clip]'`` (open_clip + torchvision), or ``pip install --no-deps open_clip_torch``
next to a CPU-only torch.

Example (``u``, ``v``: unit-norm image and report features ``(B, D)``, ``s``: the logit scale):
    >>> loss = build_clip_loss()(u, v, s)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
from pathlib import Path

from torch import nn

from ctvl.train.engine import rank, world_size

log = logging.getLogger(__name__)

CLIP_INSTALL_HINT = ("the contrastive stage needs open_clip's ClipLoss: pip install 'ctvl[clip]' "
                     "(with a CPU-only torch: pip install --no-deps open_clip_torch)")


@functools.lru_cache(maxsize=None)
def load_clip_loss_class() -> type:
    """open_clip's ``ClipLoss``, read from ``open_clip/loss.py`` itself when ``import open_clip`` fails.

    The package ``__init__`` imports torchvision (for its image towers), whose wheels must match the torch
    build; ``loss.py`` needs only torch. Raises ``ImportError`` with the install line when open_clip is absent.
    """
    try:
        from open_clip.loss import ClipLoss

        return ClipLoss
    except (ImportError, RuntimeError) as err:  # torchvision missing, or built for another torch
        spec = importlib.util.find_spec("open_clip")  # locates the package without running its __init__
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(CLIP_INSTALL_HINT) from err
        log.debug("import open_clip failed (%s): loading open_clip/loss.py directly", err)
    path = Path(list(spec.submodule_search_locations)[0]) / "loss.py"
    file_spec = importlib.util.spec_from_file_location("_open_clip_loss", path)
    module = sys.modules["_open_clip_loss"] = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module.ClipLoss


def build_clip_loss() -> nn.Module:
    """open_clip's ``ClipLoss`` on the global batch: features of all ranks gathered with their gradients."""
    return load_clip_loss_class()(local_loss=False, gather_with_grad=True, cache_labels=True,
                                  rank=rank(), world_size=world_size())
