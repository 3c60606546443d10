"""Models: the Merlin 3D encoder, the projector, the decoder (+ LoRA), tokenizers and CTVLModel.

Entry points, importable from ``ctvl.models`` (each loads its submodule on first use, so
``import ctvl.models`` stays light):

* :func:`~ctvl.models.ctvl.build_ctvl_model`, :class:`~ctvl.models.ctvl.CTVLModel` (``from_pretrained``);
* :func:`~ctvl.models.vision3d.build_image_encoder` (``vision.checkpoint`` loaded when set, else random),
  :func:`~ctvl.models.vision3d.load_merlin_image_encoder` (a Merlin ``.pt``, strictly, offline);
* :func:`~ctvl.models.decoder.load_decoder`;
* :func:`~ctvl.models.tokenizer.make_tokenizer` / :func:`~ctvl.models.tokenizer.load_tokenizer`.
"""

import importlib

_EXPORTS = {
    "build_ctvl_model": "ctvl.models.ctvl",
    "CTVLModel": "ctvl.models.ctvl",
    "build_image_encoder": "ctvl.models.vision3d",
    "load_merlin_image_encoder": "ctvl.models.vision3d",
    "load_decoder": "ctvl.models.decoder",
    "make_tokenizer": "ctvl.models.tokenizer",
    "load_tokenizer": "ctvl.models.tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ctvl.models' has no attribute {name!r}")
