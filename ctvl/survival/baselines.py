"""Survival baselines on any feature matrix: CoxPH, DeepSurv, DeepHit and a random survival forest.

Entry points:

- :func:`fit_and_score` — fit one baseline on a training split, predict the test split, score it.
- :func:`run_baselines` — every baseline on the same split; a dict of score dicts.
- :func:`fit_coxph` — the linear Cox model (Newton-Raphson on :func:`neg_partial_log_likelihood`, optional
  ridge penalty and sample weights) as a :class:`CoxPHModel` with a Breslow baseline, saved as plain JSON:
  the ``coxph`` baseline and the teacher of the tabular workflows.

The data sets shipped with scikit-survival (GBSG2, WHAS500, ACTG320 = ``aids``, FLChain) come as matrices
from :func:`ctvl.data.tabular.load_reference_dataset` (the data layer reads tables; this module does not
import it), for reproducing the reference table in ``/work/shared/ANCHORS.md``.

Features can be clinical covariates, text or image embeddings, or several of these: pass a list of
(n, d_k) matrices and they are concatenated. Missing cells are filled with the training median, then
every column is standardised with training statistics. Targets are ``(event, time)`` pairs or
scikit-survival structured arrays.

Scores (all from :mod:`ctvl.survival.metrics`): Harrell's C, Uno's C (IPCW from the training split),
the mean cumulative/dynamic AUC, and the integrated Brier score where the model gives survival
curves (all four do). DeepHit has no scalar risk; it is ranked by minus its restricted mean
survival time over the discretisation grid.

The forest comes from scikit-survival (optional dependency ``ctvl[survival-refs]``); CoxPH is
:func:`fit_coxph` (its coefficients equal scikit-survival's ``CoxPHSurvivalAnalysis``, tested);
DeepSurv and DeepHit are torch MLPs trained with :func:`ctvl.survival.losses.neg_partial_log_likelihood`
and :func:`ctvl.survival.losses.deephit_loss`.
"""

from __future__ import annotations

import logging
import time as _time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ctvl.survival.cox import linear_cox_derivatives
from ctvl.survival.discretize import TimeDiscretizer
from ctvl.survival.heads import BreslowEstimator, CoxHead, DeepHitHead, survival_from_logits
from ctvl.survival.losses import deephit_loss, neg_partial_log_likelihood
from ctvl.survival.metrics import (
    check_survival,
    cumulative_dynamic_auc,
    harrell_c,
    integrated_brier_score,
    uno_c,
)
from ctvl.survival.network_fit import fit_network

logger = logging.getLogger(__name__)

__all__ = ["BASELINES", "CoxPHModel", "fit_and_score", "fit_coxph", "run_baselines"]

BASELINES = ("coxph", "deepsurv", "deephit", "rsf")
"""Names accepted by :func:`fit_and_score`."""


