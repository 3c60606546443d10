"""Batch preprocessing job: a manifest (or CT-RATE) DataFrame -> a cache of preprocessed volumes.

Cache layout under ``cache_dir``::

    volumes/<key[:2]>/<key>.npy   one array (1, *roi_size) in cfg.cache_dtype per volume
    index.csv                     case_id, key, path, shape, fingerprint, content_sha256,
                                  source, source_size, source_mtime_ns
    errors.csv                    case_id, file, stage, reason, location (failures of the latest run)

A key is ``<digest>_<cfg.fingerprint()>``, the digest hashing the volume's file content (a DICOM folder:
its sorted files' contents), the loader arguments (CT-RATE rescaling) and the transform's name. A changed
config or input therefore never reuses a stale entry, and keys carry no patient identifier.

The job is resumable: ``index.csv`` is rewritten atomically (temp file + rename) every few finished
volumes, each ``.npy`` is written atomically, and a re-run skips every volume whose entry exists, without
loading it (a volume listed in the index with an unchanged file size and mtime is not even re-hashed). A
failing volume is recorded in ``errors.csv`` and the job goes on, and so is a bad manifest row (stage
``input``, with its CSV line in ``location``: see :mod:`ctvl.data.manifest`); a missing image file fails
at stage ``load``, as in ``ctvl predict``. Volumes are processed by
``workers`` spawned processes (``workers=0``: in this process); a worker killed by the system (out of
memory) costs only the volume it was processing.

Entry points: :func:`run_preprocess`, :func:`load_cached` (-> (1, *roi_size) float16),
:func:`load_cache_index`.

Example:
    >>> from ctvl.config import PreprocessConfig
    >>> summary = run_preprocess(manifest_df, "cache/", PreprocessConfig(), workers=4)  # doctest: +SKIP
    >>> image = load_cached("cache/", "case_001")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
import multiprocessing
import os
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import pandas as pd

from ctvl.config import CTRateConfig, PreprocessConfig
from ctvl.data.ctrate import ctrate_load_kwargs
from ctvl.data.io import CTVolume, load_volume
from ctvl.data.manifest import check_manifest, load_manifest_rows, record_rejected
from ctvl.utils.atomic import atomic_open
from ctvl.utils.errors import ErrorLog
from ctvl.utils.processes import die_with_parent

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the cache format or the meaning of a key changes."""
INDEX_COLUMNS = (
    "case_id", "key", "path", "shape", "fingerprint",
    "content_sha256", "source", "source_size", "source_mtime_ns",
)
FLUSH_EVERY = 8
"""Rewrite index.csv after this many newly finished volumes ..."""
FLUSH_SECONDS = 5.0
"""... or when this many seconds passed since the last rewrite."""
_CHUNK = 1 << 20

Transform = Callable[[CTVolume, PreprocessConfig], np.ndarray]


@dataclass
class PreprocessSummary:
    """What one :func:`run_preprocess` call did."""

    cache_dir: Path
    n_items: int
    n_processed: int
    """Volumes loaded, transformed and written in this run."""
    n_cached: int
    """Volumes whose cache entry already existed (skipped without loading)."""
    n_failed: int
    """Failed volumes, rejected manifest rows included."""
    seconds: float
    failed: list[str] = field(default_factory=list)
    """case_ids of the failures (details in ``errors_path``; "" for a row without an id)."""

    @property
    def index_path(self) -> Path:
        return self.cache_dir / "index.csv"

    @property
    def errors_path(self) -> Path:
        return self.cache_dir / "errors.csv"


@dataclass
class _Task:
    case_id: str
    image: str
    material: str
    load_kwargs: dict
    cfg: PreprocessConfig
    cache_dir: str
    transform: Optional[Transform]


@dataclass
class _Result:
    task: _Task
    status: str  # "done" | "cached" | "failed"
    row: Optional[dict] = None
    stage: str = ""
    reason: str = ""


