"""``ctvl synth-tabular fit|sample|report``: synthetic survival tables that keep hazard ratios (paper 003, CK4Gen).

Orchestration only; each step is a shared layer:

- ``fit``: the table (a CSV/Parquet file or a bundled set, ``ctvl.data.tabular``) and its seeded, event-stratified
  split; :class:`ctvl.tabgen.ck4gen.CK4Gen` fitted on the training rows. Writes ``model/`` (safetensors + JSON:
  the generator, which holds the training patients' codes and outcomes -- keep it with the real data),
  ``real_train.parquet`` and ``real_holdout.parquet`` (the split, for ``report``), ``metrics.json`` (losses,
  teacher and student C-index on the held-out rows) and ``run_config.yaml``.
- ``sample``: ``n`` rows from a fitted generator, outcomes generated or copied, to a ``.csv`` or ``.parquet``.
- ``report``: real vs each synthetic table and each baseline generator fitted in the same run
  (``ctvl.tabgen.baselines``): ``metrics.json``, ``report.html`` and the figures as PNG
  (``ctvl.tabgen.utility``, ``ctvl.infer.synth_report``). A synthetic table that cannot be read or does not
  match the real columns is listed under ``errors`` in ``metrics.json`` and the others are still reported.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ctvl.config import SynthReportConfig, SynthSampleConfig, SynthTabularConfig, SynthTabularRunConfig, TabularConfig
from ctvl.config import save_config
from ctvl.utils.atomic import atomic_open

log = logging.getLogger(__name__)


def _frame(covariates: pd.DataFrame, time, event, names: tuple[str, str]) -> pd.DataFrame:
    clash = [c for c in names if c in covariates.columns]
    if clash:
        raise ValueError(f"covariates {clash} have the names of the outcome columns; rename them")
    return covariates.assign(**dict(zip(names, (time, event))))


def _write_json(path: Path, data: dict) -> None:
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=1, default=float)


def run_synth_fit(tabular: TabularConfig, cfg: SynthTabularConfig, out: str | Path) -> dict:
    """Fit CK4Gen on the training split of the table and write the outputs listed in the module doc."""
    from ctvl.data.tables import write_table
    from ctvl.data.tabular import build_survival_table, split_table
    from ctvl.survival.metrics import harrell_c
    from ctvl.tabgen.ck4gen import CK4Gen

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = build_survival_table(tabular)
    names = (tabular.time, tabular.event) if tabular.table else ("time", "event")
    split = split_table(table.event, tabular.test_fraction, tabular.seed)
    train, holdout = table.subset(split.train), table.subset(split.test)
    gen = CK4Gen(cfg).fit(train.covariates, train.event, train.time, outcome_columns=names)
    gen.save(out / "model")
    write_table(_frame(train.covariates, train.time, train.event, names), out / "real_train.parquet", "real rows")
    metrics = {"source": table.source, "n_train": len(train), "n_holdout": len(holdout),
               "zero_times": table.n_zero_times, "training": gen.history_}
    if len(holdout):
        write_table(_frame(holdout.covariates, holdout.time, holdout.event, names), out / "real_holdout.parquet",
                    "real rows")
        metrics["holdout_c_index"] = {
            "teacher": harrell_c(gen.teacher_log_hazard(holdout.covariates), holdout.event, holdout.time).cindex,
            "student": harrell_c(gen.student_risk(holdout.covariates), holdout.event, holdout.time).cindex}
    save_config(SynthTabularRunConfig(tabular, cfg), out / "run_config.yaml")
    _write_json(out / "metrics.json", metrics)
    return metrics


def run_synth_sample(model: str | Path, cfg: SynthSampleConfig, out: str | Path) -> Path:
    """Write ``cfg.n`` synthetic rows of the generator in ``model`` to ``out`` (``.csv`` or ``.parquet``)."""
    from ctvl.data.tables import write_table
    from ctvl.tabgen.ck4gen import CK4Gen

    gen = CK4Gen.load(model)
    rows = gen.sample(cfg.n, noise=cfg.noise, outcome=cfg.outcome, seed=cfg.seed, discrete=cfg.discrete,
                      latent=cfg.latent, components=cfg.components)
    time, event = gen.outcome_columns_
    log.info("sampled %d rows (%s outcomes, noise %.2f): %.0f %% events -> %s", len(rows), cfg.outcome, cfg.noise,
             100 * rows[event].mean(), out)
    return write_table(rows, out, "synthetic table")


# ------------------------------------------------------------------------------------ report


def _read(path, time: str, event: str, kind: str) -> pd.DataFrame:
    """A table as covariates + ``time`` + ``event`` (the names the utility layer uses)."""
    from ctvl.data.tabular import load_survival_table

    table = load_survival_table(path, time, event, kind=kind)
    return _frame(table.covariates, table.time, table.event, ("time", "event"))


def _align(real: pd.DataFrame, synthetic: pd.DataFrame, where: str) -> pd.DataFrame:
    """``synthetic`` with the real columns, in the real order and dtypes; errors name the columns and rows."""
    missing = [c for c in real.columns if c not in synthetic.columns]
    extra = [c for c in synthetic.columns if c not in real.columns]
    if missing or extra:
        raise ValueError(f"{where}: columns differ from the real table (missing {missing}, extra {extra})")
    synthetic = synthetic[list(real.columns)].copy()
    for name in real.columns:
        if isinstance(real[name].dtype, pd.CategoricalDtype):
            levels = real[name].cat.categories
            values = synthetic[name].astype(str).where(synthetic[name].notna())
            unknown = values.notna() & ~values.isin([str(v) for v in levels])
            if unknown.any():
                rows = ", ".join(str(i + 1) for i in np.flatnonzero(unknown)[:5])
                raise ValueError(f"{where}: column {name!r} has levels the real table lacks "
                                 f"({sorted(set(values[unknown]))[:5]}) in data rows {rows}")
            synthetic[name] = pd.Categorical(values.map({str(v): v for v in levels}), categories=levels)
    return synthetic


def _baseline_tables(train: pd.DataFrame, cfg: SynthReportConfig, notes: list[str]) -> dict[str, pd.DataFrame]:
    from ctvl.tabgen.baselines import fit_generator

    tables = {}
    for name in cfg.baselines:
        try:
            generator = fit_generator(name, train, seed=cfg.seed, tvae_epochs=cfg.tvae_epochs)
        except ImportError as err:
            notes.append(f"baseline {name} skipped: {err}")
            log.warning("baseline %s skipped: %s", name, err)
            continue
        tables[name] = generator.sample(len(train), seed=cfg.seed + 1)
    return tables


def _figures(train: pd.DataFrame, holdout: pd.DataFrame | None, tables: dict, metrics: dict, first: str) -> dict:
    from ctvl.infer.synth_report import plot_correlations, plot_forest, plot_km, plot_marginals
    from ctvl.tabgen.utility import correlations, covariates, cox_design, outcomes

    design = cox_design(train)
    r_real, r_syn, _ = correlations(design, train, tables[first])
    km = {"real (train)": outcomes(train), **({"real (held-out)": outcomes(holdout)} if holdout is not None else {}),
          **{label: outcomes(t) for label, t in tables.items()}}
    return {"marginals": plot_marginals(covariates(train), covariates(tables[first]), first),
            "correlations": plot_correlations(r_real, r_syn, design.feature_names_, first),
            "hazard_ratios": plot_forest({k: m["hazard_ratios"]["rows"] for k, m in metrics.items()}),
            "kaplan_meier": plot_km(km)}


def run_synth_report(real: str | Path, synthetic: Sequence[str | Path], out: str | Path, *, holdout=None,
                     time: str = "time", event: str = "event", cfg: SynthReportConfig = SynthReportConfig()) -> dict:
    """Compare each synthetic table (and each baseline of ``cfg``) with the real rows; outputs in ``out``.

    Args:
        real: the real rows the generator was fitted on (``real_train.parquet`` of ``fit``).
        synthetic: synthetic tables with the same columns; labelled by file stem.
        out: output folder.
        holdout: real rows the generator did not see (``real_holdout.parquet``); without it no utility, augmentation
            or privacy measures.
        time, event: the outcome columns of every table.
        cfg: baselines, downstream models, bootstrap.
    """
    from ctvl.infer.synth_report import render_synth_report_html
    from ctvl.tabgen.utility import assess_synthetic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = _read(real, time, event, "real table")
    held = _read(holdout, time, event, "held-out real table") if holdout else None
    tables, errors, notes = {}, [], []
    for path in synthetic:
        label = Path(path).stem
        try:
            tables[label] = _align(train, _read(path, time, event, "synthetic table"), f"synthetic table {str(path)!r}")
        except (ValueError, FileNotFoundError) as err:
            errors.append({"file": str(path), "error": str(err)})
            log.error("%s", err)
    if not tables and synthetic:
        raise ValueError(f"no synthetic table could be read: {errors}")
    tables.update(_baseline_tables(train, cfg, notes))
    if not tables:
        raise ValueError("nothing to compare: give --synthetic tables or --report.baselines")
    results = {}
    for label, table in tables.items():
        results[label] = assess_synthetic(train, held, table, models=cfg.downstream, cox_alpha=cfg.cox_alpha,
                                          bootstrap=cfg.bootstrap, seed=cfg.seed)
        log.info("%s: mean |d log HR| %.3f%s", label, results[label]["hazard_ratios"]["mean_abs_log_hr_diff"],
                 f", TSTR C {next(iter(results[label]['utility'].values()))['tstr']['c_index']:.3f}"
                 if held is not None else "")
    metrics = {"n_train": len(train), "n_holdout": 0 if held is None else len(held), "tables": results,
               "errors": errors, "notes": notes}
    figures = _figures(train, held, tables, results, next(iter(tables)))
    for name, png in figures.items():
        (out / f"{name}.png").write_bytes(png)
    with atomic_open(out / "report.html", "w") as fh:
        fh.write(render_synth_report_html(metrics, figures))
    _write_json(out / "metrics.json", metrics)
    return metrics
