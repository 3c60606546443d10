"""Inference after training: batch risk prediction, VQA answers with per-case reports, evaluation.

One entry point per CLI sub-command (imported lazily by ``ctvl.cli``):

* ``ctvl predict``  -> :func:`ctvl.infer.predict.run_predict` (+ :func:`ctvl.infer.predict.merge_shards`)
* ``ctvl generate`` -> :func:`ctvl.infer.generate.run_generate`
* ``ctvl evaluate`` -> :func:`ctvl.infer.evaluate.run_evaluate`
* ``ctvl encode``   -> :func:`ctvl.infer.encode.run_encode`

The shared-prefix question ensemble lives in :mod:`ctvl.infer.prefix`, input resolution (manifest,
NIfTI folder, DICOM-series folder, clinical context) in :mod:`ctvl.infer.inputs`, HTML/Markdown and
figures in :mod:`ctvl.infer.report`. Submodules are not imported here, so ``import ctvl.infer`` stays cheap.
"""
