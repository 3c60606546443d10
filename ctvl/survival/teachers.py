r"""Risk teachers for distillation: a fitted model whose risk a student learns to reproduce.

Every teacher answers on the CoxPH log-hazard scale, so that one Breslow baseline turns any risk
into survival curves :math:`S(t \mid x) = S_0(t)^{\exp h(x)}`:

- ``coxph``: the ridge-penalised CoxPH log-hazard :math:`h(x) = \beta^\top x`;
- ``rsf``: a random survival forest's risk, mapped onto the CoxPH scale by its training ECDF,
  :math:`h(x) = Q_{\text{cox}}(F_{\text{rsf}}(s(x)))` (:math:`Q`: the quantile function of the
  training patients' CoxPH log-hazards);
- ``ensemble``: the mean of the two training-ECDF ranks, mapped the same way (rank averaging).

:func:`fit_scale` is the one-parameter calibration of a student's risk to the teacher's scale.
"""

from __future__ import annotations

import numpy as np

from ctvl.survival.baselines import fit_coxph
from ctvl.survival.heads import BreslowEstimator

TEACHERS = ("coxph", "rsf", "ensemble")


def _ecdf(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Mid-rank ECDF of ``values`` in the sorted ``reference`` (ties share the middle), in [0, 1]."""
    lo = np.searchsorted(reference, values, side="left")
    hi = np.searchsorted(reference, values, side="right")
    return 0.5 * (lo + hi) / reference.size


class Teacher:
    """A fitted teacher: ``predict_log_hazard(X)`` and a Breslow baseline of its training log-hazards."""

    def __init__(self, name: str, alpha: float = 0.01, seed: int = 0, n_estimators: int = 100,
                 min_samples_leaf: int = 15):
        if name not in TEACHERS:
            raise ValueError(f"unknown teacher {name!r}; choose from {TEACHERS}")
        self.name, self.alpha, self.seed = name, alpha, seed
        self.n_estimators, self.min_samples_leaf = n_estimators, min_samples_leaf

    def fit(self, X, event, time) -> Teacher:
        """Fit on the training rows: ``X`` (n, d) float, ``event`` (n,) bool, ``time`` (n,) float."""
        X = np.asarray(X, dtype=np.float64)
        event, time = np.asarray(event, dtype=bool), np.asarray(time, dtype=np.float64)
        self.cox_ = fit_coxph(X, event, time, alpha=self.alpha, ties="efron")
        self.cox_train_ = np.sort(self.cox_.predict_log_hazard(X))
        if self.name != "coxph":
            from sksurv.ensemble import RandomSurvivalForest
            from sksurv.util import Surv

            self.rsf_ = RandomSurvivalForest(n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf,
                                             n_jobs=1, random_state=self.seed).fit(X, Surv.from_arrays(event, time))
            self.rsf_train_ = np.sort(self.rsf_.predict(X))
        self.breslow_ = BreslowEstimator().fit(self.predict_log_hazard(X), event, time)
        return self

    def predict_log_hazard(self, X) -> np.ndarray:
        """``(n, d)`` -> ``(n,)`` log-hazards on the CoxPH scale."""
        X = np.asarray(X, dtype=np.float64)
        cox = self.cox_.predict_log_hazard(X)
        if self.name == "coxph":
            return cox
        rank = _ecdf(self.rsf_train_, self.rsf_.predict(X))
        if self.name == "ensemble":
            rank = 0.5 * (rank + _ecdf(self.cox_train_, cox))
        return np.quantile(self.cox_train_, np.clip(rank, 0.0, 1.0))

    def predict_survival(self, log_hazard, times) -> np.ndarray:
        """Survival ``(n, T)`` at ``times`` of log-hazards ``(n,)`` on this teacher's scale."""
        return self.breslow_.predict_survival(log_hazard, times)


def fit_scale(score, target) -> tuple[float, float, float]:
    r"""One-parameter calibration of a score to a target scale: :math:`\hat h = \bar t + b\,(s - \bar s)`.

    :math:`b = \operatorname{cov}(s, t) / \operatorname{var}(s)` by least squares on the given rows
    (the training patients); the centre is the target's mean, so only the slope is fitted.

    Returns:
        (b, mean score, mean target); apply as ``mean_target + b * (score - mean_score)``.
    """
    s, t = np.asarray(score, dtype=np.float64), np.asarray(target, dtype=np.float64)
    var = s.var()
    b = float(np.cov(s, t, bias=True)[0, 1] / var) if var > 0 else 0.0
    return b, float(s.mean()), float(t.mean())