def run_preprocess(
    items: pd.DataFrame | str | os.PathLike,
    cache_dir: str | os.PathLike,
    cfg: PreprocessConfig,
    *,
    workers: int = 2,
    ctrate_cfg: Optional[CTRateConfig] = None,
    progress: bool = True,
    transform: Optional[Transform] = None,
) -> PreprocessSummary:
    """Preprocess every volume of ``items`` into ``cache_dir`` (resumable, failures logged, never stops).

    Args:
        items: manifest DataFrame (``case_id``, ``image``; relative paths against the working directory), a
            :func:`~ctvl.data.ctrate.load_ctrate` frame, or a manifest file path. Bad rows (empty or
            duplicate ids, empty images, ...) are failures in ``errors.csv``, with their location (CSV
            line, or ``data row N`` of a frame); the other rows run.
        cache_dir: cache folder (created).
        cfg: preprocessing config; its ``fingerprint()`` is part of every key. ``on_unit_range`` and
            ``hu_window`` are passed to :func:`~ctvl.data.io.load_volume`.
        workers: worker processes (spawned); 0 runs everything in this process.
        ctrate_cfg: for CT-RATE frames: its ``release`` decides whether metadata rescaling applies.
        progress: show a tqdm progress bar.
        transform: picklable ``f(volume, cfg) -> np.ndarray (C, x, y, z)``; default
            :func:`ctvl.data.transforms.preprocess_volume`. Its qualified name is part of every key.

    Returns:
        PreprocessSummary with counts; ``index.csv`` lists every cached case, ``errors.csv`` every failure.

    Raises:
        ValueError: ``items`` cannot be read as a table, or lacks the ``case_id`` or ``image`` column.
    """
    if workers < 0:
        raise ValueError(f"`workers` must be >= 0, got {workers}")
    start = time.perf_counter()
    from_file = isinstance(items, (str, os.PathLike))
    rows = load_manifest_rows(items) if from_file else check_manifest(items, "items")
    df = rows.table
    cache = Path(cache_dir)
    (cache / "volumes").mkdir(parents=True, exist_ok=True)
    errors = ErrorLog(cache / "errors.csv", mode="w")
    record_rejected(errors, rows.rejected)
    if rows.rejected:
        logger.warning("preprocess: %d manifest row(s) rejected (see %s), e.g. %s: %s", len(rows.rejected),
                       errors.path, rows.rejected[0].location, rows.rejected[0].reason)
    index = _IndexWriter(cache, drop=set(df["case_id"]))
    tasks, n_cached, failed = _plan(df, cache, cfg, ctrate_cfg, transform, index, errors)
    failed = [r.case_id for r in rows.rejected] + failed
    n_items = len(df) + len(rows.rejected)
    summary = PreprocessSummary(cache, n_items, 0, n_cached, len(failed), 0.0, failed=failed)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=n_items, initial=n_cached + len(failed), disable=not progress, unit="vol", desc="preprocess"
    )
    try:
        for res in _execute(tasks, workers):
            _record(res, summary, index, errors)
            bar.update(1)
            bar.set_postfix(failed=summary.n_failed, refresh=False)
    finally:
        index.flush()
        bar.close()
    summary.seconds = time.perf_counter() - start
    logger.info(
        "preprocess: %d volumes, %d processed, %d cached, %d failed in %.1f s -> %s",
        summary.n_items, summary.n_processed, summary.n_cached, summary.n_failed, summary.seconds, cache,
    )
    return summary


def load_cached(
    cache_dir: str | os.PathLike, case_id: str, *, cfg: Optional[PreprocessConfig] = None, mmap: bool = False
) -> np.ndarray:
    """The cached array of ``case_id``: shape (C, x, y, z), the cache dtype (float16 by default).

    Args:
        cache_dir: a :func:`run_preprocess` cache.
        case_id: the manifest's case id.
        cfg: if given, refuse an entry written with another preprocessing config.
        mmap: memory-map the file instead of reading it.

    Raises:
        KeyError: ``case_id`` is not in the cache's index.
        ValueError: the entry was written with a config other than ``cfg``.
    """
    cache = Path(cache_dir)
    index_path = cache / "index.csv"
    stat = index_path.stat()
    row = _index_rows(str(index_path), stat.st_mtime_ns, stat.st_size).get(str(case_id))
    if row is None:
        raise KeyError(f"{case_id!r} is not in {index_path}")
    if cfg is not None and row["fingerprint"] != cfg.fingerprint():
        raise ValueError(
            f"{index_path}: {case_id!r} was cached with config {row['fingerprint']}, "
            f"not {cfg.fingerprint()}; "
            "re-run the preprocessing with this config"
        )
    return np.load(cache / row["path"], mmap_mode="r" if mmap else None)


