"""CT data: volume I/O (``io``), CT-RATE and manifest readers, MONAI transforms and the preprocessing cache.

Entry points: :func:`ctvl.data.io.load_volume`, :func:`ctvl.data.manifest.load_manifest`,
:func:`ctvl.data.ctrate.load_ctrate`, :func:`ctvl.data.preprocess.run_preprocess`.
"""
