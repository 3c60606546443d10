r"""How well a synthetic survival table stands in for the real one: fidelity, utility and privacy.

Every function takes tables as DataFrames of covariates plus ``time`` (float) and ``event`` (bool) columns:
``train`` the real rows the generator saw, ``holdout`` real rows it did not see, ``synthetic`` its output.

- :func:`hazard_ratio_table` / :func:`compare_hazard_ratios` -- CoxPH log-HRs with 95 % Wald intervals (the fit
  lifelines' ``CoxPHFitter`` makes, Efron ties; standard errors from the inverse Hessian) on each table, in one
  design: :func:`cox_design`, fitted on the real rows (numbers per real SD, one-hot with the first level dropped);
- :func:`marginal_distances` -- Kolmogorov-Smirnov statistic per numeric column, total variation per discrete one;
- :func:`correlations` -- Pearson correlation matrices of the design columns and their mean absolute difference;
- :func:`km_agreement` -- Kaplan-Meier curves of two tables: log-rank p and mean absolute gap over time;
- :func:`downstream_utility` -- train on synthetic / test on real (TSTR) against train on real (TRTR): Harrell's C
  and IBS on the held-out real rows (``ctvl.survival.baselines``);
- :func:`augmentation_effect` -- real + synthetic training rows vs real alone, paired bootstrap on the held-out rows;
- :func:`privacy` -- distance to the closest training record (DCR) of synthetic rows vs held-out real rows,
  a distance-based membership-inference AUC and the share of exact copies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ctvl.data.tabular import TabularEncoder, column_kind
from ctvl.survival.baselines import evaluation_times, fit_coxph, predict_baseline, score_predictions
from ctvl.survival.cox import linear_cox_derivatives
from ctvl.survival.curves import integrated_brier_score, kaplan_meier, logrank_test, read_step
from ctvl.survival.metrics import harrell_c

__all__ = ["assess_synthetic", "augmentation_effect", "compare_hazard_ratios", "correlations", "covariates",
           "cox_design", "discrete_levels", "downstream_utility", "hazard_ratio_table", "km_agreement",
           "marginal_distances", "outcomes", "privacy"]

TARGETS = ("time", "event")


def covariates(table: pd.DataFrame) -> pd.DataFrame:
    """The table without its ``time`` and ``event`` columns."""
    return table.drop(columns=list(TARGETS))


def outcomes(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(event (n,) bool, time (n,) float64)`` of a table."""
    return table["event"].to_numpy(bool), table["time"].to_numpy(np.float64)


def cox_design(real: pd.DataFrame) -> TabularEncoder:
    """The CoxPH design of the report, fitted on the real rows: one-hot with the first level dropped, numbers
    standardised by the real mean and SD, a missing indicator after numeric columns with missing cells."""
    return TabularEncoder(categorical="onehot", drop_first=True, missing_indicators=True).fit(covariates(real))


# ------------------------------------------------------------------------------------ hazard ratios


def hazard_ratio_table(X, event, time, names, alpha: float = 0.0) -> pd.DataFrame:
    r"""CoxPH log-HRs with Wald standard errors :math:`\sqrt{\operatorname{diag} I(\hat\beta)^{-1}}`, 95 % CIs and
    p-values; one row per column of ``X`` (n, d). Columns that are constant in ``X`` (a level the table never
    has) get NaN and are left out of the fit; where the other columns are collinear the fit takes a ridge of
    ``1e-4`` (column ``alpha``)."""
    X = np.asarray(X, np.float64)
    keep = X.std(0) > 0
    coef, se = np.full(X.shape[1], np.nan), np.full(X.shape[1], np.nan)
    try:
        model = fit_coxph(X[:, keep], event, time, alpha=alpha, ties="efron")
    except ValueError:  # collinear columns in a generated table: the smallest ridge that makes the fit defined
        alpha = max(alpha, 1e-4)
        model = fit_coxph(X[:, keep], event, time, alpha=alpha, ties="efron")
    _, _, hessian = linear_cox_derivatives(X[:, keep], np.asarray(event, bool), np.asarray(time, np.float64),
                                           model.coef, ties="efron", derivatives=True)
    coef[keep] = model.coef
    se[keep] = np.sqrt(np.diag(np.linalg.inv(hessian + alpha * np.eye(keep.sum()))))
    z = stats.norm.ppf(0.975)
    return pd.DataFrame({"coef": coef, "se": se, "lower": coef - z * se, "upper": coef + z * se,
                         "p": 2 * stats.norm.sf(np.abs(coef / se)), "alpha": alpha},
                        index=pd.Index(list(names), name="covariate"))