def load_cache_index(cache_dir: str | os.PathLike) -> pd.DataFrame:
    """The cache's ``index.csv`` as a DataFrame (empty, with the index columns, when there is none)."""
    path = Path(cache_dir) / "index.csv"
    if not path.exists():
        return pd.DataFrame(columns=list(INDEX_COLUMNS))
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def hash_source(path: str | os.PathLike) -> str:
    """sha256 of a file's content, or of a folder's sorted (by name) files' contents, length-prefixed."""
    h = hashlib.sha256()
    for f in _source_files(Path(path)):
        h.update(f.stat().st_size.to_bytes(8, "little"))
        with open(f, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------- planning


def _plan(df, cache, cfg, ctrate_cfg, transform, index, errors) -> tuple[list[_Task], int, list[str]]:
    """Tasks for the volumes that need work; entries listed in the old index with unchanged files are kept.

    Returns:
        ``(tasks, n_cached, failed_case_ids)``.
    """
    fingerprint = cfg.fingerprint()
    tasks, n_cached, failed = [], 0, []
    for row in df.to_dict("records"):
        case_id, image = row["case_id"], row["image"]
        try:
            loader = ctrate_load_kwargs(row, ctrate_cfg) if ctrate_cfg is not None else {}
        except ValueError as exc:
            errors.add(case_id, image, "metadata", str(exc))
            failed.append(case_id)
            continue
        material = _key_material(loader, transform)
        old = index.old.get(case_id)
        if old is not None and old["source"] == image and _stat_signature(image) == _old_signature(old):
            key = _make_key(old["content_sha256"], material, fingerprint)
            if (cache / _rel_path(key)).exists():
                kept = {**old, "key": key, "path": _rel_path(key), "fingerprint": fingerprint}
                index.add(kept, count=False)
                n_cached += 1
                continue
        load_kwargs = {**loader, "on_unit_range": cfg.on_unit_range, "hu_window": tuple(cfg.hu_window),
                       "max_voxels": cfg.max_voxels}
        tasks.append(_Task(case_id, image, material, load_kwargs, cfg, str(cache), transform))
    return tasks, n_cached, failed


def _key_material(loader_kwargs: dict, transform: Optional[Transform]) -> str:
    name = "default" if transform is None else f"{transform.__module__}.{transform.__qualname__}"
    return f"v{CACHE_VERSION}|{sorted(loader_kwargs.items())}|{name}"


def _make_key(content_sha: str, material: str, fingerprint: str) -> str:
    digest = hashlib.sha256(f"{content_sha}|{material}".encode()).hexdigest()[:32]
    return f"{digest}_{fingerprint}"


def _rel_path(key: str) -> str:
    return f"volumes/{key[:2]}/{key}.npy"


def _source_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    return [path]


def _stat_signature(image: str) -> Optional[tuple[int, int]]:
    """(total size, latest mtime_ns) of a file or a folder's files; None if missing."""
    try:
        stats = [f.stat() for f in _source_files(Path(image))]
    except OSError:
        return None
    return (sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0))


