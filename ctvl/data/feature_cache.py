"""Frozen-encoder feature cache: encoder maps ``(C, x, y, z)`` in float16, one ``.npy`` per volume.

The encoder is frozen in both training stages, so encoding every volume every epoch wastes most of
the compute: ``ctvl encode`` (:func:`ctvl.infer.encode.run_encode`) fills this cache once and
training reads it (``data.feature_cache``).

Layout under ``cache_dir``::

    features/<key[:2]>/<key>.npy   (C, x, y, z) float16, axes as ``MerlinImageEncoder`` returns them
    features.csv                   case_id, key, path, shape, encoder, image_key
    encoder.json                   the encoder fingerprint every entry was made with

``key = sha256(image cache key, encoder fingerprint)``: like the preprocessing cache, a changed
volume, preprocessing config or encoder never reuses an entry.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from ctvl.utils.atomic import atomic_open

logger = logging.getLogger(__name__)

INDEX = "features.csv"
COLUMNS = ("case_id", "key", "path", "shape", "encoder", "image_key")


def feature_key(image_key: str, encoder_fingerprint: str) -> str:
    return hashlib.sha256(f"{image_key}|{encoder_fingerprint}".encode()).hexdigest()[:32]


def read_index(cache_dir: str | os.PathLike) -> dict[str, dict]:
    path = Path(cache_dir) / INDEX
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        return {row["case_id"]: row for row in csv.DictReader(fh)}


def write_index(cache_dir: str | os.PathLike, rows: dict[str, dict]) -> None:
    """Rewrite the index atomically (temp file + rename)."""
    path = Path(cache_dir) / INDEX
    with atomic_open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows[k] for k in sorted(rows))


def save_feature(cache_dir: str | os.PathLike, key: str, array: np.ndarray) -> str:
    """Write one ``(C, x, y, z)`` map atomically; returns its path relative to the cache.

    float16, unless a value exceeds float16's range (65504; e.g. an encoder without trained BatchNorm
    statistics): then float32, with a warning, rather than silently storing inf.

    Raises:
        ValueError: the map holds NaN or inf.
    """
    array = np.asarray(array)
    if not np.isfinite(array).all():
        raise ValueError("encoder features hold NaN or inf")
    dtype = np.float16
    if np.abs(array).max() > np.finfo(np.float16).max:
        logger.warning("features of %s exceed the float16 range: stored as float32", key)
        dtype = np.float32
    rel = f"features/{key[:2]}/{key}.npy"
    path = Path(cache_dir) / rel
    with atomic_open(path, "wb") as fh:
        np.save(fh, array.astype(dtype))
    return rel


@functools.lru_cache(maxsize=4)
def _index_cached(path: str, mtime_ns: int, size: int) -> dict[str, dict]:
    return read_index(Path(path).parent)


def load_features(cache_dir: str | os.PathLike, case_id: str) -> np.ndarray:
    """The cached encoder map of ``case_id``: ``(C, x, y, z)`` float16.

    Raises:
        KeyError: ``case_id`` is not in the cache.
    """
    index = Path(cache_dir) / INDEX
    stat = index.stat()
    row = _index_cached(str(index), stat.st_mtime_ns, stat.st_size).get(str(case_id))
    if row is None:
        raise KeyError(f"{case_id!r} is not in {index}")
    return np.load(Path(cache_dir) / row["path"])


def cache_encoder(cache_dir: str | os.PathLike) -> str | None:
    """The encoder fingerprint recorded in ``encoder.json`` (None for an empty cache)."""
    path = Path(cache_dir) / "encoder.json"
    return json.loads(path.read_text())["encoder"] if path.exists() else None