def compare_hazard_ratios(design: TabularEncoder, real: pd.DataFrame, synthetic: pd.DataFrame,
                          alpha: float = 0.0) -> dict:
    """Log-HRs of both tables in ``design`` and how far apart they are.

    Returns:
        dict with ``rows`` (per covariate: real and synthetic coef/CI/p), ``mean_abs_log_hr_diff`` (and the same in
        units of the real standard error, ``mean_abs_log_hr_diff_in_se``),
        ``significant`` (real p < 0.05 count), ``sign_agreement_significant`` (share of those with the same sign
        in the synthetic fit) and ``real_inside_synthetic_ci`` (share of coefficients).
    """
    fits = [hazard_ratio_table(design.transform(covariates(t)), *outcomes(t), design.feature_names_, alpha)
            for t in (real, synthetic)]
    table = fits[0].join(fits[1], lsuffix="_real", rsuffix="_synthetic")
    both = table[["coef_real", "coef_synthetic"]].notna().all(1)
    diff = (table["coef_synthetic"] - table["coef_real"]).abs()[both]
    significant = table["p_real"] < 0.05
    same_sign = np.sign(table["coef_real"]) == np.sign(table["coef_synthetic"])
    inside = (table["coef_real"] >= table["lower_synthetic"]) & (table["coef_real"] <= table["upper_synthetic"])
    return {"rows": table.reset_index().to_dict(orient="records"), "mean_abs_log_hr_diff": float(diff.mean()),
            "mean_abs_log_hr_diff_in_se": float((diff / table["se_real"][both]).mean()),
            "significant": int(significant.sum()),
            "sign_agreement_significant": float(same_sign[significant].mean()) if significant.any() else None,
            "real_inside_synthetic_ci": float(inside.mean()), "missing_in_synthetic": int((~both).sum())}


# ------------------------------------------------------------------------------------ fidelity


def discrete_levels(column: pd.Series) -> pd.Series:
    """Discrete values as text, missing cells as ``"<missing>"`` (a level of their own)."""
    return column.astype(str).where(column.notna(), "<missing>")


def marginal_distances(real: pd.DataFrame, synthetic: pd.DataFrame) -> dict:
    """Per covariate: ``{"measure": "ks"|"tvd", "value": ...}`` (KS statistic of the observed values for numeric
    columns, total variation distance of the level shares, missing included, for the others)."""
    out = {}
    for name in covariates(real).columns:
        a, b = real[name], synthetic[name]
        if column_kind(a) in ("numeric", "integer"):
            out[name] = {"measure": "ks", "value": float(stats.ks_2samp(a.dropna(), b.dropna()).statistic),
                         "missing_share_diff": float(b.isna().mean() - a.isna().mean())}
        else:
            pa = discrete_levels(a).value_counts(normalize=True)
            pb = discrete_levels(b).value_counts(normalize=True)
            out[name] = {"measure": "tvd", "value": float(0.5 * pa.sub(pb, fill_value=0).abs().sum())}
    return out


