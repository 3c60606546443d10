"""``ctvl treatment simulate|fit``: treatment effects as a baseline hazard x a treatment hazard ratio (paper 004).

Orchestration only; each step is a shared layer:

1. the table (a CSV/Parquet file or a bundled set) and its seeded, event-stratified split:
   ``ctvl.data.tabular``; the treatment column is checked (0/1, both arms) and taken out of the covariates,
   which ``TabularEncoder`` encodes (fitted on the training rows);
2. propensity (cross-fitted), stabilised and truncated IPW weights, effective sample size and overlap:
   ``ctvl.survival.propensity``;
3. the model (factorised / S-learner / T-learner, optional subgroups) on the training rows:
   ``ctvl.survival.treatment``;
4. test-split C-index and IBS under the observed arm: ``ctvl.survival.baselines.score_predictions``;
   the marginal log-HR over time and its event-weighted average with bootstrap bands (refits on the
   training rows); a Cox model for the treatment (lifelines, weighted with ``robust=True`` under IPW).

Outputs of ``fit`` in ``out``: ``hazard_ratios.csv`` (case_id, split, time, log_hr), ``survival_curves.parquet``
(case_id, time, survival_control, survival_treated), ``metrics.json``, ``subgroups.csv`` (with subgroups),
``hazard_ratio.png``, ``survival_by_arm.png``, ``model/`` (safetensors + JSON), ``covariate_encoder.json``
and ``run_config.yaml``. ``simulate`` writes the table and, beside it, ``<stem>_true_log_hr.csv`` (the same
layout as ``hazard_ratios.csv``) and ``<stem>_patients.csv`` (propensity, latent subgroup, event time).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ctvl.config import TabularConfig, TreatmentConfig, TreatmentRunConfig, TreatmentSimConfig, save_config
from ctvl.utils.atomic import atomic_open

log = logging.getLogger(__name__)


def simulate_treatment_table(cfg: TreatmentSimConfig, out: str | Path) -> dict[str, Path]:
    """Write the simulated table at ``out`` (``.csv`` or ``.parquet``) and its two truth files beside it."""
    from ctvl.data.tables import write_table
    from ctvl.survival.simulate_treatment import make_treatment_cohort

    out = Path(out)
    table, truth, patients = make_treatment_cohort(cfg.n, cfg.num_covariates, cfg.treated_fraction, cfg.confounding,
                                                   cfg.effect, cfg.censoring_rate, cfg.grid_size, cfg.seed)
    paths = {"table": out, "true_log_hr": out.with_name(f"{out.stem}_true_log_hr.csv"),
             "patients": out.with_name(f"{out.stem}_patients.csv")}
    write_table(table, paths["table"], "simulated table")
    write_table(truth, paths["true_log_hr"], "true log hazard ratios")
    write_table(patients, paths["patients"], "simulated patients")
    log.info("simulated %d patients (%.0f %% treated, %.0f %% censored, effect %s) -> %s", len(table),
             100 * table["treatment"].mean(), 100 * (1 - table["event"].mean()), cfg.effect, out)
    return paths


_TEXT_ARMS = {"0": 0, "1": 1, "false": 0, "true": 1, "no": 0, "yes": 1, "0.0": 0, "1.0": 1}


def split_treatment(covariates: pd.DataFrame, column: str, where: str, treated_level: str = ""
                    ) -> tuple[pd.DataFrame, np.ndarray]:
    """``(covariates without the treatment column, treatment (n,) 0/1)``; errors name the column and rows.

    The column holds 0/1, True/False or yes/no (any case); with ``treated_level`` the rows equal to it are
    the treated and every other value the control.
    """
    from ctvl.survival.propensity import check_treatment

    if column not in covariates.columns:
        raise ValueError(f"{where}: no treatment column {column!r} (columns: {list(covariates.columns)})")
    values = covariates[column]
    if values.isna().any():
        rows = ", ".join(str(i + 1) for i in np.flatnonzero(values.isna())[:5])
        raise ValueError(f"{where}: treatment column {column!r} is empty in data rows {rows}")
    text = values.astype(str).str.strip()
    if treated_level:
        arms = (text == treated_level).astype(np.int64).to_numpy()
    elif values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == bool:
        arms = text.str.lower().map(_TEXT_ARMS).fillna(-1).to_numpy()
    else:
        arms = values.to_numpy()
    return covariates.drop(columns=[column]), check_treatment(arms, f"{where}: treatment column {column!r}")


def cox_reference(treatment, time, event, X=None, weight=None) -> dict:
    """lifelines Cox model of the treatment: log-HR and 95 % CI; ``X`` adds covariates (adjusted model);
    ``weight`` fits a weighted model with the robust (sandwich) variance. Needs lifelines."""
    from lifelines import CoxPHFitter

    df = pd.DataFrame({"treatment": treatment, "time": time, "event": np.asarray(event, int)})
    if X is not None:
        df = pd.concat([df, pd.DataFrame(X, columns=[f"f{j}" for j in range(X.shape[1])])], axis=1)
    kw = {}
    if weight is not None:
        df["w"], kw = weight, {"weights_col": "w", "robust": True}
    fit = CoxPHFitter(penalizer=1e-3 if X is not None else 0.0).fit(df, "time", "event", **kw)
    row = fit.summary.loc["treatment"]
    return {"log_hr": float(row["coef"]), "lower": float(row["coef lower 95%"]),
            "upper": float(row["coef upper 95%"]), "adjusted": X is not None, "weighted": weight is not None}


def _subgroup_table(model, X, covariates: pd.DataFrame, treatment) -> pd.DataFrame:
    """One row per subgroup (hard assignment): size, treated share, mean log-HR over time, mean covariates
    (numeric columns; one-hot shares for categorical ones)."""
    probs = model.subgroup_probabilities(X)
    hard = probs.argmax(1)
    numeric = pd.get_dummies(covariates, dtype=float)
    rows = []
    for k in range(probs.shape[1]):
        members = hard == k
        effect = model.net.effects[k].detach().double().numpy()
        rows.append({"subgroup": k, "n": int(members.sum()), "treated_share": float(np.mean(treatment[members]))
                     if members.any() else float("nan"),
                     "log_hr_mean_over_time": float(effect.mean()),
                     **{f"mean_{c}": float(numeric.loc[members, c].mean()) if members.any() else float("nan")
                        for c in numeric.columns}})
    return pd.DataFrame(rows)


def _figures(out: Path, grid, curves: dict, survival: tuple, km: dict) -> None:
    from ctvl.infer.report import plot_hazard_ratio_curves, plot_survival_by_arm

    (out / "hazard_ratio.png").write_bytes(plot_hazard_ratio_curves(grid, curves))
    arms = {"everyone untreated (model)": survival[0].mean(0), "everyone treated (model)": survival[1].mean(0), **km}
    (out / "survival_by_arm.png").write_bytes(plot_survival_by_arm(grid, arms))


def _write_patient_outputs(out: Path, case_id, is_test, grid, log_hr, survival: tuple) -> None:
    """hazard_ratios.csv (case_id, split, time, log_hr) and survival_curves.parquet (``survival`` = (n, T) curves
    under control and under treatment), long over ``grid``."""
    from ctvl.data.tables import write_table

    n, T = log_hr.shape
    ids, times = np.repeat(case_id, T), np.tile(grid, n)
    write_table(pd.DataFrame({"case_id": ids, "split": np.repeat(np.where(is_test, "test", "train"), T),
                              "time": times, "log_hr": log_hr.ravel()}), out / "hazard_ratios.csv", "hazard ratios")
    write_table(pd.DataFrame({"case_id": ids, "time": times, "survival_control": survival[0].ravel(),
                              "survival_treated": survival[1].ravel()}),
                out / "survival_curves.parquet", "survival curves")


def _effect_summary(est, X, tr, a, time, event, cfg: TreatmentConfig, grid, log_hr) -> dict:
    """Average log-HR (all patients, event-weighted over intervals) and the marginal log-HR over ``grid`` (the mean
    of ``log_hr`` (n, T)), with bootstrap intervals from ``cfg.bootstrap`` refits on the training rows."""
    from ctvl.survival.treatment import average_log_hr, bootstrap_marginal_log_hr

    model = est.model
    average = average_log_hr(model.log_hazard_ratio(X), model.event_share_)
    summary = {"average_log_hr": average, "average_hr": float(np.exp(average)),
               "marginal_log_hr": {"time": grid.tolist(), "log_hr": log_hr.mean(0).tolist()}}
    if cfg.bootstrap:
        curves = bootstrap_marginal_log_hr(X[tr], a[tr], time[tr], event[tr], cfg, np.r_[grid, model.midpoints],
                                           cfg.bootstrap, seed=cfg.seed)
        draws = curves[:, grid.size:] @ model.event_share_
        summary["average_log_hr_ci"] = np.quantile(draws, [0.025, 0.975]).tolist()
        summary["marginal_log_hr"].update(lower=np.quantile(curves[:, :grid.size], 0.025, axis=0).tolist(),
                                          upper=np.quantile(curves[:, :grid.size], 0.975, axis=0).tolist())
    return summary


def run_treatment_fit(tabular: TabularConfig, cfg: TreatmentConfig, out: str | Path) -> dict:
    """Fit the treatment model on a table and write the outputs listed in the module doc; returns the metrics."""
    from ctvl.data.tables import write_table
    from ctvl.data.tabular import build_encoder, build_survival_table, split_table
    from ctvl.survival.baselines import evaluation_times, score_predictions
    from ctvl.survival.curves import kaplan_meier, read_step
    from ctvl.survival.propensity import effective_sample_size, overlap_summary
    from ctvl.survival.treatment import estimate_treatment_effect, fit_propensity

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = build_survival_table(tabular)
    covariates, a = split_treatment(table.covariates, cfg.column, table.source, cfg.treated_level)
    split = split_table(table.event, tabular.test_fraction, tabular.seed)
    tr, te = split.train, split.test
    encoder = build_encoder(tabular).fit(covariates.iloc[tr])
    X = encoder.transform(covariates)
    time, event = table.time, table.event
    est = estimate_treatment_effect(X[tr], a[tr], time[tr], event[tr], cfg)
    model = est.model
    grid = np.quantile(time, np.linspace(0.05, 0.95, cfg.grid_size))

    log_hr = model.log_hazard_ratio(X, grid)  # (n, T)
    survival = (model.survival(X, 0, grid), model.survival(X, 1, grid))  # each (n, T)
    _write_patient_outputs(out, table.case_id, np.isin(np.arange(len(a)), te), grid, log_hr, survival)

    metrics = {"model": cfg.model, "ipw": cfg.ipw, "subgroups": cfg.subgroups, "n_train": int(tr.size),
               "n_test": int(te.size), "treated_share": float(a.mean()), "epochs": model.history_,
               "cuts": model.cuts_.tolist(), **_effect_summary(est, X, tr, a, time, event, cfg, grid, log_hr)}
    if te.size:
        times = evaluation_times(time[te], time[tr])
        metrics["test"] = score_predictions((event[tr], time[tr]), (event[te], time[te]), model.risk(X[te], a[te]),
                                            model.survival(X[te], a[te], times), times)
    propensity = est.propensity if est.propensity is not None else fit_propensity(X[tr], a[tr], cfg)
    metrics["propensity"] = {**overlap_summary(a[tr], propensity), "effective_sample_size":
                             effective_sample_size(est.weight), "n": int(tr.size)}
    try:
        metrics["cox"] = {"marginal": cox_reference(a[tr], time[tr], event[tr], weight=est.weight if cfg.ipw else None),
                          "adjusted": cox_reference(a[tr], time[tr], event[tr], X=X[tr])}
    except ImportError:
        log.warning("lifelines is not installed (ctvl[survival-refs]): no Cox reference in metrics.json")
    marginal = metrics["marginal_log_hr"]
    curves = {"marginal (all patients)": (log_hr.mean(0), marginal.get("lower"), marginal.get("upper"))}
    if cfg.subgroups:
        groups = _subgroup_table(model, X, covariates, a)
        write_table(groups, out / "subgroups.csv", "subgroups")
        metrics["subgroup_table"] = {"exploratory": True, "rows": groups.to_dict(orient="records")}
        hard = model.subgroup_probabilities(X).argmax(1)
        curves.update({f"subgroup {k} (n={int((hard == k).sum())})": (log_hr[hard == k].mean(0), None, None)
                       for k in range(cfg.subgroups) if (hard == k).any()})
    km = {f"KM observed {name}": read_step(*kaplan_meier(event[a == arm], time[a == arm])[:2], grid)
          for arm, name in ((0, "control"), (1, "treated"))}
    _figures(out, grid, curves, survival, km)
    model.save(out / "model")
    encoder.save(out / "covariate_encoder.json")
    save_config(TreatmentRunConfig(tabular, cfg), out / "run_config.yaml")
    with atomic_open(out / "metrics.json", "w") as fh:
        json.dump(metrics, fh, indent=1, default=float)
    average = metrics["average_log_hr"]
    log.info("%s%s: average HR %.3f (log %.3f)%s", cfg.model, " + IPW" if cfg.ipw else "", np.exp(average), average,
             f", test C {metrics['test']['c_index']:.3f}" if "test" in metrics else "")
    return metrics