def _old_signature(row: dict) -> Optional[tuple[int, int]]:
    try:
        return int(row["source_size"]), int(row["source_mtime_ns"])
    except (KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------- execution


def _execute(tasks: list[_Task], workers: int) -> Iterator[_Result]:
    """Results of ``tasks`` in completion order, from ``workers`` spawned processes (0: in process).

    A worker that dies (segfault, out-of-memory kill) breaks the pool. The tasks then in flight become
    suspects and are re-run one at a time in a one-worker pool, so only the task that kills its worker
    again is marked failed; the others then go on in a fresh pool.
    """
    if workers == 0:
        yield from map(_process, tasks)
        return
    queue, suspects = deque(tasks), deque()
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe once torch/OpenMP threads exist
    while queue or suspects:
        isolate = bool(suspects)
        n = 1 if isolate else workers
        # Workers die with us, even after a kill -9 (else they run on, re-parented to PID 1).
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            yield from _drain(pool, suspects if isolate else queue, 1 if isolate else 2 * n, suspects)


def _drain(pool: ProcessPoolExecutor, source: deque, limit: int, suspects: deque) -> Iterator[_Result]:
    """Run tasks from ``source`` with at most ``limit`` in flight until it is empty or the pool breaks."""
    isolated = source is suspects
    futures, broken = {}, False
    while futures or (source and not broken):
        while source and not broken and len(futures) < limit:
            task = source.popleft()
            try:
                futures[pool.submit(_process, task)] = task
            except BrokenProcessPool:
                source.appendleft(task)
                broken = True
        if not futures:
            break
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        for fut in done:
            task = futures.pop(fut)
            try:
                yield fut.result()
            except BrokenProcessPool:
                broken = True
                if isolated:
                    reason = "worker process died while processing this volume (out of memory?)"
                    yield _Result(task, "failed", stage="worker", reason=reason)
                else:
                    suspects.append(task)


def _process(task: _Task) -> _Result:
    """Hash, then (unless the entry exists) load, transform and save one volume. Never raises."""
    if not os.path.exists(task.image):  # stage "load", as in ctvl predict
        return _Result(task, "failed", stage="load", reason=f"no such file or folder: {task.image}")
    stage = "hash"
    try:
        signature = _stat_signature(task.image)
        sha = hash_source(task.image)
        fingerprint = task.cfg.fingerprint()
        key = _make_key(sha, task.material, fingerprint)
        out = Path(task.cache_dir) / _rel_path(key)
        row = {"case_id": task.case_id, "key": key, "path": _rel_path(key), "fingerprint": fingerprint,
               "content_sha256": sha, "source": task.image, "source_size": signature[0],
               "source_mtime_ns": signature[1]}
        if out.exists():
            return _Result(task, "cached", {**row, "shape": _shape_str(np.load(out, mmap_mode="r").shape)})
        stage = "load"
        volume = load_volume(task.image, **task.load_kwargs)
        stage = "transform"
        array = _transform(volume, task)
        stage = "save"
        _save_atomic(array.astype(task.cfg.cache_dtype), out)
        return _Result(task, "done", {**row, "shape": _shape_str(array.shape)})
    except Exception as exc:  # one bad volume must not stop the job
        return _Result(task, "failed", stage=stage, reason=f"{type(exc).__name__}: {exc}")


def _transform(volume: CTVolume, task: _Task) -> np.ndarray:
    fn = task.transform
    if fn is None:
        from ctvl.data.transforms import preprocess_volume as fn
    array = np.asarray(fn(volume, task.cfg))
    if array.ndim != 4 or not np.isfinite(array).all():
        raise ValueError(f"transform returned shape {array.shape} (want (C, x, y, z)) or non-finite values")
    return array


def _save_atomic(array: np.ndarray, path: Path) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, array)


def _record(res: _Result, summary: PreprocessSummary, index: "_IndexWriter", errors: ErrorLog) -> None:
    if res.status == "failed":
        errors.add(res.task.case_id, res.task.image, res.stage, res.reason)
        logger.warning("%s: %s failed: %s", res.task.case_id, res.stage, res.reason)
        summary.n_failed += 1
        summary.failed.append(res.task.case_id)
        return
    index.add(res.row)
    if res.status == "done":
        summary.n_processed += 1
    else:
        summary.n_cached += 1


def _shape_str(shape: Iterable[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


# ------------------------------------------------------------------------------- index


class _IndexWriter:
    """index.csv rows by case_id, rewritten atomically every FLUSH_EVERY rows or FLUSH_SECONDS."""

    def __init__(self, cache: Path, drop: set[str]):
        self.path = cache / "index.csv"
        self.old = _read_index(self.path)
        # Rows of cases in this run are re-added once confirmed; rows of other cases are kept.
        self.rows = {cid: row for cid, row in self.old.items() if cid not in drop}
        self.pending, self.last_flush = 0, time.monotonic()

    def add(self, row: dict, count: bool = True) -> None:
        """Add/replace a row; ``count=False`` (rows kept while planning) never triggers a rewrite."""
        self.rows[row["case_id"]] = row
        if not count:
            return
        self.pending += 1
        if self.pending >= FLUSH_EVERY or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        with atomic_open(self.path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=INDEX_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows[k] for k in sorted(self.rows))
        self.pending, self.last_flush = 0, time.monotonic()


def _read_index(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        return {row["case_id"]: row for row in csv.DictReader(fh)}


@functools.lru_cache(maxsize=4)
def _index_rows(path: str, mtime_ns: int, size: int) -> dict[str, dict]:
    """index.csv by case_id, cached while the file is unchanged (``load_cached`` is called per sample)."""
    return _read_index(Path(path))
