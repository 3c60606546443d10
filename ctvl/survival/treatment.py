r"""Treatment effects on survival: hazard factorisation, S- and T-learners (Hong et al., CHIL 2026; paper 004).

All three models give a piecewise-constant log hazard :math:`\eta_j(x, a)` on the same cuts
(:mod:`ctvl.survival.piecewise`) from the same backbone (:class:`HazardNet`, an MLP x -> J values), are
trained by the same weighted likelihood and loop (:func:`ctvl.survival.network_fit.fit_network`), and
differ only in how treatment enters:

- ``factorised``: :math:`\eta_j(x, a) = b_j(x) + a\, g_j(x)` -- a shared baseline network and a log hazard
  ratio :math:`g_j(x) = c_j + r_j(x)`: a log-HR curve common to all patients plus a network's departure from
  it, :math:`h(t \mid x, a) = h_0(t \mid x)\, e^{a g(t, x)}`; the log-HR is :math:`g` itself.
- ``factorised`` with K subgroups: :math:`g_j(x) = \sum_k \pi_k(x)\, \gamma_{kj}`, a softmax assignment
  :math:`\pi(x)` and one log-HR curve :math:`\gamma_k` per subgroup (all free; none is fixed at zero),
  regularised by :math:`\lambda_e \overline{H(\pi_i)} - \lambda_b H(\bar\pi)` (crisp assignments, no empty
  subgroup). Subgroups are numbered by increasing mean log-HR, so labels do not switch between fits.
- ``s_learner``: :math:`\eta_j(x, a) = f_j([x, a])`; log-HR :math:`f_j([x, 1]) - f_j([x, 0])`.
- ``t_learner``: :math:`\eta_j(x, a) = f^{(a)}_j(x)`, one network per arm; log-HR :math:`f^{(1)} - f^{(0)}`.

The factorised model's explicit log-HR is regularised: :math:`\lambda_s\,\text{mean}_i \sum_j
(g_{i,j+1} - g_{ij})^2` (smooth over time) + :math:`\lambda_h\,\text{mean}_{ij}\, r_{ij}^2` (one HR curve
unless the data say otherwise); the S- and T-learners have no log-HR term to regularise and are fitted by
the plain likelihood (penalising their implied log-HR teaches them to ignore the treatment). Sample weights
(IPW, :mod:`ctvl.survival.propensity`) weight the likelihood.

Entry points: :class:`TreatmentEffectModel` (``fit``, ``log_hazard_ratio``, ``survival``, ``risk``,
``subgroup_probabilities``), :func:`estimate_treatment_effect` (cross-fitted propensity, weights, model),
:func:`average_log_hr` (one number, comparable to a Cox coefficient) and
:func:`bootstrap_marginal_log_hr` (refits for its bands).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from ctvl.config import TreatmentConfig, from_dict, to_dict
from ctvl.survival.heads import mlp_stack
from ctvl.survival.network_fit import fit_network
from ctvl.survival.piecewise import (
    hazard_cuts,
    interval_exposure,
    interval_index,
    interval_midpoints,
    pc_hazard_nll,
    pc_survival,
)
from ctvl.survival.propensity import check_treatment, cross_fit_propensity, effective_sample_size, ipw_weights

__all__ = ["HazardNet", "TreatmentEffectModel", "TreatmentEstimate", "estimate_treatment_effect",
           "average_log_hr", "marginal_log_hr", "bootstrap_marginal_log_hr", "fit_propensity"]

logger = logging.getLogger(__name__)


class HazardNet(nn.Module):
    """The backbone: an MLP giving one value per interval. Shape: (B, D) -> (B, J)."""

    def __init__(self, dim: int, num_intervals: int, hidden=(32, 32), dropout: float = 0.1):
        super().__init__()
        self.body, width = mlp_stack(dim, hidden, dropout)
        self.out = nn.Linear(width, num_intervals)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))  # (B, D) -> (B, J)


class _Factorised(nn.Module):
    """:math:`\\eta = b(x) + a\\,g(x)`; with ``subgroups`` K >= 2, :math:`g(x) = \\pi(x)\\,\\Gamma`."""

    def __init__(self, dim: int, J: int, hidden, dropout: float, subgroups: int = 0):
        super().__init__()
        self.base = HazardNet(dim, J, hidden, dropout)
        self.subgroups = subgroups
        if subgroups:
            self.assign = HazardNet(dim, subgroups, hidden, dropout)  # (B, D) -> (B, K) logits
            self.effects = nn.Parameter(0.1 * torch.randn(subgroups, J))  # (K, J) log-HR per subgroup
        else:
            self.level = nn.Parameter(torch.zeros(J))  # (J,) log-HR common to all patients; starts at HR = 1
            self.ratio = HazardNet(dim, J, hidden, dropout)  # (B, J) departure of each patient from it
            nn.init.zeros_(self.ratio.out.weight)
            nn.init.zeros_(self.ratio.out.bias)

    def assignment(self, x: torch.Tensor) -> torch.Tensor:
        return self.assign(x).softmax(-1)  # (B, K)

    def log_hr(self, x: torch.Tensor) -> torch.Tensor:
        return self.assignment(x) @ self.effects if self.subgroups else self.level + self.ratio(x)  # (B, J)

    def departure(self, x: torch.Tensor) -> torch.Tensor:
        """(B, J) each patient's log-HR minus the common one (0 with subgroups: they have no such term)."""
        return torch.zeros(x.shape[0], 1) if self.subgroups else self.ratio(x)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.base(x) + a[:, None] * self.log_hr(x)  # (B, J)


