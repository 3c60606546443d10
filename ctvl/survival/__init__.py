"""ctvl survival: losses, heads, time discretisation, cross-rank gathering and metrics.

Entry points (all importable from ``ctvl.survival``):

- losses (:mod:`ctvl.survival.losses`): ``neg_partial_log_likelihood`` (implemented in
  :mod:`ctvl.survival.cox`), ``deephit_loss``, ``dispersion_loss``, ``dispersion_loss_discrete``, ``alignment_loss``.
- heads (:mod:`ctvl.survival.heads`): ``ResidualAdapter``, ``CoxHead``, ``DeepHitHead``,
  ``build_survival_head``, ``pmf_from_logits``, ``survival_from_logits``, ``BreslowEstimator``,
  ``survival_frame``.
- discretisation (:mod:`ctvl.survival.discretize`): ``TimeDiscretizer``.
- data parallel (:mod:`ctvl.survival.distributed`): ``gather_with_grad``, ``gather_survival_batch``,
  ``is_distributed``.
- metrics (:mod:`ctvl.survival.metrics`, imported on first use): ``harrell_c``, ``uno_c``, ``antolini_c``,
  ``brier_score``, ``integrated_brier_score``, ``cumulative_dynamic_auc``, ``kaplan_meier``, ``logrank_test``,
  ``risk_groups``.
- linear Cox model (:mod:`ctvl.survival.baselines`, imported on first use): ``fit_coxph``, ``CoxPHModel``;
  its closed-form derivatives ``linear_cox_derivatives`` (:mod:`ctvl.survival.cox`).

The Cox and DeepHit losses take per-sample ``weight`` (inverse propensity weighting). Tables and their
encoder live in the data layer (:mod:`ctvl.data.tabular`), which imports this package, never the reverse.
"""

from __future__ import annotations

import importlib

from ctvl.survival.discretize import TimeDiscretizer
from ctvl.survival.distributed import gather_survival_batch, gather_with_grad, is_distributed
from ctvl.survival.heads import (
    BreslowEstimator,
    CoxHead,
    DeepHitHead,
    ResidualAdapter,
    build_survival_head,
    pmf_from_logits,
    survival_frame,
    survival_from_logits,
)
from ctvl.survival.cox import linear_cox_derivatives
from ctvl.survival.losses import (
    alignment_loss,
    deephit_loss,
    dispersion_loss,
    dispersion_loss_discrete,
    neg_partial_log_likelihood,
)

_METRICS = (
    "harrell_c",
    "uno_c",
    "antolini_c",
    "brier_score",
    "integrated_brier_score",
    "cumulative_dynamic_auc",
    "kaplan_meier",
    "logrank_test",
    "risk_groups",
)
_BASELINES = ("fit_coxph", "CoxPHModel")

__all__ = [
    "neg_partial_log_likelihood",
    "linear_cox_derivatives",
    "deephit_loss",
    "dispersion_loss",
    "dispersion_loss_discrete",
    "alignment_loss",
    "ResidualAdapter",
    "CoxHead",
    "DeepHitHead",
    "build_survival_head",
    "pmf_from_logits",
    "survival_from_logits",
    "BreslowEstimator",
    "survival_frame",
    "TimeDiscretizer",
    "gather_with_grad",
    "gather_survival_batch",
    "is_distributed",
    *_METRICS,
    *_BASELINES,
]


def __getattr__(name: str):
    # Metrics load lazily: they pull in more dependencies than training needs.
    if name in _METRICS:
        return getattr(importlib.import_module("ctvl.survival.metrics"), name)
    if name in _BASELINES:
        return getattr(importlib.import_module("ctvl.survival.baselines"), name)
    raise AttributeError(f"module 'ctvl.survival' has no attribute {name!r}")
