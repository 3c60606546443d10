r"""Propensity scores and inverse propensity weights for treatment-effect estimation on survival data.

- :func:`cross_fit_propensity`: :math:`\hat e(x) = P(A = 1 \mid x)` out of fold (K folds, each fold's
  scores from a model fitted on the others), so no patient's weight comes from a model that saw them --
  in-sample propensities overfit and understate the extreme weights.
- :func:`ipw_weights`: stabilised weights :math:`w_i = \frac{A_i \pi}{\hat e_i} + \frac{(1 - A_i)(1 - \pi)}
  {1 - \hat e_i}` with :math:`\pi` the treated fraction (their mean is about 1), then truncated at their
  ``clip_quantile`` quantile (the largest weights are set to it).
- :func:`effective_sample_size`: Kish's :math:`(\sum w)^2 / \sum w^2`.
- :func:`overlap_summary`: propensity quantiles per arm and the share of rows outside [0.05, 0.95].

The propensity model is a logistic regression (scikit-learn, L2, C = 1) or a small MLP.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["check_treatment", "cross_fit_propensity", "ipw_weights", "effective_sample_size", "overlap_summary"]


def check_treatment(treatment, where: str = "treatment") -> np.ndarray:
    """(n,) int64 0/1 from a binary column; a ValueError naming the bad rows (1-based) or the empty arm."""
    values = np.asarray(treatment)
    try:
        numeric = values.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be 0/1; found values {sorted(set(map(str, values)))[:5]}") from None
    bad = np.flatnonzero(~np.isin(numeric, (0.0, 1.0)))
    if bad.size:
        rows = ", ".join(str(i + 1) for i in bad[:5])
        raise ValueError(f"{where} must be binary 0/1; {bad.size} rows are not (data rows {rows}"
                         f"{', ...' if bad.size > 5 else ''}: {sorted(set(numeric[bad].tolist()))[:5]})")
    a = numeric.astype(np.int64)
    for arm in (0, 1):
        if not (a == arm).any():
            raise ValueError(f"{where}: no patient has treatment {arm}; both arms need patients")
    return a


def _propensity_model(kind: str, seed: int):
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=1.0, max_iter=1000)
    if kind == "mlp":
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier(hidden_layer_sizes=(16,), alpha=1e-2, max_iter=500, early_stopping=True,
                             random_state=seed)
    raise ValueError(f"unknown propensity model {kind!r}; choose 'logistic' or 'mlp'")


def cross_fit_propensity(X, treatment, *, model: Literal["logistic", "mlp"] = "logistic", folds: int = 5,
                         seed: int = 0, bounds: tuple[float, float] = (1e-3, 1 - 1e-3)) -> np.ndarray:
    """Out-of-fold propensity :math:`\\hat e_i`, shape (n,), clipped to ``bounds`` (stratified K folds on A).

    Args:
        X: (n, d) standardised covariates.
        treatment: (n,) 0/1.
        model: "logistic" (default) or "mlp".
        folds: K >= 2; 1 = fitted and predicted on all rows (in-sample, for comparison only).
        seed: fold assignment and the MLP's initialisation.
    """
    from sklearn.model_selection import StratifiedKFold

    X = np.asarray(X, np.float64)
    a = check_treatment(treatment)
    scores = np.empty(a.size)
    if folds == 1:
        scores[:] = _propensity_model(model, seed).fit(X, a).predict_proba(X)[:, 1]
    else:
        split = StratifiedKFold(n_splits=min(folds, int(np.bincount(a).min())), shuffle=True, random_state=seed)
        for train, held in split.split(X, a):
            scores[held] = _propensity_model(model, seed).fit(X[train], a[train]).predict_proba(X[held])[:, 1]
    return np.clip(scores, *bounds)


def ipw_weights(treatment, propensity, *, stabilised: bool = True, clip_quantile: float | None = 0.99) -> np.ndarray:
    """Inverse propensity weights, shape (n,) (formula in the module doc).

    Args:
        treatment: (n,) 0/1.
        propensity: (n,) :math:`\\hat e_i` in (0, 1).
        stabilised: multiply by the arm's share (:math:`\\pi` or :math:`1 - \\pi`); False: :math:`1/\\hat e`
            and :math:`1/(1 - \\hat e)`.
        clip_quantile: weights above their q-quantile are set to it; None = no truncation.

    >>> ipw_weights(np.array([1, 0, 0, 0]), np.array([0.5, 0.5, 0.25, 0.75]), clip_quantile=None).tolist()
    [0.5, 1.5, 1.0, 3.0]
    """
    a = check_treatment(treatment)
    e = np.asarray(propensity, np.float64)
    if e.shape != a.shape or not np.all((e > 0) & (e < 1)):
        raise ValueError("propensity must be in (0, 1) with one value per row")
    pi = a.mean() if stabilised else 1.0
    w = np.where(a == 1, pi / e, (1.0 - pi if stabilised else 1.0) / (1.0 - e))
    if clip_quantile is not None:
        if not 0.0 < clip_quantile <= 1.0:
            raise ValueError(f"`clip_quantile` must be in (0, 1], got {clip_quantile}")
        w = np.minimum(w, np.quantile(w, clip_quantile))
    return w


def effective_sample_size(weight) -> float:
    """Kish's effective sample size :math:`(\\sum_i w_i)^2 / \\sum_i w_i^2` (n for equal weights)."""
    w = np.asarray(weight, np.float64)
    return float(w.sum() ** 2 / np.square(w).sum())


def overlap_summary(treatment, propensity) -> dict:
    """Propensity 1/5/50/95/99 % quantiles per arm, the share of rows with :math:`\\hat e` outside
    [0.05, 0.95], and the c-statistic (AUC) of the propensity for the treatment."""
    from sklearn.metrics import roc_auc_score

    a = check_treatment(treatment)
    e = np.asarray(propensity, np.float64)
    levels = (0.01, 0.05, 0.5, 0.95, 0.99)
    return {
        "quantiles": list(levels),
        "treated": np.quantile(e[a == 1], levels).round(4).tolist(),
        "control": np.quantile(e[a == 0], levels).round(4).tolist(),
        "outside_0.05_0.95": float(np.mean((e < 0.05) | (e > 0.95))),
        "auc": float(roc_auc_score(a, e)),
    }