class _SLearner(nn.Module):
    def __init__(self, dim: int, J: int, hidden, dropout: float):
        super().__init__()
        self.net = HazardNet(dim + 1, J, hidden, dropout)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, a[:, None]], 1))  # (B, D + 1) -> (B, J)

    def log_hr(self, x: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(x.shape[0], dtype=x.dtype)
        return self(x, ones) - self(x, torch.zeros_like(ones))


class _TLearner(nn.Module):
    def __init__(self, dim: int, J: int, hidden, dropout: float):
        super().__init__()
        self.arms = nn.ModuleList([HazardNet(dim, J, hidden, dropout) for _ in range(2)])

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.where(a[:, None] > 0.5, self.arms[1](x), self.arms[0](x))  # (B, J)

    def log_hr(self, x: torch.Tensor) -> torch.Tensor:
        return self.arms[1](x) - self.arms[0](x)


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


@dataclass
class TreatmentEffectModel:
    """One of the three treatment models on standardised covariates, fitted by :meth:`fit`."""

    cfg: TreatmentConfig

    def _build(self, dim: int, J: int) -> nn.Module:
        c = self.cfg
        if c.model == "factorised":
            return _Factorised(dim, J, c.hidden, c.dropout, c.subgroups)
        return (_SLearner if c.model == "s_learner" else _TLearner)(dim, J, c.hidden, c.dropout)

    def _loss(self, x, a, interval, event, exposure, weight):
        eta = self.net(x, a)
        loss = pc_hazard_nll(eta, interval, event, exposure, weight)
        if self.cfg.model == "factorised":
            log_hr = self.net.log_hr(x)  # (B, J)
            loss = loss + self.cfg.smooth * log_hr.diff(dim=1).pow(2).sum(1).mean()
            loss = loss + self.cfg.heterogeneity * self.net.departure(x).pow(2).mean()
        if self.cfg.subgroups:
            pi = self.net.assignment(x)
            loss = loss + self.cfg.subgroup_entropy * _entropy(pi).mean() - self.cfg.subgroup_balance * _entropy(
                pi.mean(0))
        return loss

    def fit(self, X, treatment, time, event, weight=None, row_ids=None) -> TreatmentEffectModel:
        """Fit on (n, d) covariates, (n,) 0/1 treatment, times, events and optional (n,) sample weights.

        Covariates are standardised with these rows' mean and SD; cuts at their event-time quantiles;
        ``cfg.validation_fraction`` of the rows (stratified on the arm) are held out for early stopping.
        ``row_ids`` (n,) names the patient behind each row of a bootstrap resample: all copies of a patient
        go to the same side of that hold-out (else copies in both make the validation loss useless).
        """
        c = self.cfg
        X = np.asarray(X, np.float64)
        a = check_treatment(treatment)
        time, event = np.asarray(time, np.float64), np.asarray(event, bool)
        weight = np.ones(a.size) if weight is None else np.asarray(weight, np.float64)
        self.mean_, self.scale_ = X.mean(0), np.where(X.std(0) > 0, X.std(0), 1.0)
        self.cuts_ = hazard_cuts(time, event, c.num_intervals)
        interval, exposure = interval_exposure(time, self.cuts_)
        counts = np.bincount(interval[event], minlength=self.cuts_.size - 1).astype(np.float64)
        self.event_share_ = counts / counts.sum()
        torch.manual_seed(c.seed)
        self.net = self._build(X.shape[1], self.cuts_.size - 1)
        self._start_at_crude_rates(counts, exposure.sum(0))
        f32 = lambda v: torch.as_tensor(v, dtype=torch.float32)  # noqa: E731
        tensors = (f32(self._standardise(X)), f32(a), torch.as_tensor(interval), torch.as_tensor(event),
                   f32(exposure), f32(weight))
        held = _validation_rows(a, c.validation_fraction, c.seed, row_ids)
        train = np.setdiff1d(np.arange(a.size), held)
        self.history_ = fit_network(self.net, self._loss, [t[train] for t in tensors], seed=c.seed, epochs=c.epochs,
                                    batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
                                    validation=[t[held] for t in tensors], patience=c.patience,
                                    param_groups=self._param_groups())
        if c.model == "factorised" and not c.subgroups:
            self._refit_level(*tensors[:-1], weight=tensors[-1])
        self._order_subgroups()
        return self

    def _refit_level(self, x, a, interval, event, exposure, weight) -> None:
        r"""Set the common log-HR curve :math:`c` to its penalised maximum-likelihood value given the networks.

        With :math:`b` and :math:`r` fixed, the treated rows' likelihood in :math:`c_j` is that of a Poisson
        rate: :math:`\sum_j D_j c_j - e^{c_j} R_j` with :math:`D_j = \sum_{i: a_i = 1} w_i d_i [\kappa_i = j]`
        and :math:`R_j = \sum_{i: a_i = 1} w_i e^{b_{ij} + r_{ij}} E_{ij}`; minus that plus
        :math:`\lambda_s \sum_i w_i \sum_j (c_{j+1} - c_j)^2` (the training penalty on the summed scale) plus a ridge
        :math:`10^{-3} \sum_i w_i \lVert c \rVert^2` (finite where an interval has no treated event) is
        convex, minimised by Newton's method. Stochastic steps leave :math:`c` wherever early stopping
        catches it (Adam moves J parameters by about one learning rate per step whatever the gradient).
        """
        net = self.net
        with torch.no_grad():
            offset = (net.base(x) + net.ratio(x)).double()  # (n, J)
            treated = (a > 0.5).double() * weight.double()  # (n,)
            J = offset.shape[1]
            D = torch.zeros(J, dtype=torch.float64).index_add_(0, interval, treated * event.double())
            R = (treated[:, None] * offset.exp() * exposure.double()).sum(0)  # (J,)
            lam = self.cfg.smooth * float(weight.sum())
            diff = torch.diff(torch.eye(J, dtype=torch.float64), dim=0)  # (J - 1, J)
            laplacian = 2.0 * lam * diff.T @ diff + 1e-3 * float(weight.sum()) * torch.eye(J, dtype=torch.float64)
            c = net.level.detach().double().clone()
            for _ in range(100):
                grad = -D + c.exp() * R + laplacian @ c
                step = torch.linalg.solve(torch.diag(c.exp() * R) + laplacian, grad)
                c = c - step
                if float(step.abs().max()) < 1e-10:
                    break
            net.level.copy_(c.float())

    def _start_at_crude_rates(self, events: np.ndarray, exposure: np.ndarray) -> None:
        """Output biases of the hazard networks at the pooled log rate of each interval, log(D_j / E_j):
        times in days put log-hazards near -7, which a zero-initialised output would need thousands of steps
        to reach."""
        log_rate = torch.as_tensor(np.log((events + 0.5) / np.maximum(exposure, 1e-12)), dtype=torch.float32)
        net = self.net
        outputs = {"factorised": lambda: [net.base.out], "s_learner": lambda: [net.net.out],
                   "t_learner": lambda: [arm.out for arm in net.arms]}[self.cfg.model]()
        with torch.no_grad():
            for layer in outputs:
                layer.bias.copy_(log_rate)

    def _param_groups(self) -> list[dict]:
        """The common log-HR curve (J values, learnt from the treated rows only) at ``level_lr_scale`` x lr."""
        level = [p for n, p in self.net.named_parameters() if n in ("level", "effects")]
        rest = [p for n, p in self.net.named_parameters() if n not in ("level", "effects")]
        groups = [{"params": rest}]
        return groups + [{"params": level, "lr": self.cfg.lr * self.cfg.level_lr_scale, "weight_decay": 0.0}] \
            if level else groups

    def _standardise(self, X) -> np.ndarray:
        return (np.asarray(X, np.float64) - self.mean_) / self.scale_

    def _order_subgroups(self) -> None:
        """Renumber subgroups by increasing mean log-HR (so labels are comparable between fits)."""
        if not self.cfg.subgroups:
            return
        with torch.no_grad():
            order = torch.argsort(self.net.effects.mean(1))
            self.net.effects.copy_(self.net.effects[order])
            out = self.net.assign.out
            out.weight.copy_(out.weight[order])
            out.bias.copy_(out.bias[order])

    def _numpy(self, fn, X) -> np.ndarray:
        with torch.no_grad():
            return fn(torch.as_tensor(self._standardise(X), dtype=torch.float32)).double().numpy()

    @property
    def midpoints(self) -> np.ndarray:
        """(J,) centre of each interval."""
        return interval_midpoints(self.cuts_)

    def log_hazard_ratio(self, X, times=None) -> np.ndarray:
        """Log-HR :math:`\\log h(t|x,1) - \\log h(t|x,0)`: (n, J) per interval, or (n, T) at ``times``."""
        per_interval = self._numpy(self.net.log_hr, X)
        if times is None:
            return per_interval
        return per_interval[:, interval_index(times, self.cuts_)]

    def log_hazard(self, X, treatment) -> np.ndarray:
        """(n, J) :math:`\\eta_j(x, a)` with ``treatment`` a 0/1 scalar or (n,) array."""
        a = np.broadcast_to(np.asarray(treatment, np.float64), (np.asarray(X).shape[0],)).copy()
        return self._numpy(lambda x: self.net(x, torch.as_tensor(a, dtype=torch.float32)), X)

    def survival(self, X, treatment, times) -> np.ndarray:
        """(n, T) survival at ``times`` under ``treatment`` (0, 1 or the observed (n,) arms)."""
        return pc_survival(self.log_hazard(X, treatment), self.cuts_, times)

    def risk(self, X, treatment) -> np.ndarray:
        """(n,) cumulative hazard at the last cut under ``treatment``: higher = earlier event."""
        return -np.log(np.clip(self.survival(X, treatment, self.cuts_[-1:])[:, 0], 1e-300, None))

    def subgroup_probabilities(self, X) -> Optional[np.ndarray]:
        """(n, K) soft subgroup assignment (None without subgroups)."""
        return self._numpy(self.net.assignment, X) if self.cfg.subgroups else None

    def save(self, directory) -> None:
        """``model.safetensors`` (the networks) + ``model.json`` (config, cuts, standardisation)."""
        from safetensors.torch import save_file

        from ctvl.utils.atomic import atomic_open, atomic_path

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(tmp))
        meta = {"format": "ctvl.TreatmentEffectModel", "version": 1, "config": to_dict(self.cfg),
                "cuts": self.cuts_.tolist(), "mean": self.mean_.tolist(), "scale": self.scale_.tolist(),
                "event_share": self.event_share_.tolist()}
        with atomic_open(directory / "model.json", "w") as fh:
            json.dump(meta, fh, indent=1)

    @classmethod
    def load(cls, directory) -> TreatmentEffectModel:
        """The model :meth:`save` wrote (safetensors: no pickle)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / "model.json").read_text())
        if meta.get("format") != "ctvl.TreatmentEffectModel" or meta.get("version") != 1:
            raise ValueError(f"{directory}: not a ctvl.TreatmentEffectModel version 1")
        model = cls(from_dict(TreatmentConfig, meta["config"]))
        model.cuts_, model.mean_, model.scale_, model.event_share_ = (
            np.asarray(meta[k], np.float64) for k in ("cuts", "mean", "scale", "event_share"))
        model.net = model._build(model.mean_.size, model.cuts_.size - 1)
        model.net.load_state_dict(load_file(str(directory / "model.safetensors")))
        model.net.eval()
        return model


def _validation_rows(a: np.ndarray, fraction: float, seed: int, row_ids=None) -> np.ndarray:
    """Row indices held out for early stopping: ``fraction`` of each arm's patients (at least one per arm),
    every row of a held-out patient (``row_ids``; default each row is its own patient)."""
    ids = np.arange(a.size) if row_ids is None else np.asarray(row_ids)
    rng = np.random.default_rng(seed + 7919)
    held = []
    for arm in (0, 1):
        patients = np.unique(ids[a == arm])
        held.append(rng.permutation(patients)[:max(1, int(round(fraction * patients.size)))])
    return np.flatnonzero(np.isin(ids, np.concatenate(held)))


def average_log_hr(log_hr: np.ndarray, interval_weight: np.ndarray) -> float:
    """:math:`\\frac{1}{n}\\sum_i \\sum_j w_j\\,\\text{logHR}_{ij}` with :math:`w` the share of training
    events per interval: one number comparable to a Cox model's log-HR. ``log_hr`` (n, J), weights (J,)."""
    return float(np.mean(np.asarray(log_hr) @ np.asarray(interval_weight)))