def correlations(design: TabularEncoder, real: pd.DataFrame, synthetic: pd.DataFrame) -> tuple:
    """``(R_real (d, d), R_synthetic (d, d), mean |R_real - R_synthetic| off the diagonal)`` of the design columns
    (constant columns give 0 correlations)."""
    def corr(table):
        X = design.transform(covariates(table))
        sd = X.std(0)
        Z = np.divide(X - X.mean(0), sd, out=np.zeros_like(X), where=sd > 0)
        return Z.T @ Z / X.shape[0]

    r_real, r_syn = corr(real), corr(synthetic)
    off = ~np.eye(r_real.shape[0], dtype=bool)
    return r_real, r_syn, float(np.abs(r_real - r_syn)[off].mean()) if off.any() else 0.0


def km_agreement(reference: pd.DataFrame, synthetic: pd.DataFrame) -> dict:
    """Log-rank test of the two tables and the mean absolute gap of their KM curves on the reference's distinct
    times up to the shorter follow-up."""
    (e1, t1), (e2, t2) = outcomes(reference), outcomes(synthetic)
    test = logrank_test(np.r_[e1, e2], np.r_[t1, t2], np.r_[np.zeros(t1.size), np.ones(t2.size)])
    grid = np.unique(t1[t1 <= min(t1.max(), t2.max())])
    gap = np.abs(read_step(*kaplan_meier(e1, t1), grid) - read_step(*kaplan_meier(e2, t2), grid))
    return {"logrank_p": float(test.p_value), "logrank_statistic": float(test.statistic),
            "km_mean_abs_gap": float(gap.mean()), "km_max_abs_gap": float(gap.max())}


# ------------------------------------------------------------------------------------ utility


def _predict(model: str, design: TabularEncoder, train: pd.DataFrame, holdout: pd.DataFrame, times, seed: int):
    X, X_test = design.transform(covariates(train)), design.transform(covariates(holdout))
    return predict_baseline(model, X, outcomes(train), X_test, times, seed=seed)


def downstream_utility(design: TabularEncoder, train: pd.DataFrame, holdout: pd.DataFrame,
                       synthetic: pd.DataFrame, models=("coxph",), seed: int = 0) -> dict:
    """Per model: ``{"trtr": scores, "tstr": scores}`` on the held-out real rows (Harrell's C, Uno's C, mean AUC,
    IBS; censoring weights from the real training rows)."""
    y_train, y_test = outcomes(train), outcomes(holdout)
    times = evaluation_times(y_test[1], y_train[1])
    out = {}
    for model in models:
        out[model] = {name: score_predictions(y_train, y_test, *_predict(model, design, fit_on, holdout, times, seed),
                                              times) for name, fit_on in (("trtr", train), ("tstr", synthetic))}
    return out


def augmentation_effect(design: TabularEncoder, train: pd.DataFrame, holdout: pd.DataFrame,
                        synthetic: pd.DataFrame, model: str = "coxph", bootstrap: int = 200, seed: int = 0) -> dict:
    """Real + synthetic training rows vs real alone, scored on the same held-out rows: the differences in Harrell's
    C and IBS (augmented minus real) with paired bootstrap 95 % intervals over the held-out rows."""
    y_train, (event, time) = outcomes(train), outcomes(holdout)
    times = evaluation_times(time, y_train[1])
    both = pd.concat([train, synthetic], ignore_index=True)
    preds = [_predict(model, design, fit_on, holdout, times, seed) for fit_on in (train, both)]

    def scores(idx):
        return [(harrell_c(risk[idx], event[idx], time[idx]).cindex,
                 integrated_brier_score(*y_train, event[idx], time[idx], surv[idx], times)) for risk, surv in preds]

    (c_real, ibs_real), (c_aug, ibs_aug) = scores(np.arange(time.size))
    rng, draws = np.random.default_rng(seed), []
    for _ in range(bootstrap):
        idx = rng.integers(time.size, size=time.size)
        if event[idx].sum() < 2 or time[idx].max() <= times[-1]:
            continue
        (c0, i0), (c1, i1) = scores(idx)
        draws.append((c1 - c0, i1 - i0))
    draws = np.asarray(draws).reshape(-1, 2)
    ci = np.quantile(draws, [0.025, 0.975], axis=0) if len(draws) else np.full((2, 2), np.nan)
    return {"model": model, "c_real": c_real, "c_augmented": c_aug, "c_diff": c_aug - c_real,
            "c_diff_ci": ci[:, 0].tolist(), "ibs_real": ibs_real, "ibs_augmented": ibs_aug,
            "ibs_diff": ibs_aug - ibs_real, "ibs_diff_ci": ci[:, 1].tolist(), "resamples": len(draws)}


