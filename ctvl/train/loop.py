"""``fit()``: the one training loop of ctvl, for every stage (paper section 2.3).

Order per optimiser step: ``grad_accum_steps`` x (``inputs, meta = batch`` -> ``out = engine(**inputs)``
-> ``engine.backward(out.loss)`` -> ``engine.step()``), then log every ``log_interval``, evaluate every
``eval_interval`` and save every ``save_interval``. A stage plugs in what differs, as a
:class:`TrainingTask`: its engine (model + optimiser), its batch stream, the output fields it logs,
its evaluation and its export. Stages 1 and 2 (``ctvl.train.vlm``), stage 0
(``ctvl.train.contrastive``) and encoder pre-training (``ctvl.train.encoder_pretrain``) all run here.

With a run folder, a rerun with the same folder resumes from the newest checkpoint: model,
optimiser, scheduler, RNG and data position; ``metrics.csv`` goes on from the checkpoint's step
(rows logged after it, before the interruption, are dropped).
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ctvl.config import RunConfig, TrainConfig, save_config
from ctvl.train import checkpoint as ckpt
from ctvl.train.engine import init_distributed, is_main_process, rank, world_size
from ctvl.utils.atomic import atomic_open

log = logging.getLogger(__name__)

Batch = tuple[dict, dict]
"""``(inputs, meta)``: ``engine(**inputs)`` runs the model; ``meta["case_id"]`` lists the samples."""
BatchStream = Iterator[tuple[int, int, Batch]]
"""Endless ``(epoch, position after this batch, batch)``."""


def log0(msg: str, *args) -> None:
    """Log on rank 0 only."""
    if is_main_process():
        log.info(msg, *args)


@dataclass
class FitResult:
    out_dir: Optional[Path]
    """The run folder (None: a run that kept nothing on disk)."""
    steps: int
    history: list[dict] = field(default_factory=list)
    """One row per log step: step, the task's logged fields, its extra columns, lr, samples/s (tokens/s)."""
    evals: list[dict] = field(default_factory=list)
    """One row per evaluation: step and the task's metrics."""


@dataclass
class TrainingTask:
    """What one stage plugs into :func:`fit`.

    The model's forward returns an object whose ``loss`` is backpropagated; the fields named in
    ``logged`` (``loss`` first) are averaged over the samples since the previous log row (a field that
    is None for a batch is skipped there).
    """

    engine: Any
    """From ``ctvl.train.engine``: ``engine(**inputs)``, ``backward``, ``step``, checkpoints."""
    batches: Callable[[int, int], BatchStream]
    """``(epoch, position) -> stream`` starting at that epoch, after that many batches (the resume point)."""
    name: str
    """Progress-bar label."""
    logged: tuple[str, ...] = ("loss",)
    """Output fields written to the log rows (``loss`` first)."""
    extra_log: Optional[Callable[[Any], dict]] = None
    """Last micro-batch's output -> more columns of the log row (e.g. the logit scale)."""
    count_tokens: bool = False
    """Log ``tokens_per_s`` from ``inputs["attention_mask"]``."""
    evaluate: Optional[Callable[[int], dict]] = None
    """``step -> metrics``, every ``eval_interval`` steps and at the last one."""
    export: Optional[Callable[[Path], None]] = None
    """``run folder -> None``: write the model at every save (every rank calls it; see :func:`export_pretrained`)."""


# ----------------------------------------------------------------------- looping


def batch_stream(dataset, sampler, epoch: int, skip: int, collate_fn) -> BatchStream:
    """Endless (epoch, position, ``collate_fn(items)``) stream starting at ``epoch``, skipping ``skip`` batches."""
    while True:
        sampler.set_epoch(epoch)
        for pos, indices in enumerate(sampler):
            if pos < skip:
                continue
            yield epoch, pos + 1, collate_fn([dataset[i] for i in indices])
        epoch, skip = epoch + 1, 0


def resume_latest(engine, out_dir: Path, seed: int) -> tuple[int, int, int]:
    """(step, epoch, batch position) of the newest checkpoint under ``out_dir``, loaded into ``engine``
    with its RNG state; (0, 0, 0) and the seed ``seed + rank`` when there is none."""
    tag = ckpt.latest_tag(out_dir / "checkpoints")
    if tag is None:
        torch.manual_seed(seed + rank())
        return 0, 0, 0
    state = engine.load_checkpoint(out_dir / "checkpoints", tag)
    ckpt.set_rng_state(state["rng"])
    log0("resumed from %s: step %d, epoch %d, batch %d", tag, state["step"], state["epoch"], state["position"])
    return state["step"], state["epoch"], state["position"]


def truncate_metrics(path: Path, step: int) -> int:
    """Drop the rows of ``path`` (a metrics.csv) logged after ``step``; returns how many were dropped.

    A run killed between two checkpoints has logged rows past the last one; resumed from it, the run
    logs those steps again. Rows cut short by the kill (not one field per header column, or no integer
    step) go too. The file is replaced atomically (temp file + rename), so a second kill leaves the
    old or the new file, never half of one.
    """
    if not path.is_file():
        return 0
    with open(path, newline="") as fh:
        header, *rows = list(csv.reader(fh)) or [[]]
    if "step" not in header:
        return 0
    col = header.index("step")
    kept = [r for r in rows if len(r) == len(header) and r[col].isdigit() and int(r[col]) <= step]
    if len(kept) < len(rows):
        with atomic_open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *kept])
    return len(rows) - len(kept)