@dataclass
class TreatmentEstimate:
    """A fitted model with the weights it was fitted with."""

    model: TreatmentEffectModel
    propensity: Optional[np.ndarray]
    """(n,) cross-fitted propensity of the fitted rows (None without IPW)."""
    weight: np.ndarray
    """(n,) sample weights used (ones without IPW)."""

    @property
    def effective_sample_size(self) -> float:
        return effective_sample_size(self.weight)


def fit_propensity(X, treatment, cfg: TreatmentConfig) -> np.ndarray:
    """(n,) cross-fitted propensity on the standardised covariates, as ``cfg`` sets it."""
    X = np.asarray(X, np.float64)
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    return cross_fit_propensity(X, treatment, model=cfg.propensity_model, folds=cfg.propensity_folds, seed=cfg.seed)


def estimate_treatment_effect(X, treatment, time, event, cfg: TreatmentConfig, seed: Optional[int] = None,
                              row_ids=None) -> TreatmentEstimate:
    """Cross-fitted propensity and IPW weights (when ``cfg.ipw``), then the treatment model on them
    (``row_ids``: see :meth:`TreatmentEffectModel.fit`)."""
    cfg = cfg if seed is None else replace(cfg, seed=seed)
    a = check_treatment(treatment)
    propensity, weight = None, np.ones(a.size)
    if cfg.ipw:
        propensity = fit_propensity(X, a, cfg)
        weight = ipw_weights(a, propensity, clip_quantile=cfg.clip_quantile)  # 1.0 caps at the largest: none
    model = TreatmentEffectModel(cfg).fit(X, a, time, event, weight, row_ids)
    return TreatmentEstimate(model, propensity, weight)