# ------------------------------------------------------------------------------------ privacy


def privacy(train: pd.DataFrame, holdout: pd.DataFrame, synthetic: pd.DataFrame) -> dict:
    """Record distances in the space of a :class:`TabularEncoder` fitted on the real training rows (numbers per
    SD, time included; one-hot levels; event 0/1), Euclidean.

    Returns:
        dict with ``dcr_synthetic_p5`` / ``dcr_holdout_p5`` (5th percentiles of the distance to the closest
        training record; synthetic >= holdout: no closer to the patients than new patients are), their medians,
        ``exact_copies`` (share of synthetic rows equal to a training record) and ``membership_auc`` (an attacker
        ranks the training rows vs the held-out rows by closeness to the synthetic table; 0.5 = no signal).
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import NearestNeighbors

    space = TabularEncoder(categorical="onehot", missing_indicators=True).fit(train)
    A, H, S = (space.transform(t) for t in (train, holdout, synthetic))
    to_train, to_synthetic = NearestNeighbors(n_neighbors=1).fit(A), NearestNeighbors(n_neighbors=1).fit(S)
    d_syn, d_hold = to_train.kneighbors(S)[0][:, 0], to_train.kneighbors(H)[0][:, 0]
    closeness = -np.r_[to_synthetic.kneighbors(A)[0][:, 0], to_synthetic.kneighbors(H)[0][:, 0]]
    auc = roc_auc_score(np.r_[np.ones(len(A)), np.zeros(len(H))], closeness)
    return {"dcr_synthetic_p5": float(np.quantile(d_syn, 0.05)), "dcr_holdout_p5": float(np.quantile(d_hold, 0.05)),
            "dcr_synthetic_median": float(np.median(d_syn)), "dcr_holdout_median": float(np.median(d_hold)),
            "exact_copies": float(np.mean(d_syn <= 1e-8)), "membership_auc": float(auc)}


def assess_synthetic(train: pd.DataFrame, holdout: pd.DataFrame | None, synthetic: pd.DataFrame, *,
                     models=("coxph",), cox_alpha: float = 0.0, bootstrap: int = 200, seed: int = 0) -> dict:
    """Every measure of this module for one synthetic table (those that need ``holdout`` only with it).

    Returns:
        dict with ``n``, ``hazard_ratios``, ``marginals``, ``correlation_mean_abs_diff``, ``km_vs_train`` and, with
        ``holdout``, ``km_vs_holdout``, ``utility``, ``augmentation`` and ``privacy``.
    """
    design = cox_design(train)
    out = {"n": len(synthetic), "hazard_ratios": compare_hazard_ratios(design, train, synthetic, cox_alpha),
           "marginals": marginal_distances(train, synthetic),
           "correlation_mean_abs_diff": correlations(design, train, synthetic)[2],
           "km_vs_train": km_agreement(train, synthetic)}
    if holdout is not None:
        out.update(km_vs_holdout=km_agreement(holdout, synthetic),
                   utility=downstream_utility(design, train, holdout, synthetic, models, seed),
                   augmentation=augmentation_effect(design, train, holdout, synthetic, models[0], bootstrap, seed),
                   privacy=privacy(train, holdout, synthetic))
    return out
