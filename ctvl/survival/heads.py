r"""Survival heads of the ctvl survival branch and the conversions from their outputs to survival curves.

Entry points:

- :class:`ResidualAdapter` -- bottleneck MLP on the pooled decoder state, identity at initialisation.
- :class:`CoxHead` -- DeepSurv head, latent (B, D) -> log-hazard (B,).
- :class:`DeepHitHead` -- DeepHit head, latent (B, D) -> logits (B, K) over the bins of
  :class:`ctvl.survival.discretize.TimeDiscretizer`.
- :func:`build_survival_head` -- the head named by a :class:`ctvl.config.SurvivalConfig`.
- :func:`pmf_from_logits`, :func:`survival_from_logits` -- DeepHit logits -> probability mass / survival.
- :class:`BreslowEstimator` -- baseline hazard of a Cox model, survival curves from log-hazards
  (equal to scikit-survival's ``BreslowEstimator``).
- :func:`survival_frame` -- survival matrix -> ``pandas.DataFrame`` (rows = times, columns = patients,
  as pycox and lifelines lay them out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from ctvl.survival.losses import _with_beyond_column

if TYPE_CHECKING:
    import pandas as pd

    from ctvl.config import SurvivalConfig

__all__ = [
    "ResidualAdapter",
    "CoxHead",
    "DeepHitHead",
    "build_survival_head",
    "pmf_from_logits",
    "survival_from_logits",
    "BreslowEstimator",
    "survival_frame",
]


class ResidualAdapter(nn.Module):
    r"""Residual bottleneck adapter.

    .. math::

        y = x + W_{\text{up}}\, \mathrm{drop}(\mathrm{GELU}(W_{\text{down}}\, \mathrm{LN}(x)))

    The up projection starts at zero, so the adapter is the identity at initialisation and fine-tuning
    starts from the pooled decoder state itself (Houlsby et al. 2019, "Parameter-efficient transfer
    learning for NLP", ICML; the residual adaptor [12] of the ctvl paper). The LayerNorm inside the
    branch keeps the bottleneck input at unit scale whatever the magnitude of the decoder state.

    Args:
        dim: feature width D (input = output).
        hidden: bottleneck width.
        dropout: dropout probability inside the branch.

    Shape: (..., D) -> (..., D).
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        if dim < 1 or hidden < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"need dim, hidden >= 1 and dropout in [0, 1), got {dim}, {hidden}, {dropout}")
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.drop(self.act(self.down(self.norm(x)))))