def _targets(y, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(event, time) from a pair or a scikit-survival structured array."""
    if isinstance(y, np.ndarray) and y.dtype.names:
        return check_survival(y[y.dtype.names[0]], y[y.dtype.names[1]], name)
    event, time = y
    return check_survival(event, time, name)


def _features(X) -> np.ndarray:
    """A float64 (n, d) matrix; a list of matrices is concatenated column-wise."""
    if isinstance(X, (list, tuple)):
        X = np.hstack([_features(x) for x in X])
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"features must be a 2-D (n, d) matrix, got shape {X.shape}")
    return X


def _standardise(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training-median imputation, then training mean/std scaling (constant columns left at 0)."""
    fill = np.nanmedian(X_train, axis=0)
    if np.isnan(fill).any():
        raise ValueError(f"feature columns {np.flatnonzero(np.isnan(fill)).tolist()} are empty in X_train")
    X_train, X_test = np.where(np.isnan(X_train), fill, X_train), np.where(np.isnan(X_test), fill, X_test)
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0
    return (X_train - mean) / std, (X_test - mean) / std


def _step(grid: np.ndarray, values: np.ndarray, times: np.ndarray, before: float = 1.0) -> np.ndarray:
    """Right-continuous step curves ``values`` (n, G) on ``grid`` (G,) read at ``times`` (T,)."""
    idx = np.searchsorted(grid, times, side="right") - 1
    out = values[:, np.maximum(idx, 0)]
    out[:, idx < 0] = before
    return out


# ------------------------------------------------------------------------------------------ models
# Each model: (X_train, event, time, X_test, times, seed, **kw) -> (risk (n_test,), surv (n_test, T)).


def _coxph(X, event, time, X_test, times, seed, alpha: float = 1e-2):
    model = fit_coxph(X, event, time, alpha=alpha, ties="efron")
    return model.predict_log_hazard(X_test), model.predict_survival(X_test, times)


def _rsf(X, event, time, X_test, times, seed, n_estimators: int = 100, min_samples_leaf: int = 15,
         max_depth: int | None = None, n_jobs: int = 1):
    from sksurv.ensemble import RandomSurvivalForest
    from sksurv.util import Surv

    model = RandomSurvivalForest(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
                                 max_depth=max_depth, n_jobs=n_jobs, random_state=seed)
    model.fit(X, Surv.from_arrays(event, time))
    surv = model.predict_survival_function(X_test, return_array=True)  # (n_test, n_unique_times)
    return model.predict(X_test), _step(model.unique_times_, surv, times)


def _deepsurv(X, event, time, X_test, times, seed, hidden=(32, 32), dropout: float = 0.1, epochs: int = 100,
              batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 1e-4, ties: str = "efron"):
    torch.manual_seed(seed)
    net = CoxHead(X.shape[1], hidden, dropout)
    tensors = (torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(event),
               torch.as_tensor(time, dtype=torch.float32))
    fit_network(net, lambda x, e, t: neg_partial_log_likelihood(net(x), e, t, ties=ties), tensors, seed=seed,
                epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
    with torch.no_grad():
        train_hz = net(torch.as_tensor(X, dtype=torch.float32)).double().numpy()
        risk = net(torch.as_tensor(X_test, dtype=torch.float32)).double().numpy()
    return risk, BreslowEstimator().fit(train_hz, event, time).predict_survival(risk, times)


def _deephit(X, event, time, X_test, times, seed, num_bins: int = 20, scheme: str = "quantile",
             hidden=(32, 32), dropout: float = 0.1, epochs: int = 100, batch_size: int = 128,
             lr: float = 1e-3, weight_decay: float = 1e-4, rank_weight: float = 0.2, sigma: float = 0.1):
    torch.manual_seed(seed)
    disc = TimeDiscretizer(num_bins, scheme=scheme).fit(time, event)
    bin_index, bin_event = disc.transform(time, event)
    net = DeepHitHead(X.shape[1], disc.cuts.size, hidden, dropout)
    tensors = (torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(bin_index), torch.as_tensor(bin_event))
    fit_network(net, lambda x, b, e: deephit_loss(net(x), b, e, rank_weight=rank_weight, sigma=sigma), tensors,
                seed=seed, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay)
    with torch.no_grad():
        surv = survival_from_logits(net(torch.as_tensor(X_test, dtype=torch.float32))).double().numpy()
    cuts = disc.cuts.astype(np.float64)
    rmst = surv[:, :-1] @ np.diff(cuts)  # area under the step curve between the first and last cut
    return -rmst, _step(cuts, surv, times)


_MODELS: dict[str, Callable] = {"coxph": _coxph, "deepsurv": _deepsurv, "deephit": _deephit, "rsf": _rsf}


# ------------------------------------------------------------------------------------------ scoring


def evaluation_times(time_test: np.ndarray, time_train: np.ndarray, num: int = 20) -> np.ndarray:
    """Default Brier/AUC grid: quantiles 10 %..80 % of the test times, inside both follow-ups."""
    grid = np.unique(np.quantile(time_test, np.linspace(0.1, 0.8, num)))
    return grid[(grid >= time_test.min()) & (grid < min(time_test.max(), time_train.max()))]


def score_predictions(y_train, y_test, risk, surv, times, tau: float | None = None) -> dict:
    """Harrell's C, Uno's C, mean cumulative/dynamic AUC and IBS of test predictions.

    Args:
        y_train: ``(event, time)`` of the training split (for the censoring weights).
        y_test: ``(event, time)`` of the scored patients, shape (n,) each.
        risk: (n,) higher = earlier event.
        surv: (n, T) survival probabilities at ``times`` (T,).
        tau: truncation time of Uno's C (None: none).

    Returns:
        dict with ``c_index`` (Harrell), ``uno_c``, ``mean_auc``, ``ibs``.
    """
    event, time = _targets(y_train, "y_train.")
    event_test, time_test = _targets(y_test, "y_test.")
    risk = np.asarray(risk, dtype=np.float64)
    return {
        "c_index": harrell_c(risk, event_test, time_test).cindex,
        "uno_c": uno_c(event, time, event_test, time_test, risk, tau=tau).cindex,
        "mean_auc": cumulative_dynamic_auc(event, time, event_test, time_test, risk, times)[1],
        "ibs": integrated_brier_score(event, time, event_test, time_test, surv, times),
    }


def predict_baseline(name: str, X_train, y_train, X_test, times, *, seed: int = 0, **kw):
    """Fit baseline ``name`` on the training rows; ``(risk (n_test,), surv (n_test, T))`` of ``X_test``
    at ``times`` (features standardised with the training mean and SD, as in :func:`fit_and_score`)."""
    if name not in _MODELS:
        raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")
    event, time = _targets(y_train, "y_train.")
    X, X_test = _features(X_train), _features(X_test)
    if X.shape[0] != time.size or X.shape[1] != X_test.shape[1]:
        raise ValueError(f"feature/target shapes disagree: X_train {X.shape}, y_train ({time.size},), "
                         f"X_test {X_test.shape}")
    X, X_test = _standardise(X, X_test)
    return _MODELS[name](X, event, time, X_test, np.asarray(times, dtype=np.float64), seed, **kw)


def fit_and_score(name: str, X_train, y_train, X_test, y_test, *, seed: int = 0, times=None,
                  tau: float | None = None, return_predictions: bool = False, **kw) -> dict:
    """Fit baseline ``name`` on the training split and score it on the test split.

    Args:
        name: one of :data:`BASELINES` (``"coxph"``, ``"deepsurv"``, ``"deephit"``, ``"rsf"``).
        X_train: (n_train, d) features, or a list of matrices to concatenate (e.g. clinical + image).
        y_train: ``(event, time)`` arrays of shape (n_train,), or a scikit-survival structured array.
        X_test, y_test: the same for the test split.
        seed: seeds network initialisation, batch order and the forest.
        times: (T,) increasing evaluation times of the Brier score and AUC; default: 20 quantiles
            (10 %..80 %) of the test times (:func:`evaluation_times`).
        tau: truncation time of Uno's C (None: none).
        return_predictions: also return ``risk`` (n_test,), ``surv`` (n_test, T) and ``times``.
        **kw: model hyper-parameters: ``coxph``: ``alpha``; ``rsf``: ``n_estimators``,
            ``min_samples_leaf``, ``max_depth``, ``n_jobs``; ``deepsurv``: ``hidden``, ``dropout``,
            ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``ties``; ``deephit``: those plus
            ``num_bins``, ``scheme``, ``rank_weight``, ``sigma`` (no ``ties``).

    Returns:
        dict with ``model``, ``c_index`` (Harrell), ``uno_c``, ``mean_auc``, ``ibs``,
        ``fit_seconds``, ``n_train``, ``n_test`` (and predictions on request).
    """
    event, time = _targets(y_train, "y_train.")
    event_test, time_test = _targets(y_test, "y_test.")
    if _features(X_test).shape[0] != time_test.size:
        raise ValueError(f"feature/target shapes disagree: X_test {_features(X_test).shape}, "
                         f"y_test ({time_test.size},)")
    times = evaluation_times(time_test, time) if times is None else np.asarray(times, dtype=np.float64)
    start = _time.perf_counter()
    risk, surv = predict_baseline(name, X_train, (event, time), X_test, times, seed=seed, **kw)
    elapsed = _time.perf_counter() - start
    out = {"model": name, **score_predictions((event, time), (event_test, time_test), risk, surv, times, tau),
           "fit_seconds": elapsed, "n_train": int(time.size), "n_test": int(time_test.size)}
    logger.info("%s: C=%.4f Uno=%.4f IBS=%.4f (%.1f s)",
                name, out["c_index"], out["uno_c"], out["ibs"], elapsed)
    if return_predictions:
        out.update(risk=risk, surv=surv, times=times)
    return out


def run_baselines(X_train, y_train, X_test, y_test, names: Sequence[str] = BASELINES, *, seed: int = 0,
                  model_kwargs: dict[str, dict] | None = None, **kw) -> dict[str, dict]:
    """Every baseline in ``names`` on the same split: ``{name: fit_and_score(name, ...)}``.

    ``model_kwargs`` maps a name to its hyper-parameters; ``kw`` (``times``, ``tau``,
    ``return_predictions``) goes to every call.
    """
    model_kwargs = model_kwargs or {}
    unknown = set(model_kwargs) - set(names)
    if unknown:
        raise ValueError(f"`model_kwargs` names baselines not being run: {sorted(unknown)}")
    return {name: fit_and_score(name, X_train, y_train, X_test, y_test, seed=seed, **kw,
                                **model_kwargs.get(name, {}))
            for name in names}


# ------------------------------------------------------------------------------------------ CoxPH


class CoxPHModel:
    """A fitted linear Cox model :math:`h(x) = x^\\top \\beta` with its Breslow baseline hazard.

    Made by :func:`fit_coxph`; ``to_dict``/``from_dict`` give a plain (JSON/YAML-safe) copy, never a pickle.

    Attributes:
        coef (np.ndarray): (d,) float64 coefficients :math:`\\beta`.
        breslow (BreslowEstimator | None): baseline of an unweighted fit; None for a weighted one.
        ties, alpha, feature_names, n_iter, neg_log_likelihood: how it was fitted (the last one: the
            summed, unpenalised loss at :math:`\\beta`).
    """

    def __init__(self, coef, *, ties: str = "efron", alpha: float = 0.0,
                 feature_names: Sequence[str] | None = None, n_iter: int = 0,
                 neg_log_likelihood: float = float("nan"), breslow: BreslowEstimator | None = None):
        self.coef = np.asarray(coef, dtype=np.float64)
        self.ties, self.alpha, self.n_iter = ties, float(alpha), int(n_iter)
        self.feature_names = None if feature_names is None else [str(f) for f in feature_names]
        self.neg_log_likelihood, self.breslow = float(neg_log_likelihood), breslow

    def predict_log_hazard(self, X) -> np.ndarray:
        """Log relative hazards :math:`x^\\top \\beta`, shape (n,), of the (n, d) matrix ``X``."""
        X = _features(X)
        if X.shape[1] != self.coef.size:
            raise ValueError(f"X has {X.shape[1]} columns, the model {self.coef.size} coefficients")
        return X @ self.coef

    def predict_survival(self, X, times) -> np.ndarray:
        """Survival :math:`S(t \\mid x)` at ``times`` (T,), shape (n, T) (needs the Breslow baseline)."""
        if self.breslow is None:
            raise ValueError("this CoxPHModel has no Breslow baseline (weighted fits have none yet)")
        return self.breslow.predict_survival(self.predict_log_hazard(X), times)

    def to_dict(self) -> dict[str, Any]:
        base = None if self.breslow is None else {"times": self.breslow.unique_times_.tolist(),
                                                  "cum_hazard": self.breslow.cum_baseline_hazard_.tolist()}
        return {"format": "ctvl.CoxPHModel", "version": 1, "coef": self.coef.tolist(), "ties": self.ties,
                "alpha": self.alpha, "feature_names": self.feature_names, "n_iter": self.n_iter,
                "neg_log_likelihood": self.neg_log_likelihood, "baseline": base}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> CoxPHModel:
        if state.get("format") != "ctvl.CoxPHModel" or state.get("version") != 1:
            raise ValueError(f"not a ctvl.CoxPHModel version 1 state: {state.get('format')!r}")
        breslow = None
        if state["baseline"] is not None:
            breslow = BreslowEstimator()
            breslow.unique_times_ = np.asarray(state["baseline"]["times"], dtype=np.float64)
            cum_hazard = np.asarray(state["baseline"]["cum_hazard"], dtype=np.float64)
            # BreslowEstimator has no from-arrays constructor: set the state that fit() leaves (log H_0)
            with np.errstate(divide="ignore"):
                breslow._log_cum_hazard = np.log(cum_hazard)
        return cls(state["coef"], ties=state["ties"], alpha=state["alpha"],
                   feature_names=state["feature_names"], n_iter=state["n_iter"],
                   neg_log_likelihood=state["neg_log_likelihood"], breslow=breslow)


def fit_coxph(X, event, time, *, weight=None, alpha: float = 0.0, ties: str = "efron", max_iter: int = 100,
              tol: float = 1e-10, feature_names: Sequence[str] | None = None) -> CoxPHModel:
    r"""Fit a linear Cox model by Newton-Raphson with step halving.

    Minimises the summed negative partial log-likelihood of
    :func:`ctvl.survival.losses.neg_partial_log_likelihood` (Breslow or Efron ties, optional weights)
    plus a ridge penalty:

    .. math::

        \hat\beta = \arg\min_\beta\; -\ell_w(X\beta) + \frac{\alpha}{2} \lVert\beta\rVert^2

    the objective of scikit-survival's ``CoxPHSurvivalAnalysis(alpha)`` (which divides both terms by n)
    and, with ``weight``, of lifelines' ``CoxPHFitter(weights_col=)`` / R's ``coxph(weights=)`` at
    ``alpha=0``. Gradient and Hessian in closed form (:func:`ctvl.survival.cox.linear_cox_derivatives`,
    tested against autograd through the loss, float64); it stops when an accepted
    step lowers the objective by less than ``tol`` relative to its size. With ``weight`` the Breslow
    baseline is not fitted (``breslow=None``): the estimator in :mod:`ctvl.survival.heads` is unweighted.

    References: Cox (1972) JRSS-B 34:187; Efron (1977) JASA 72:557; Breslow (1972) JRSS-B 34:216.

    Args:
        X (array-like, float): (n, d) covariates (a list of matrices is concatenated); no NaN.
        event (array-like, bool): (n,).
        time (array-like, float): (n,), finite.
        weight (array-like, float, optional): (n,) per-sample weights >= 0 (e.g. inverse propensity).
        alpha: ridge penalty >= 0; > 0 makes collinear designs (full one-hot blocks) solvable.
        ties: ``"efron"`` or ``"breslow"``.
        max_iter: Newton iterations before giving up (logged as a warning).
        tol: relative decrease of the objective that counts as converged.
        feature_names: names of the d columns, kept with the model.

    Returns:
        :class:`CoxPHModel`.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 2))
        >>> time = rng.exponential(np.exp(-X @ np.array([1.0, -0.5])))
        >>> model = fit_coxph(X, np.ones(200, bool), time)
        >>> np.round(model.coef, 2)
        array([ 1.03, -0.54])
    """
    X = _features(X)
    event, time = check_survival(event, time)
    if X.shape[0] != time.size or np.isnan(X).any():
        raise ValueError(f"X must be a finite (n, d) matrix with n = {time.size}, got shape {X.shape}")
    if alpha < 0:
        raise ValueError(f"`alpha` must be >= 0, got {alpha}")
    w = None if weight is None else np.asarray(weight, dtype=np.float64)

    def objective(beta: np.ndarray, derivatives: bool = False):
        loss, grad, hessian = linear_cox_derivatives(X, event, time, beta, ties=ties, weight=w,
                                                     derivatives=derivatives)
        loss += 0.5 * alpha * float(beta @ beta)
        return (loss, grad + alpha * beta, hessian + alpha * np.eye(beta.size)) if derivatives else loss

    beta = np.zeros(X.shape[1])
    loss = objective(beta)
    for n_iter in range(1, max_iter + 1):
        _, grad, hessian = objective(beta, derivatives=True)
        try:
            step = np.linalg.solve(hessian, grad)
        except np.linalg.LinAlgError:
            raise ValueError("singular Hessian in fit_coxph: collinear or constant columns; use `alpha` > 0 "
                             "or drop a level of each one-hot block") from None
        for _ in range(30):  # step halving until the objective does not increase
            candidate = beta - step
            new_loss = objective(candidate)
            if new_loss <= loss:
                break
            step = step / 2
        else:
            break  # no descent left at machine precision
        beta, decrease, loss = candidate, loss - new_loss, new_loss
        if decrease <= tol * max(abs(loss), 1.0):
            break
    else:
        logger.warning("fit_coxph did not converge in %d iterations (separated data? try `alpha` > 0)",
                       max_iter)
    coef = beta
    breslow = BreslowEstimator().fit(X @ coef, event, time) if weight is None else None
    return CoxPHModel(coef, ties=ties, alpha=alpha, feature_names=feature_names, n_iter=n_iter,
                      neg_log_likelihood=loss - 0.5 * alpha * float(coef @ coef), breslow=breslow)
