"""Survival baselines on any feature matrix: CoxPH, DeepSurv, DeepHit and a random survival forest.

Entry points:

- :func:`fit_and_score` — fit one baseline on a training split, predict the test split, score it.
- :func:`run_baselines` — every baseline on the same split; a dict of score dicts.
- :func:`load_reference_dataset` — the data sets shipped with scikit-survival (GBSG2, WHAS500,
  ACTG320 = ``aids``, FLChain) as a float feature matrix, for reproducing the reference table in
  ``/work/shared/ANCHORS.md``.

Features can be clinical covariates, text or image embeddings, or several of these: pass a list of
(n, d_k) matrices and they are concatenated. Missing cells are filled with the training median, then
every column is standardised with training statistics. Targets are ``(event, time)`` pairs or
scikit-survival structured arrays.

Scores (all from :mod:`ctvl.survival.metrics`): Harrell's C, Uno's C (IPCW from the training split),
the mean cumulative/dynamic AUC, and the integrated Brier score where the model gives survival
curves (all four do). DeepHit has no scalar risk; it is ranked by minus its restricted mean
survival time over the discretisation grid.

CoxPH and the forest come from scikit-survival (optional dependency ``ctvl[survival-refs]``);
DeepSurv and DeepHit are torch MLPs trained with :func:`ctvl.survival.losses.neg_partial_log_likelihood`
and :func:`ctvl.survival.losses.deephit_loss`.
"""

from __future__ import annotations

import logging
import time as _time
from typing import Callable, Sequence

import numpy as np
import torch

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

logger = logging.getLogger(__name__)

__all__ = ["BASELINES", "fit_and_score", "load_reference_dataset", "run_baselines"]

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
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    model = CoxPHSurvivalAnalysis(alpha=alpha, ties="efron").fit(X, Surv.from_arrays(event, time))
    breslow = BreslowEstimator().fit(model.predict(X), event, time)
    risk = model.predict(X_test)
    return risk, breslow.predict_survival(risk, times)


def _rsf(X, event, time, X_test, times, seed, n_estimators: int = 100, min_samples_leaf: int = 15,
         max_depth: int | None = None, n_jobs: int = 1):
    from sksurv.ensemble import RandomSurvivalForest
    from sksurv.util import Surv

    model = RandomSurvivalForest(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
                                 max_depth=max_depth, n_jobs=n_jobs, random_state=seed)
    model.fit(X, Surv.from_arrays(event, time))
    surv = model.predict_survival_function(X_test, return_array=True)  # (n_test, n_unique_times)
    return model.predict(X_test), _step(model.unique_times_, surv, times)


def _train(net: torch.nn.Module, X: np.ndarray, loss_fn: Callable, targets: Sequence[torch.Tensor], seed: int,
           epochs: int, batch_size: int, lr: float, weight_decay: float) -> None:
    """Adam on shuffled mini-batches; ``loss_fn(net(x_batch), *target_batches)``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(X, dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=gen).split(batch_size):
            if idx.numel() < 2:
                continue  # a lone sample has no risk set to compare against
            loss = loss_fn(net(x[idx]), *(t[idx] for t in targets))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()


def _deepsurv(X, event, time, X_test, times, seed, hidden=(32, 32), dropout: float = 0.1, epochs: int = 100,
              batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 1e-4, ties: str = "efron"):
    torch.manual_seed(seed)
    net = CoxHead(X.shape[1], hidden, dropout)
    targets = (torch.as_tensor(event), torch.as_tensor(time, dtype=torch.float32))
    _train(net, X, lambda out, e, t: neg_partial_log_likelihood(out, e, t, ties=ties), targets, seed,
           epochs, batch_size, lr, weight_decay)
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
    targets = (torch.as_tensor(bin_index), torch.as_tensor(bin_event))
    _train(net, X, lambda out, b, e: deephit_loss(out, b, e, rank_weight=rank_weight, sigma=sigma), targets,
           seed, epochs, batch_size, lr, weight_decay)
    with torch.no_grad():
        surv = survival_from_logits(net(torch.as_tensor(X_test, dtype=torch.float32))).double().numpy()
    cuts = disc.cuts.astype(np.float64)
    rmst = surv[:, :-1] @ np.diff(cuts)  # area under the step curve between the first and last cut
    return -rmst, _step(cuts, surv, times)


_MODELS: dict[str, Callable] = {"coxph": _coxph, "deepsurv": _deepsurv, "deephit": _deephit, "rsf": _rsf}


# ------------------------------------------------------------------------------------------ scoring


def _eval_times(time_test: np.ndarray, time_train: np.ndarray, num: int = 20) -> np.ndarray:
    """Default Brier/AUC grid: quantiles 10 %..80 % of the test times, inside both follow-ups."""
    grid = np.unique(np.quantile(time_test, np.linspace(0.1, 0.8, num)))
    return grid[(grid >= time_test.min()) & (grid < min(time_test.max(), time_train.max()))]


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
            (10 %..80 %) of the test times.
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
    if name not in _MODELS:
        raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")
    event, time = _targets(y_train, "y_train.")
    event_test, time_test = _targets(y_test, "y_test.")
    X, X_test = _features(X_train), _features(X_test)
    if X.shape[0] != time.size or X_test.shape[0] != time_test.size or X.shape[1] != X_test.shape[1]:
        raise ValueError(f"feature/target shapes disagree: X_train {X.shape}, y_train ({time.size},), "
                         f"X_test {X_test.shape}, y_test ({time_test.size},)")
    X, X_test = _standardise(X, X_test)
    times = _eval_times(time_test, time) if times is None else np.asarray(times, dtype=np.float64)
    start = _time.perf_counter()
    risk, surv = _MODELS[name](X, event, time, X_test, times, seed, **kw)
    elapsed = _time.perf_counter() - start
    out = {
        "model": name,
        "c_index": harrell_c(risk, event_test, time_test).cindex,
        "uno_c": uno_c(event, time, event_test, time_test, risk, tau=tau).cindex,
        "mean_auc": cumulative_dynamic_auc(event, time, event_test, time_test, risk, times)[1],
        "ibs": integrated_brier_score(event, time, event_test, time_test, surv, times),
        "fit_seconds": elapsed,
        "n_train": int(time.size),
        "n_test": int(time_test.size),
    }
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


def load_reference_dataset(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """A data set shipped with scikit-survival as ``(X, event, time, feature_names)``.

    Categorical columns are one-hot encoded (first level dropped); ordinal codes stay numeric.
    FLChain's ``chapter`` (cause of death, known only for the dead: a target leak) is dropped and its
    missing ``creatinine`` cells stay NaN (:func:`fit_and_score` imputes the training median).

    Args:
        name: ``"gbsg2"``, ``"whas500"``, ``"aids"`` (ACTG320) or ``"flchain"``.

    Returns:
        ``X`` (n, d) float64, ``event`` (n,) bool, ``time`` (n,) float64, column names.
    """
    import pandas as pd
    from sksurv import datasets

    loaders = {"gbsg2": datasets.load_gbsg2, "whas500": datasets.load_whas500,
               "aids": datasets.load_aids, "flchain": datasets.load_flchain}
    if name not in loaders:
        raise ValueError(f"unknown data set {name!r}; choose from {sorted(loaders)}")
    X, y = loaders[name]()
    if name == "flchain":
        X = X.drop(columns="chapter")
    X = pd.get_dummies(X, drop_first=True, dtype=float)
    event, time = check_survival(y[y.dtype.names[0]], y[y.dtype.names[1]])
    return X.to_numpy(np.float64), event, time, list(X.columns)
