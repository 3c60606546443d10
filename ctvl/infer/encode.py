"""``ctvl encode``: run the frozen image encoder once over a preprocessed-volume cache.

Fills the feature cache of :mod:`ctvl.data.feature_cache`; training then reads ``(C, x, y, z)``
maps instead of re-encoding volumes every epoch. Resumable (cached cases are skipped), batched,
bf16 on GPU, with failures recorded in ``errors.csv``.

Example:
    >>> run_encode(encoder, "cache/images", "cache/features")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctvl.data import feature_cache as fc
from ctvl.data.preprocess import load_cache_index, load_cached
from ctvl.utils.errors import ErrorLog

log = logging.getLogger(__name__)

FLUSH_SECONDS = 10.0
"""Rewrite the feature index at least this often while volumes finish."""


@dataclass
class EncodeSummary:
    n_cases: int
    n_encoded: int
    n_skipped: int
    n_failed: int


def encoder_fingerprint(encoder: nn.Module) -> str:
    """sha256 over the encoder's parameters and buffers (names, shapes, values)."""
    h = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


@torch.no_grad()
def run_encode(encoder: nn.Module, image_cache: str | Path, out_dir: str | Path, *, batch_size: int = 2,
               device: str | None = None, progress: bool = True) -> EncodeSummary:
    """Encode every volume of ``image_cache`` not yet in ``out_dir``.

    Args:
        encoder: ``(B, 1, x, y, z) -> (B, C, x', y', z')`` (a frozen ``MerlinImageEncoder``).
        image_cache: a ``ctvl preprocess`` cache.
        out_dir: the feature cache to fill.
        batch_size: volumes per forward pass.
        device: default: CUDA when available (bf16 autocast), else CPU (fp32).
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder = encoder.to(device).eval()
    fingerprint = encoder_fingerprint(encoder)
    (out / "encoder.json").write_text(json.dumps({"encoder": fingerprint}))
    rows = fc.read_index(out)
    images = load_cache_index(image_cache)
    todo = []
    for case_id, image_key in zip(images["case_id"], images["key"]):
        key = fc.feature_key(image_key, fingerprint)
        if case_id in rows and rows[case_id]["key"] == key and (out / rows[case_id]["path"]).exists():
            continue
        todo.append((case_id, image_key, key))
    errors = ErrorLog(out / "errors.csv")
    summary = EncodeSummary(len(images), 0, len(images) - len(todo), 0)
    last_flush = time.monotonic()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    for start in tqdm(range(0, len(todo), batch_size), disable=not progress, desc="encode", unit="batch"):
        batch = todo[start:start + batch_size]
        try:
            volumes = np.stack([np.asarray(load_cached(image_cache, cid), dtype=np.float32) for cid, _, _ in batch])
            with autocast:
                feats = encoder(torch.from_numpy(volumes).to(device)).float().cpu().numpy()  # (B, C, x, y, z)
        except Exception as err:  # noqa: BLE001 -- one bad volume must not stop the job
            for cid, _, _ in batch:
                errors.add(cid, str(image_cache), "encode", f"{type(err).__name__}: {err}")
            summary.n_failed += len(batch)
            continue
        for (cid, image_key, key), feat in zip(batch, feats):
            try:
                rel = fc.save_feature(out, key, feat)
            except ValueError as err:
                errors.add(cid, str(image_cache), "encode", str(err))
                summary.n_failed += 1
                continue
            rows[cid] = {"case_id": cid, "key": key, "path": rel, "shape": "x".join(map(str, feat.shape)),
                         "encoder": fingerprint, "image_key": image_key}
            summary.n_encoded += 1
        # Rewriting the whole index after every batch is quadratic over a 50k-volume cache; a killed job
        # re-encodes at most the last FLUSH_SECONDS of volumes.
        if time.monotonic() - last_flush >= FLUSH_SECONDS:
            fc.write_index(out, rows)
            last_flush = time.monotonic()
    fc.write_index(out, rows)
    log.info("encoded %d, skipped %d (cached), failed %d of %d volumes", summary.n_encoded,
             summary.n_skipped, summary.n_failed, summary.n_cases)
    return summary
