r"""Event and duration for synthetic covariates (the ``generate`` outcome mode of ``ctvl synth-tabular sample``).

The event time of a synthetic patient with log-hazard :math:`h` is drawn from the Cox model's survival
curve :math:`S(t \mid h) = \exp(-\hat H_0(t)\, e^{h})` (Breslow baseline :math:`\hat H_0` of the teacher)
by inversion, and an independent censoring time from the real censoring distribution :math:`\hat G`
(Kaplan-Meier of the censorings):

.. math::

    T = \min\{t_k : \hat H_0(t_k)\, e^{h} \ge -\log U\}, \qquad
    C = \min\{t_k : \hat G(t_k) \le V\}, \qquad U, V \sim \mathcal U(0, 1),

with :math:`T = \infty` where the curve never falls to :math:`U` and :math:`C` the last follow-up time where
:math:`\hat G` never falls to :math:`V` (administrative end of the study). The row gets
:math:`\min(T, C)` and the event :math:`T \le C` (an event tied with a censoring counts, as in the
Kaplan-Meier convention). Times are the real table's distinct times, never new values.

    >>> model = OutcomeModel().fit(np.zeros(6), np.array([1, 1, 0, 1, 0, 1], bool), np.arange(1.0, 7.0))
    >>> time, event = model.sample(np.zeros(4), np.random.default_rng(0))
    >>> bool(np.isin(time, np.arange(1.0, 7.0)).all()), event.dtype
    (True, dtype('bool'))
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ctvl.survival.curves import censoring_survival, check_survival
from ctvl.survival.heads import BreslowEstimator

__all__ = ["OutcomeModel"]


class OutcomeModel:
    """Breslow baseline of a Cox model and the censoring curve of the real table it was fitted on.

    Attributes (after ``fit``):
        times_ (np.ndarray): (K,) sorted distinct real times.
        cum_hazard_ (np.ndarray): (K,) Breslow :math:`\\hat H_0` at ``times_``.
        censoring_ (np.ndarray): (K,) :math:`\\hat G` at ``times_``.
    """

    def fit(self, log_hazard, event, time) -> OutcomeModel:
        """Fit on the real rows: their log-hazards (n,) under the Cox model, events (n,) and times (n,)."""
        event, time = check_survival(event, time)
        breslow = BreslowEstimator().fit(np.asarray(log_hazard, np.float64), event, time)
        self.times_ = breslow.unique_times_
        self.cum_hazard_ = breslow.cum_baseline_hazard_
        self.censoring_ = censoring_survival(event, time, self.times_)
        return self

    def sample(self, log_hazard, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Observed times (n,) float64 and events (n,) bool for log-hazards (n,) on the fitted scale."""
        log_hazard = np.asarray(log_hazard, np.float64)
        u, v = rng.uniform(size=log_hazard.size), rng.uniform(size=log_hazard.size)
        need = -np.log(u) * np.exp(-log_hazard)  # H_0(T) must reach -log(U) / exp(h)
        k = np.searchsorted(self.cum_hazard_, need, side="left")
        event_time = np.where(k < self.times_.size, self.times_[np.minimum(k, self.times_.size - 1)], np.inf)
        j = np.searchsorted(-self.censoring_, -v, side="left")  # first t_k with G(t_k) <= V
        censor_time = self.times_[np.minimum(j, self.times_.size - 1)]
        return np.minimum(event_time, censor_time), event_time <= censor_time

    def to_dict(self) -> dict[str, Any]:
        return {"format": "ctvl.OutcomeModel", "version": 1, "times": self.times_.tolist(),
                "cum_hazard": self.cum_hazard_.tolist(), "censoring": self.censoring_.tolist()}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> OutcomeModel:
        if state.get("format") != "ctvl.OutcomeModel" or state.get("version") != 1:
            raise ValueError(f"not a ctvl.OutcomeModel version 1 state: {state.get('format')!r}")
        model = cls()
        model.times_, model.cum_hazard_, model.censoring_ = (np.asarray(state[k], np.float64)
                                                              for k in ("times", "cum_hazard", "censoring"))
        return model