class MetricsWriter:
    """metrics.csv + TensorBoard on rank 0, continuing a resumed run's file from ``resume_step``.

    Args:
        out_dir: the run folder.
        resume_step: step of the checkpoint the run resumed from (0: a fresh run); rows logged after
            it are dropped (:func:`truncate_metrics`), as the run logs those steps again. The
            TensorBoard events of those steps are kept, so TensorBoard may draw them twice.
    """

    def __init__(self, out_dir: Path, resume_step: int):
        self.enabled = is_main_process()
        self.path = out_dir / "metrics.csv"
        self.tb = None
        if self.enabled:
            dropped = truncate_metrics(self.path, resume_step)
            if dropped:
                log.info("%s: dropped %d rows logged after step %d (the checkpoint resumed from)",
                         self.path, dropped, resume_step)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:  # tensorboard is a core dependency; tolerate slim installs
                log.warning("tensorboard not installed: metrics go to metrics.csv only")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])
            self.tb.flush()


def export_pretrained(model: nn.Module, directory: Path) -> None:
    """Rank 0 writes ``model.save_pretrained(directory)``; ZeRO-3 parameters are gathered first (all ranks)."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if params:
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if is_main_process():
                model.save_pretrained(directory)
    elif is_main_process():
        model.save_pretrained(directory)


def save_step(task: TrainingTask, out_dir: Path, step: int, epoch: int, pos: int, keep_last: int) -> None:
    """Checkpoint ``step`` (engine state + data position + RNG) under ``out_dir/checkpoints``, export
    the model, then mark it latest and keep the last ``keep_last`` (rank 0)."""
    ckpt_dir = out_dir / "checkpoints"
    tag = ckpt.step_tag(step)
    task.engine.save_checkpoint(ckpt_dir, tag, {"step": step, "epoch": epoch, "position": pos,
                                                "rng": ckpt.rng_state()})
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if task.export is not None:
        task.export(out_dir)
    if is_main_process():
        ckpt.mark_latest(ckpt_dir, tag)
        ckpt.prune(ckpt_dir, keep_last)


def start_run(cfg: RunConfig) -> Path:
    """Join the process group (when launched with ranks), create ``train.out_dir`` and write
    ``run_config.yaml`` there (rank 0); returns the folder."""
    init_distributed()
    out_dir = Path(cfg.train.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        save_config(cfg, out_dir / "run_config.yaml")
    return out_dir


def require_micro_batch(n_train: int, tc: TrainConfig) -> None:
    """Raise unless ``n_train`` training pairs fill one micro-batch on every rank."""
    if n_train < tc.micro_batch_size * world_size():
        raise ValueError(f"{n_train} training pairs < one micro-batch per rank "
                         f"({tc.micro_batch_size} x {world_size()})")


class _Averages:
    """Sample-weighted sums of the logged output fields since the last log row."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, out: Any, n: int) -> None:
        for name in self.names:
            value = getattr(out, name, None)
            if value is not None:
                self.sums[name] = self.sums.get(name, 0.0) + value.detach() * n
                self.counts[name] = self.counts.get(name, 0) + n

    def means(self) -> dict[str, float]:
        return {k: float(v) / self.counts[k] for k, v in self.sums.items()}  # CPU-GPU sync: log steps only


def fit(task: TrainingTask, tc: TrainConfig, out_dir: Optional[Path], progress: bool = True) -> FitResult:
    """Run ``tc.max_steps`` optimiser steps of ``task``.

    Args:
        task: the stage's engine, batches, logging, evaluation and export.
        tc: steps, accumulation, log/eval/save intervals, seed, checkpoints kept.
        out_dir: the run folder (``metrics.csv``, TensorBoard, ``checkpoints/``; resumed from when it
            holds one), or None to keep nothing on disk (``task.export`` is then not called).

    Returns:
        FitResult: the log rows (step, the logged fields, extra columns, lr, samples_per_s and
        tokens_per_s) and the evaluation rows (step, the task's metrics).
    """
    engine = task.engine
    if out_dir is not None:
        step, epoch, position = resume_latest(engine, out_dir, tc.seed)
        metrics = MetricsWriter(out_dir, resume_step=step)
    else:
        step, epoch, position, metrics = 0, 0, 0, None
    result = FitResult(out_dir, step)
    stream = task.batches(epoch, position)
    from tqdm.auto import tqdm

    bar = tqdm(total=tc.max_steps, initial=step, disable=not (progress and is_main_process()), desc=task.name)
    engine.train()
    averages = _Averages(task.logged)
    t0, samples, tokens = time.perf_counter(), 0, 0
    while step < tc.max_steps:
        for _ in range(tc.grad_accum_steps):
            epoch, position, (inputs, meta) = next(stream)
            out = engine(**inputs)
            engine.backward(out.loss)
            engine.step()
            n = len(meta["case_id"])
            averages.add(out, n)
            samples += n
            if task.count_tokens:
                tokens += int(inputs["attention_mask"].sum())
        step += 1
        bar.update(1)
        if step % tc.log_interval == 0 or step == tc.max_steps:
            elapsed = time.perf_counter() - t0
            row = {"step": step, **averages.means(), **(task.extra_log(out) if task.extra_log else {}),
                   "lr": engine.get_lr(), "samples_per_s": samples * world_size() / elapsed}
            if task.count_tokens:
                row["tokens_per_s"] = tokens * world_size() / elapsed
            result.history.append(row)
            if metrics is not None:
                metrics.write(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            averages.reset()
            t0, samples, tokens = time.perf_counter(), 0, 0
        if task.evaluate and tc.eval_interval and (step % tc.eval_interval == 0 or step == tc.max_steps):
            ev = {"step": step, **task.evaluate(step)}
            result.evals.append(ev)
            log0("step %d eval %s", step, ev)
        if out_dir is not None and ((tc.save_interval and step % tc.save_interval == 0) or step == tc.max_steps):
            save_step(task, out_dir, step, epoch, position, tc.keep_last)
    bar.close()
    result.steps = step
    return result