def marginal_log_hr(model: TreatmentEffectModel, X, times) -> np.ndarray:
    """(T,) :math:`\\frac{1}{n}\\sum_i \\text{logHR}(t, x_i)` at ``times``: the population's log-HR curve."""
    return model.log_hazard_ratio(X, times).mean(0)


def bootstrap_marginal_log_hr(X, treatment, time, event, cfg: TreatmentConfig, times, n_boot: int,
                              seed: int = 0) -> np.ndarray:
    """(B, T) marginal log-HR curves at ``times`` over the rows of ``X`` from ``n_boot`` refits (propensity,
    weights and model) on row resamples with replacement, stratified on the arm (each keeps both arms).

    Percentiles 2.5/97.5 of each column give a 95 % band; the curves at the interval midpoints dotted with
    the training event shares give bootstrap draws of :func:`average_log_hr`.
    """
    X = np.asarray(X, np.float64)
    a = check_treatment(treatment)
    time, event = np.asarray(time, np.float64), np.asarray(event, bool)
    rng = np.random.default_rng(seed + 104729)
    arms = [np.flatnonzero(a == arm) for arm in (0, 1)]
    curves = np.empty((n_boot, np.asarray(times).size))
    for b in range(n_boot):
        rows = np.concatenate([rng.choice(idx, idx.size, replace=True) for idx in arms])
        fit = estimate_treatment_effect(X[rows], a[rows], time[rows], event[rows], cfg, seed=cfg.seed + 1 + b,
                                        row_ids=rows)
        curves[b] = marginal_log_hr(fit.model, X, times)
    return curves