def mlp_stack(dim: int, hidden: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    """Linear -> ReLU -> Dropout per hidden width; returns the stack and its output width."""
    layers: list[nn.Module] = []
    width = dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
        width = h
    return nn.Sequential(*layers), width


class CoxHead(nn.Module):
    """DeepSurv head: an MLP ending in a bias-free linear layer giving the log relative hazard.

    The partial likelihood is invariant to a constant shift of ``log_hz``, so a final bias would be
    unidentified; it is left out (Katzman et al. 2018).

    Args:
        dim: input width D.
        hidden: hidden widths; ``()`` = a single linear layer.
        dropout: dropout after each hidden layer.

    Shape: (B, D) -> (B,).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.body, width = mlp_stack(dim, hidden, dropout)
        self.out = nn.Linear(width, 1, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z)).squeeze(-1)  # (B, D) -> (B,)


class DeepHitHead(nn.Module):
    """DeepHit head: an MLP giving one logit per time bin (the mass beyond the last cut has logit 0).

    Args:
        dim: input width D.
        num_bins: number of bins K (``TimeDiscretizer.cuts`` length).
        hidden: hidden widths; ``()`` = a single linear layer.
        dropout: dropout after each hidden layer.

    Shape: (B, D) -> (B, K).
    """

    def __init__(self, dim: int, num_bins: int, hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"`num_bins` must be >= 2, got {num_bins}")
        self.body, width = mlp_stack(dim, hidden, dropout)
        self.out = nn.Linear(width, num_bins)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(z))  # (B, D) -> (B, K)


def build_survival_head(cfg: SurvivalConfig, dim: int) -> nn.Module:
    """The head named by ``cfg.head``: :class:`CoxHead` (``"cox"``) or :class:`DeepHitHead` (``"discrete"``).

    Hidden widths come from ``cfg.head_hidden``; their dropout is ``cfg.adapter_dropout`` (one dropout
    setting for the whole survival branch).
    """
    if cfg.head == "cox":
        return CoxHead(dim, cfg.head_hidden, cfg.adapter_dropout)
    if cfg.head == "discrete":
        return DeepHitHead(dim, cfg.num_bins, cfg.head_hidden, cfg.adapter_dropout)
    raise ValueError(f"`survival.head` must be 'cox' or 'discrete', got {cfg.head!r}")


def pmf_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Probability mass in each of the K bins, shape (B, K) from logits (B, K).

    ``softmax([logits, 0])`` without its last entry (the mass beyond the last cut), as pycox's
    ``DeepHitSingle.predict_pmf``; rows sum to less than 1.
    """
    return torch.softmax(_with_beyond_column(logits), dim=1)[:, :-1]


def survival_from_logits(logits: torch.Tensor) -> torch.Tensor:
    r"""Survival :math:`S(t_k) = 1 - \sum_{l \le k} p_l = \sum_{l > k} p_l` at each cut, shape (B, K).

    Summed from the tail (no cancellation for small survival); equals pycox's ``predict_surv``.
    """
    pmf = torch.softmax(_with_beyond_column(logits), dim=1)
    return pmf.flip(1).cumsum(1).flip(1)[:, 1:]


def _as_float64(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"`{name}` must have shape (N,), got {x.shape}")
    return x


class BreslowEstimator:
    r"""Breslow estimator of the cumulative baseline hazard of a Cox model.

    .. math::

        \hat H_0(t) = \sum_{t_k \le t} \frac{d_k}{\sum_{j: T_j \ge t_k} e^{h_j}}, \qquad
        \hat S(t \mid h) = \exp\big(-\hat H_0(t)\, e^{h}\big)

    with :math:`d_k` the events at the unique time :math:`t_k` (Breslow 1972, discussion of Cox's paper,
    JRSS-B 34:216). Equal to scikit-survival's ``BreslowEstimator`` and so to
    ``CoxPHSurvivalAnalysis.predict_survival_function``, except where scikit-survival is wrong or strict:
    before the first observed time ctvl returns :math:`H_0 = 0` (scikit-survival returns the value at the
    first time) and after the last one it holds the last value (scikit-survival raises). The sums run in
    log space (float64 ``logaddexp`` from the largest time down), so log-hazards of any size neither
    overflow nor lose the late risk sets.

    Attributes:
        unique_times_ (np.ndarray): shape (T,), the sorted unique training times.
        cum_baseline_hazard_ (np.ndarray): :math:`\hat H_0` at ``unique_times_``, shape (T,).
        baseline_survival_ (np.ndarray): :math:`\exp(-\hat H_0)` at ``unique_times_``, shape (T,).
    """

    def fit(self, log_hz, event, time) -> BreslowEstimator:
        """Fit on training log-hazards (N,), events (bool or 0/1, (N,)) and times (N,); arrays or tensors."""
        log_hz, event = _as_float64(log_hz, "log_hz"), _as_float64(event, "event")
        time = _as_float64(time, "time")
        if not log_hz.shape == event.shape == time.shape or log_hz.size == 0:
            raise ValueError(f"`log_hz`, `event`, `time` must be non-empty and equally long, got "
                             f"{log_hz.shape}, {event.shape}, {time.shape}")
        order = np.argsort(time, kind="stable")
        self.unique_times_, starts, counts = np.unique(time[order], return_index=True, return_counts=True)
        log_risk = np.logaddexp.reduceat(log_hz[order], starts)  # log sum exp(h) per unique time
        log_at_risk = np.logaddexp.accumulate(log_risk[::-1])[::-1]  # over T_j >= t_k
        deaths = np.add.reduceat((event[order] != 0).astype(np.float64), starts)
        with np.errstate(divide="ignore"):
            log_increment = np.log(deaths) - log_at_risk  # -inf where no event
        self._log_cum_hazard = np.logaddexp.accumulate(log_increment)  # log H_0(t_k)
        return self

    @property
    def cum_baseline_hazard_(self) -> np.ndarray:
        return np.exp(self._log_cum_hazard)

    @property
    def baseline_survival_(self) -> np.ndarray:
        return np.exp(-self.cum_baseline_hazard_)

    def predict_cumulative_hazard(self, log_hz, times) -> np.ndarray:
        """Cumulative hazard :math:`H_0(t) e^{h}` for log-hazards (n,) at times (T,): shape (n, T)."""
        if not hasattr(self, "_log_cum_hazard"):
            raise ValueError("BreslowEstimator.predict_* called before fit()")
        log_hz = _as_float64(log_hz, "log_hz")
        times = np.atleast_1d(np.asarray(times, dtype=np.float64))
        idx = np.searchsorted(self.unique_times_, times, side="right") - 1  # last unique time <= t
        log_base = np.where(idx >= 0, self._log_cum_hazard[np.maximum(idx, 0)], -np.inf)  # (T,)
        with np.errstate(over="ignore"):  # +inf hazard is the right limit (survival 0)
            return np.exp(log_base[None, :] + log_hz[:, None])

    def predict_survival(self, log_hz, times) -> np.ndarray:
        """Survival :math:`\\exp(-H_0(t) e^{h})` for log-hazards (n,) at times (T,): shape (n, T)."""
        return np.exp(-self.predict_cumulative_hazard(log_hz, times))


def survival_frame(surv, times) -> pd.DataFrame:
    """Survival matrix (n, T) -> DataFrame, one row per time (index ``"time"``) and one column per patient.

    The layout of pycox's ``predict_surv_df`` and lifelines' ``predict_survival_function``.

    Example:
        >>> survival_frame(np.array([[1.0, 0.5], [0.9, 0.8]]), [1.0, 2.0]).shape
        (2, 2)
    """
    import pandas as pd  # pandas only where a frame is asked for

    if isinstance(surv, torch.Tensor):
        surv = surv.detach().cpu().numpy()
    surv, times = np.asarray(surv), np.asarray(times)
    if surv.ndim != 2 or times.ndim != 1 or surv.shape[1] != times.size:
        raise ValueError(f"`surv` must be (n, T) with T = len(times), got {surv.shape} and {times.shape}")
    return pd.DataFrame(surv.T, index=pd.Index(times, name="time"))
