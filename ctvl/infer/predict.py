"""``ctvl predict``: risk scores for thousands of CT volumes, streamed, resumable and sharded.

For each case: load + preprocess the volume (DataLoader worker processes, overlapping the model), encode
it, and score the questions with the shared-prefix ensemble (:mod:`ctvl.infer.prefix`). Output columns:

    case_id          the input's case id
    risk             mean over the questions of the per-question risk (the paper's ensemble)
    risk_<qid>       per-question risk (Cox log-hazard, or DeepHit ``K - E[bin]``)
    surv_<h>         DeepHit: survival probability at horizon h (mean of the per-question curves, read at
                     the last cut <= h of ``model/time_bins.json``); by default at every cut
    has_context      whether the prompt had a clinical-context sentence

Files (``out`` = ``predictions.csv`` or ``.parquet``)::

    predictions.csv                  sorted by case_id; rewritten atomically (temp + rename) per chunk
    errors.csv                       case_id, file, stage, reason of every failed case of this run
    predictions.z_surv.npy           (n, D) float32 mean survival latents, rows = output rows
                                     (``save_embeddings``)
    predictions.z_surv.parts/        the latents while the run goes on (removed once the .npy is written)
    predictions.csv.rank<k>          per-rank output under sharding; :func:`merge_shards` combines them

A rerun skips the cases already in the output (``resume``); a killed job leaves the last complete chunk.

Entry points: :func:`run_predict` -> :class:`PredictSummary`, :func:`merge_shards`, :func:`load_predictions`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ctvl.config import PreprocessConfig
from ctvl.data.tables import read_table, table_format, write_table
from ctvl.infer.inputs import (
    ModelRun,
    CONTEXT_STAGE,
    NO_CONTEXT_REASON,
    iter_volume_batches,
    load_model_run,
    model_contexts,
    resolve_inputs,
    resolve_preprocess,
    resolve_questions,
)
from ctvl.infer.prefix import score_questions
from ctvl.utils.atomic import atomic_open
from ctvl.utils.errors import ErrorLog, load_errors

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 60.0
"""Rewrite the output at least this often (seconds) while cases finish."""


@dataclass
class PredictSummary:
    """What one :func:`run_predict` call did; ``exit_code`` is 0 only when nothing failed."""

    out_path: Path
    n_cases: int
    """Cases of this rank's share of the input (unique ids)."""
    n_predicted: int
    n_skipped: int
    """Already in the output (resume)."""
    n_failed: int
    """Cases that failed (listed in ``errors_path``), duplicate ids included."""
    n_no_context: int
    """Cases predicted without a clinical-context sentence although a template was given."""
    seconds: float
    errors_path: Path
    embeddings_path: Optional[Path] = None
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.n_failed == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def resolve_shard(shard: Optional[tuple[int, int]]) -> tuple[int, int]:
    """``(rank, world)``: the argument, else torch.distributed, else ``RANK``/``WORLD_SIZE``, else (0, 1)."""
    if shard is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shard = (torch.distributed.get_rank(), torch.distributed.get_world_size())
        else:
            shard = (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
    rank, world = (int(v) for v in shard)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    return rank, world


# ------------------------------------------------------------------------------ output files


def shard_path(out_path: str | os.PathLike, rank: int) -> Path:
    return Path(f"{out_path}.rank{rank}")


def errors_path(out_path: str | os.PathLike, rank: Optional[int] = None) -> Path:
    name = "errors.csv" if rank is None else f"errors.rank{rank}.csv"
    return Path(out_path).parent / name


def embeddings_path(out_path: str | os.PathLike) -> Path:
    """``predictions.csv`` -> ``predictions.z_surv.npy`` (rows aligned with the output's rows)."""
    return Path(out_path).with_suffix(".z_surv.npy")


def _parts_dir(out_path: str | os.PathLike, rank: Optional[int] = None) -> Path:
    """Work folder of the latents while a run goes on: ``predictions.z_surv.parts`` (``.rank<k>.parts``
    per rank); removed once ``predictions.z_surv.npy`` is written."""
    base = embeddings_path(out_path).with_suffix("")
    return Path(f"{base}.parts" if rank is None else f"{base}.rank{rank}.parts")


def load_predictions(path: str | os.PathLike, fmt: Optional[str] = None) -> pd.DataFrame:
    """Read a predictions file (CSV or Parquet by suffix, or ``fmt``), ``case_id`` as str."""
    df = read_table(path, "predictions file", fmt)
    if "case_id" not in df.columns:
        raise ValueError(f"{path}: not a predictions file (no case_id column)")
    return df


class _Output:
    """Prediction rows by case_id (+ optional latents), flushed atomically to ``path``."""

    def __init__(self, path: Path, fmt: str, resume: bool, parts: Optional[Path], columns: list[str],
                 finished_latents: Optional[Path] = None):
        self.path, self.fmt = path, fmt
        self.rows: dict[str, dict] = {}
        if resume and path.exists():
            try:
                old = load_predictions(path, fmt)
            except Exception as err:  # noqa: BLE001 -- a foreign file must not be overwritten silently
                raise ValueError(f"{path}: cannot read the existing output to resume ({err}); "
                                 "move it away or pass resume=False") from err
            if list(old.columns) != columns:
                raise ValueError(f"{path}: existing output has columns {list(old.columns)}, this run writes "
                                 f"{columns} (other questions or horizons?); pass resume=False or another "
                                 "output path")
            self.rows = {r["case_id"]: r for r in old.to_dict("records")}
        self.parts = parts
        self.pending_z: list[tuple[list[str], np.ndarray]] = []
        self.n_new, self.last_flush = 0, time.monotonic()
        if self.parts is not None and not self.parts.is_dir():
            self.parts.mkdir(parents=True)
            self._seed_parts(finished_latents)

    def _seed_parts(self, finished: Optional[Path]) -> None:
        """A resumed finished run: its ``.z_surv.npy`` (rows = the output's rows) becomes the first part."""
        if not self.rows or finished is None or not finished.is_file():
            return
        z = np.load(finished)
        ids = list(_sorted_frame(self.rows.values())["case_id"])
        if len(z) == len(ids):
            self.pending_z.append((ids, z))
            self.flush()

    def add(self, rows: list[dict], z: Optional[np.ndarray]) -> None:
        for row in rows:
            self.rows[row["case_id"]] = row
        if self.parts is not None and rows:
            self.pending_z.append(([r["case_id"] for r in rows], z))
        self.n_new += len(rows)

    def maybe_flush(self, every: int) -> None:
        if self.n_new >= every or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending_z:  # latents first: a crash in between only re-predicts those cases
            ids = [c for chunk, _ in self.pending_z for c in chunk]
            z = np.concatenate([z for _, z in self.pending_z])
            name = f"part-{time.time_ns()}-{os.getpid()}.npz"
            with atomic_open(self.parts / name, "wb") as fh:
                np.savez(fh, case_id=np.asarray(ids), z=z.astype(np.float32))
            self.pending_z = []
        if self.rows:
            write_table(_sorted_frame(self.rows.values()), self.path, "predictions", self.fmt)
        self.n_new, self.last_flush = 0, time.monotonic()


def _sorted_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(list(rows)).sort_values("case_id", kind="stable").reset_index(drop=True)


def _load_parts(parts: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for f in sorted(parts.glob("part-*.npz")):
        with np.load(f) as data:
            found.update(zip(data["case_id"].astype(str), data["z"]))
    return found


def _write_embeddings(table: pd.DataFrame, parts: dict[str, np.ndarray], path: Path) -> Optional[Path]:
    missing = [c for c in table["case_id"] if c not in parts]
    if missing:
        logger.warning("no saved latents for %d case(s) (predicted without save_embeddings?), e.g. %s: "
                       "%s not written", len(missing), missing[:3], path)
        return None
    with atomic_open(path, "wb") as fh:
        np.save(fh, np.stack([parts[c] for c in table["case_id"]]).astype(np.float32))
    return path


# ------------------------------------------------------------------------------ prediction


def survival_at(curve: np.ndarray, cuts: np.ndarray, horizons: Sequence[float]) -> np.ndarray:
    """Step curves ``(n, K)`` at the cuts -> values at ``horizons`` ``(n, H)`` (1 before the first cut)."""
    idx = np.searchsorted(cuts, np.asarray(horizons, dtype=np.float64), side="right") - 1
    return np.where(idx[None] >= 0, curve[:, np.maximum(idx, 0)], 1.0)


def _predict_batch(run: ModelRun, items: list[dict], contexts: dict, questions, horizons,
                   shared_prefix: bool):
    """Rows and mean latents ``(B, D)`` for a batch of loaded volumes."""
    model = run.model
    image = torch.from_numpy(np.stack([it["image"] for it in items])).to(run.device)  # (B, 1, x, y, z)
    with torch.no_grad():
        feats = model.vision(image.to(model.vision.conv1.weight.dtype))  # (B, C, x', y', z')
    ctx = [contexts.get(it["case_id"]) for it in items]
    scores = score_questions(model, [q for _, q in questions], ctx, image_features=feats,
                             shared_prefix=shared_prefix)
    risk = scores.risk.cpu().numpy().astype(np.float64)  # (B, Q)
    surv = None
    if scores.surv is not None and run.cuts is not None and horizons:
        curve = scores.surv.mean(dim=1).cpu().numpy().astype(np.float64)[:, : run.cuts.size]  # (B, K)
        surv = survival_at(curve, run.cuts[: curve.shape[1]], horizons)
    rows = []
    for b, it in enumerate(items):
        row = {"case_id": it["case_id"], "risk": float(risk[b].mean())}
        row.update({f"risk_{qid}": float(risk[b, j]) for j, (qid, _) in enumerate(questions)})
        if surv is not None:
            row.update({f"surv_{h:.10g}": float(surv[b, k]) for k, h in enumerate(horizons)})  # as `columns`
        row["has_context"] = ctx[b] is not None
        rows.append(row)
    return rows, scores.z_surv.mean(dim=1).cpu().numpy()


def _horizons(run: ModelRun, horizons: Optional[Sequence[float]]) -> list[float]:
    if run.model.cfg.survival.head == "cox":
        if horizons:
            logger.warning("Cox head: survival probabilities need a baseline hazard; `ctvl evaluate` fits "
                           "one (Breslow) on the train split. Horizons %s ignored.", list(horizons))
        return []
    if run.cuts is None:
        return []
    return [float(h) for h in (run.cuts if horizons is None else horizons)]


def run_predict(model_dir: str | os.PathLike, inputs, out_path: str | os.PathLike, *, clinical=None,
                clinical_template: Optional[str] = None, questions=None,
                preprocess_cfg: Optional[PreprocessConfig] = None, batch_size: int = 4, workers: int = 2,
                horizons: Optional[Sequence[float]] = None, shard: Optional[tuple[int, int]] = None,
                resume: bool = True, progress: bool = True, shared_prefix: bool = True,
                save_embeddings: bool = False, flush_every: int = 256, device: Optional[str] = None,
                allow_missing_context: bool = False) -> PredictSummary:
    """Predict the risk of every case of ``inputs`` into ``out_path`` (CSV or Parquet by suffix).

    Args:
        model_dir: a ``CTVLModel.save_pretrained`` directory (``runs/stage2/model``).
        inputs: manifest (CSV/Parquet/DataFrame), folder of NIfTI files or folder of DICOM-series folders.
        out_path: ``.csv``, ``.parquet`` or ``.pq``; ``errors.csv`` is written next to it.
        clinical: table (path or DataFrame) joined on ``case_id``; None = the manifest's own columns.
        clinical_template: clinical-text YAML (or ``ClinicalTextConfig``); None = the template the model was
            trained with (its ``prompts.yaml``); "" = none. One that differs from the trained one is logged.
        questions: question-set YAML, ``QuestionSet``, texts or ``(id, text)`` pairs; None = the questions
            the model was trained with (else the run's set or the paper's six).
        preprocess_cfg: None = the run's ``run_config.yaml`` (next to ``model_dir``), else Merlin's defaults.
        batch_size: volumes per model batch (each batch runs ``batch_size x n_questions`` prompts).
        workers: DataLoader worker processes loading + preprocessing volumes (0 = in this process).
        horizons: DeepHit survival-probability times; None = every cut. Ignored for Cox.
        shard: ``(rank, world)``; None = from torch.distributed or ``RANK``/``WORLD_SIZE``. Rank k predicts
            every world-th case into ``<out>.rank<k>``; rank 0 merges when torch.distributed is initialised,
            otherwise call :func:`merge_shards`.
        resume: skip the cases already in the output; False starts over.
        progress: tqdm progress bar.
        shared_prefix: the shared-prefix ensemble (False: one full pass per question, for comparison).
        save_embeddings: also write the mean survival latents ``z_surv`` (``<out>.z_surv.npy``).
        flush_every: rewrite the output after this many new cases (and at least every minute).
        device: default CUDA when available, else CPU.
        allow_missing_context: predict cases without a context sentence although the model was trained with
            one; by default the run is refused (no template or clinical columns) or the case fails (no
            clinical data for it, stage ``context`` in ``errors.csv``).

    Returns:
        PredictSummary; ``exit_code`` 1 when any case failed.

    Raises:
        ValueError: unusable input (missing path, invalid manifest, folder without volumes), unusable
            output path, an existing output that cannot be read for resuming, or no clinical context for a
            model trained with it.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    out_path = Path(out_path)
    fmt = table_format(out_path, "predictions file")
    rank, world = resolve_shard(shard)
    table_path = out_path if world == 1 else shard_path(out_path, rank)
    err_path = errors_path(out_path, None if world == 1 else rank)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    resolved = resolve_inputs(inputs)
    errors = ErrorLog(err_path, mode="w")
    if rank == 0:
        resolved.record_rejected(errors)
    run = load_model_run(model_dir, device)
    questions = resolve_questions(questions, run)
    cfg = resolve_preprocess(preprocess_cfg, run.run_cfg)
    horizons = _horizons(run, horizons)
    mine = resolved.cases.iloc[rank::world]
    columns = ["case_id", "risk", *(f"risk_{q}" for q, _ in questions), *(f"surv_{h:.10g}" for h in horizons),
               "has_context"]
    parts = _parts_dir(out_path, None if world == 1 else rank) if save_embeddings else None
    output = _Output(table_path, fmt, resume, parts, columns,
                     finished_latents=embeddings_path(out_path) if world == 1 and resume else None)
    todo = [(c, f) for c, f in zip(mine["case_id"], mine["image"]) if c not in output.rows]
    contexts = model_contexts(run, [c for c, _ in todo], clinical_template, clinical=clinical,
                              table=resolved.table, allow_missing_context=allow_missing_context)
    summary = PredictSummary(out_path, len(mine), 0, len(mine) - len(todo), 0, contexts.n_without, 0.0,
                             err_path)
    if rank == 0:
        summary.n_failed = len(resolved.rejected)
        summary.failed = [r.case_id for r in resolved.rejected]
    refused = set(contexts.refused)
    for case_id, file in todo:
        if case_id in refused:
            _fail(summary, errors, {"case_id": case_id, "file": file}, CONTEXT_STAGE, NO_CONTEXT_REASON)
    todo = [(c, f) for c, f in todo if c not in refused]
    logger.info("predict: %d case(s) on rank %d/%d, %d already done, %d question(s), %s", len(mine), rank,
                world, summary.n_skipped, len(questions), "shared prefix" if shared_prefix else "full passes")
    bar = tqdm(total=len(todo), disable=not progress, unit="case", desc="predict")
    try:
        for batch in iter_volume_batches(todo, cfg, batch_size, workers):
            good = [it for it in batch if it["error"] is None]
            for it in batch:
                if it["error"] is not None:
                    _fail(summary, errors, it, *it["error"])
            if good:
                _run_batch(run, good, contexts.sentences, questions, horizons, shared_prefix, output, summary,
                           errors)
            output.maybe_flush(flush_every)
            bar.update(len(batch))
            bar.set_postfix(failed=summary.n_failed, refresh=False)
    finally:
        bar.close()
        output.flush()
    if world == 1 and save_embeddings and output.rows:
        summary.embeddings_path = _write_embeddings(
            _sorted_frame(output.rows.values()), _load_parts(output.parts), embeddings_path(out_path))
        if summary.embeddings_path is not None:
            shutil.rmtree(output.parts, ignore_errors=True)
    summary.seconds = time.perf_counter() - start
    _finish_shards(out_path, rank, world)
    logger.info("predict: %d predicted, %d skipped, %d failed in %.1f s -> %s (errors: %s)",
                summary.n_predicted, summary.n_skipped, summary.n_failed, summary.seconds, table_path,
                err_path)
    return summary


def _fail(summary: PredictSummary, errors: ErrorLog, item: dict, stage: str, reason: str) -> None:
    errors.add(item["case_id"], item["file"], stage, reason)
    logger.warning("%s: %s failed: %s", item["case_id"], stage, reason)
    summary.n_failed += 1
    summary.failed.append(item["case_id"])


def _run_batch(run, good, contexts, questions, horizons, shared_prefix, output, summary, errors) -> None:
    try:
        rows, z = _predict_batch(run, good, contexts, questions, horizons, shared_prefix)
    except Exception as exc:  # noqa: BLE001 -- e.g. CUDA OOM on one batch: record it, go on
        logger.exception("model failed on a batch of %d case(s)", len(good))
        for it in good:
            _fail(summary, errors, it, "model", f"{type(exc).__name__}: {exc}")
        return
    finite = [bool(np.isfinite(r["risk"])) for r in rows]
    for it, ok in zip(good, finite):
        if not ok:
            _fail(summary, errors, it, "model", "non-finite risk")
    keep = np.flatnonzero(finite)
    output.add([rows[i] for i in keep], z[keep])
    summary.n_predicted += len(keep)


def _finish_shards(out_path: Path, rank: int, world: int) -> None:
    if world == 1:
        return
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        if rank == 0:
            merge_shards(out_path, world)
    elif rank == 0:
        logger.info("rank files written; combine them with merge_shards(%r, %d) when every rank is done",
                    str(out_path), world)


def merge_shards(out_path: str | os.PathLike, world: int) -> Path:
    """Combine ``<out>.rank0 .. rank<world-1>`` (and their errors/latents) into ``out_path``, atomically.

    Raises:
        ValueError: a rank file is missing or two ranks predicted the same case.
    """
    out_path = Path(out_path)
    fmt = table_format(out_path, "predictions file")
    paths = [shard_path(out_path, k) for k in range(world)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"cannot merge: rank output(s) {missing} missing (did every rank finish?)")
    table = pd.concat([load_predictions(p, fmt) for p in paths], ignore_index=True)
    dup = table["case_id"].duplicated()
    if dup.any():
        ids = table.loc[dup, "case_id"].tolist()[:5]
        raise ValueError(f"cannot merge: case(s) {ids} in several rank files")
    table = table.sort_values("case_id", kind="stable").reset_index(drop=True)
    write_table(table, out_path, "predictions", fmt)
    errors = [load_errors(errors_path(out_path, k)) for k in range(world)]
    merged = pd.concat(errors, ignore_index=True)
    write_table(merged, errors_path(out_path), "error log", "csv")
    parts = [_parts_dir(out_path, k) for k in range(world) if _parts_dir(out_path, k).is_dir()]
    if parts:
        latents = {k: v for d in parts for k, v in _load_parts(d).items()}
        if _write_embeddings(table, latents, embeddings_path(out_path)) is not None:
            for folder in parts:
                shutil.rmtree(folder, ignore_errors=True)
    logger.info("merged %d rank file(s): %d case(s) -> %s", world, len(table), out_path)
    return out_path
