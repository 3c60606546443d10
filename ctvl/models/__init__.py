"""Models: the Merlin 3D encoder, the projector, the decoder (+ LoRA), tokenizers and CTVLModel.

Entry points: :func:`ctvl.models.ctvl.build_ctvl_model`, :meth:`ctvl.models.ctvl.CTVLModel.from_pretrained`,
:func:`ctvl.models.vision3d.load_merlin_image_encoder`, :func:`ctvl.models.decoder.load_decoder`,
:func:`ctvl.models.tokenizer.make_tokenizer` / :func:`ctvl.models.tokenizer.load_tokenizer`.
Submodules are imported on use, so ``import ctvl.models`` stays light.
"""
