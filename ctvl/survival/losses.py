r"""Survival losses of the ctvl survival branch: pure functions of tensors.

Entry points:

- :func:`neg_partial_log_likelihood` -- Cox / DeepSurv loss (Breslow or Efron ties), O(n log n).
- :func:`deephit_loss` -- single-risk DeepHit likelihood over K time bins, plus the optional ranking term.
- :func:`dispersion_loss` / :func:`dispersion_loss_discrete` -- spread the latents of uncensored patients
  by survival time (continuous) or by time bin (discrete).
- :func:`alignment_loss` -- ties the survival latent to the pooled decoder state.

Argument names follow torchsurv (``log_hz, event, time``). Every loss is finite with a defined (zero)
gradient on batches that carry no information (no events, fewer than two uncensored patients), because
small CT batches often hold no event at all.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "neg_partial_log_likelihood",
    "deephit_loss",
    "dispersion_loss",
    "dispersion_loss_discrete",
    "alignment_loss",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
# Cox loss: largest max(h) - min(h) for which the risk sets are summed as exp(h - max h) in float64. Every
# term is then >= e^-600, a normal float64 (no precision lost to underflow), and the sums of inverse risk
# sets in the gradient stay below N e^600 (no overflow). Wider spreads take the log-space path.
_MAX_SHIFTED_SPREAD = 600.0
_TORCH_CUMSUM_FROM = 4096  # array length from which torch's cumsum beats NumPy's (~4x at 1e5)


def _as_1d(x, name: str, n: int | None = None, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Tensor of shape (N,) from (N,) or (N, 1) input; raise ``ValueError`` naming ``name`` otherwise."""
    x = torch.as_tensor(x, device=None if like is None else like.device)
    if x.dim() == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 1:
        raise ValueError(f"`{name}` must have shape (N,) or (N, 1), got {tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"`{name}` has {x.shape[0]} entries, expected {n} (the length of the first input)")
    return x


def _as_event(event, n: int, like: torch.Tensor) -> torch.Tensor:
    event = _as_1d(event, "event", n, like=like)
    return event if event.dtype == torch.bool else event != 0


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")


def _zero_like_graph(x: torch.Tensor) -> torch.Tensor:
    """A scalar 0 that stays connected to ``x`` so ``backward()`` gives a zero (not missing) gradient."""
    return (x * 0).sum()


def neg_partial_log_likelihood(
    log_hz: torch.Tensor,
    event: torch.Tensor,
    time: torch.Tensor,
    ties: str = "efron",
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Negative Cox partial log-likelihood (DeepSurv loss) with Breslow or Efron ties.

    With log-hazards :math:`h_i`, the distinct event times :math:`t_g`, the events :math:`D_g` at
    :math:`t_g` (:math:`d_g = |D_g|`) and the risk set :math:`R_g = \{j : T_j \ge t_g\}`:

    .. math::

        \mathcal{L}_{\text{Breslow}} = -\frac{1}{N_E} \sum_g \Big[ \sum_{i \in D_g} h_i
            - d_g \log \sum_{j \in R_g} e^{h_j} \Big]

        \mathcal{L}_{\text{Efron}} = -\frac{1}{N_E} \sum_g \Big[ \sum_{i \in D_g} h_i
            - \sum_{l=0}^{d_g-1} \log \Big( \sum_{j \in R_g} e^{h_j}
            - \frac{l}{d_g} \sum_{i \in D_g} e^{h_i} \Big) \Big]

    :math:`N_E` is the number of events (``reduction="mean"``; with ties too, unlike torchsurv which
    then divides by the number of distinct event times) or 1 (``"sum"``). Without ties both equal the
    DeepSurv loss :math:`-\frac{1}{N_E}\sum_{i:\delta_i=1} (h_i - \log\sum_{j:T_j \ge T_i} e^{h_j})`.
    A censoring tied with an event time is in that event's risk set.

    Computation: one sort by time, then, in float64, the risk sets as prefix sums of
    :math:`e^{h - \max h}` and the gradient in closed form together with the loss (backward only
    scales it). Only sums of positive terms are formed and each Efron term
    :math:`S_g - \tfrac{l}{d_g} E_g \ge S_g / d_g`, so the result is exact to float64 rounding; no
    ``eps`` enters the logarithms (pycox's ``eps=1e-7`` biases its loss). This runs in NumPy on the host
    (a GPU batch is copied there and its gradient back): at batch sizes a Cox loss costs its count of
    array operations, which NumPy dispatches faster than torch. Log-hazards that spread over more than
    600 (where :math:`e^{h - \max h}` would underflow) or are not finite, ``torch.func`` transforms and
    second derivatives use the same loss in float64 torch ops (``logcumsumexp``, Efron's terms as
    :math:`\log S_g + \operatorname{log1p}(-\tfrac{l}{d_g} E_g / S_g)`).
    O(n log n) time, O(n) memory, no n x n matrix; finite losses and gradients for log-hazards of any
    magnitude. The result has the dtype of ``log_hz`` (float16/bfloat16 are promoted to float32). No
    events gives 0 with a zero gradient.

    References: Cox (1972) JRSS-B 34:187; Breslow (1974) Biometrics 30:89; Efron (1977) JASA 72:557;
    Katzman et al. (2018) "DeepSurv", BMC Med Res Methodol 18:24.

    Args:
        log_hz (torch.Tensor, float): log relative hazards, shape (N,) or (N, 1).
        event (torch.Tensor, bool): event indicator (True = event, False = censored), shape (N,).
            0/1 numbers are accepted.
        time (torch.Tensor, float): event or censoring times, shape (N,).
        ties: ``"efron"`` or ``"breslow"``.
        reduction: ``"mean"`` (divide by the number of events) or ``"sum"``.

    Returns:
        torch.Tensor: scalar loss, dtype of ``log_hz`` (float32 for half-precision input).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> log_hz = torch.randn(6, dtype=torch.float64)
        >>> event = torch.tensor([True, False, True, True, False, True])
        >>> time = torch.tensor([2.0, 3.0, 2.0, 5.0, 1.0, 4.0], dtype=torch.float64)
        >>> round(neg_partial_log_likelihood(log_hz, event, time).item(), 6)
        1.598726
        >>> round(neg_partial_log_likelihood(log_hz, event, time, ties="breslow").item(), 6)
        1.694082
        >>> neg_partial_log_likelihood(log_hz, torch.zeros(6, dtype=torch.bool), time).item()
        0.0
    """
    _check_choice("ties", ties, ("efron", "breslow"))
    _check_choice("reduction", reduction, ("mean", "sum"))
    log_hz = _as_1d(log_hz, "log_hz")
    n = log_hz.shape[0]
    event = _as_event(event, n, log_hz)
    time = _as_1d(time, "time", n, like=log_hz)
    h = log_hz.float() if log_hz.dtype in _LOW_PRECISION else log_hz
    # torch.func needs torch ops at every step; on a GPU the torch path avoids a host round trip.
    if torch._C._are_functorch_transforms_active() or h.device.type != "cpu":
        loss = _cox_log_space(h, event, time, torch.argsort(time, descending=True), ties, 1.0)
        return loss / event.sum().clamp(min=1).to(loss.dtype) if reduction == "mean" else loss
    is_event = _host(event)
    n_events = int(np.count_nonzero(is_event))
    if n_events == 0:
        return h[:0].sum()  # +0.0 with a zero gradient, whatever the values of h
    scale = 1.0 / n_events if reduction == "mean" else 1.0
    time_np = _host(time)
    order = time_np.argsort()[::-1]  # descending time; ties in any order (the loss is symmetric there)

    def log_space(h: torch.Tensor) -> torch.Tensor:  # the same loss in torch ops
        return _cox_log_space(h, event, time, torch.from_numpy(order.copy()).to(h.device), ties, scale)

    x = _host(h)[order].astype(np.float64, copy=False)  # a fresh array: the gather copies
    hi = x.max()
    if not hi - x.min() <= _MAX_SHIFTED_SPREAD:  # NaN and inf also take the log-space path
        return log_space(h)
    need_grad = h.requires_grad and torch.is_grad_enabled()
    x -= hi
    value, grad = _cox_shifted(x, is_event[order], time_np[order], scale, ties == "efron", need_grad)
    if not need_grad:
        return torch.tensor(value, dtype=h.dtype, device=h.device)
    grad_in = np.empty(n, dtype=np.float64 if h.dtype == torch.float64 else np.float32)
    grad_in[order] = grad
    return _CoxWithGradient.apply(h, value, torch.from_numpy(grad_in).to(h.device), log_space)


def _host(x: torch.Tensor) -> np.ndarray:
    """A NumPy view (a copy for a GPU tensor) of a 1-D tensor; half precision becomes float32."""
    x = x.detach().cpu()
    return (x.float() if x.dtype in _LOW_PRECISION else x).numpy()


def _cox_shifted(
    x: np.ndarray, is_event: np.ndarray, time: np.ndarray, scale: float, efron: bool, need_grad: bool
) -> tuple[float, np.ndarray | None]:
    r"""``scale`` times the summed Cox loss, and its gradient, from :math:`x = h - \max h` sorted by
    descending time (float64).

    With :math:`w_j = e^{x_j} \in [e^{-600}, 1]`, each event i of tie group g contributes
    :math:`\log c_i - x_i`, where :math:`c_i = S_g - f_i E_g`, :math:`S_g` is the prefix sum of w over
    the risk set, :math:`E_g` the sum over the group's :math:`d_g` events and :math:`f_i = l_i / d_g`
    (:math:`l_i = 0, \dots, d_g - 1`) for Efron, 0 for Breslow. All sums add positive terms; the one
    subtraction, :math:`c_i \ge S_g / d_g`, loses at most :math:`\log_{10} d_g` digits. The gradient is

    .. math::

        \frac{\partial \mathcal{L}}{\partial h_j} = w_j \Big(\sum_{g:\, t_g \le t_j} A_g
            - \delta_j B_{g(j)}\Big) - \delta_j, \qquad
        A_g = \sum_{i \in D_g} \frac{1}{c_i}, \quad B_g = \sum_{i \in D_g} \frac{f_i}{c_i}

    (a suffix sum over the groups). NumPy on the host: at batch sizes the cost of a Cox loss is the
    number of array operations, which are cheaper there than as torch kernels.
    """
    w = np.exp(x)
    risk = _cumsum(w)  # the risk set of each sorted sample, ignoring ties
    ev = is_event * scale  # event weights
    groups = _tie_groups(time, is_event)
    if groups is None:  # distinct times: groups of one sample, Efron = Breslow
        counts, d = None, ev
    else:
        last, counts, _, n_events = groups
        risk = risk[last]  # S_g
        if efron and n_events.max() >= 2:
            return _efron_shifted(x, w, is_event, ev, scale, risk, groups, need_grad)
        d = n_events * scale
    loss = float((d * np.log(risk)).sum() - (ev * x).sum())
    if not need_grad:
        return loss, None
    tail = (d / risk)[::-1].cumsum()[::-1]  # A_g = d_g / S_g summed over the groups at or after
    return loss, w * (tail if counts is None else tail.repeat(counts)) - ev


def _tie_groups(time: np.ndarray, is_event: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Tie groups of the sorted times: (last position, size, events up to and in each group), each (G,).

    None when all times differ.
    """
    is_last = np.empty(time.size, dtype=bool)  # last sample of its tie group
    np.not_equal(time[1:], time[:-1], out=is_last[:-1])
    is_last[-1] = True
    if is_last.all():
        return None
    last = is_last.nonzero()[0]
    counts, events_to = last.copy(), _cumsum(is_event)[last].astype(np.intp)
    counts[1:] -= last[:-1]
    counts[0] += 1
    n_events = events_to.copy()  # d_g, exact integers
    n_events[1:] -= events_to[:-1]
    return last, counts, events_to, n_events


def _efron_shifted(
    x: np.ndarray, w: np.ndarray, is_event: np.ndarray, ev: np.ndarray, scale: float, risk: np.ndarray,
    groups: tuple, need_grad: bool,
) -> tuple[float, np.ndarray | None]:
    """Efron's case of :func:`_cox_shifted`, with ``risk`` :math:`S_g` and ``groups`` per tie group."""
    _, counts, events_to, n_events = groups
    group = np.arange(risk.size).repeat(n_events)  # (N_E,) group of each event, in sorted order
    frac = (np.arange(group.size) - (events_to - n_events)[group]) / n_events[group]  # l_i / d_g
    tie_sum = np.bincount(group, w[is_event.nonzero()[0]], risk.size)  # E_g
    den = risk[group] - frac * tie_sum[group]  # c_i
    loss = scale * float(np.log(den).sum()) - float((ev * x).sum())
    if not need_grad:
        return loss, None
    inv = scale / den
    tail = np.bincount(group, inv, risk.size)[::-1].cumsum()[::-1]  # A_g summed over groups at or after
    tie_term = np.bincount(group, frac * inv, risk.size)  # B_g
    return loss, w * (tail.repeat(counts) - is_event * tie_term.repeat(counts)) - ev


def _cumsum(a: np.ndarray) -> np.ndarray:
    """``np.cumsum`` (float64 for long arrays, where it runs through torch's faster kernel)."""
    if a.size < _TORCH_CUMSUM_FROM:
        return a.cumsum()
    return torch.from_numpy(a.astype(np.float64, copy=False)).cumsum(0).numpy()


class _CoxWithGradient(torch.autograd.Function):
    """A loss value whose gradient with respect to ``h`` came with it (from :func:`_cox_shifted`).

    For second derivatives (``backward(create_graph=True)``) the gradient is recomputed by autograd
    through ``log_space(h)``, the same loss in torch ops (:func:`_cox_log_space`).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, value: float, grad: torch.Tensor, log_space: Callable) -> torch.Tensor:
        ctx.save_for_backward(h, grad)
        ctx.log_space = log_space
        return torch.tensor(value, dtype=h.dtype, device=h.device)

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        h, grad = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradient must itself be differentiable
            with torch.enable_grad():
                grad = torch.autograd.grad(ctx.log_space(h), h, create_graph=True)[0]
        return grad * grad_loss, None, None, None


def _cox_log_space(
    h: torch.Tensor, event: torch.Tensor, time: torch.Tensor, order: torch.Tensor, ties: str, scale: float
) -> torch.Tensor:
    r"""``scale`` times the summed Cox loss in torch ops (``logcumsumexp``); ``order``: descending time.

    Computed in float64: in float32, :math:`h - \log S` keeps only ~3 digits at log-hazards near 4e4.
    """
    dtype = h.dtype
    h, event, time = h[order].double(), event[order], time[order]
    _, group, counts = torch.unique_consecutive(time, return_inverse=True, return_counts=True)
    group_end = counts.cumsum(0) - 1
    log_risk = torch.logcumsumexp(h, dim=0)[group_end]  # (G,) log sum_{j in R_g} exp(h_j)
    terms = h - log_risk[group]
    if ties == "efron":
        terms = terms - _efron_log1p(h, event, group, group_end, log_risk)
    return (torch.where(event, -terms, torch.zeros_like(terms)).sum() * scale).to(dtype)


def _efron_log1p(
    h: torch.Tensor, event: torch.Tensor, group: torch.Tensor, group_end: torch.Tensor, log_risk: torch.Tensor
) -> torch.Tensor:
    r"""Per-sample Efron term :math:`\operatorname{log1p}(-\tfrac{l_i}{d_g} E_g / R_g)` (sorted inputs)."""
    n_groups = group_end.shape[0]
    # Shift each tie group by its own max (detached: the value does not depend on the shift).
    g_max = h.new_zeros(n_groups).scatter_reduce(0, group, h.detach(), "amax", include_self=False)
    exp_events = torch.where(event, torch.exp(h - g_max[group]), torch.zeros_like(h))
    tie_sum = h.new_zeros(n_groups).index_add(0, group, exp_events)  # E_g * exp(-g_max)
    ratio = (tie_sum * torch.exp(g_max - log_risk)).clamp(max=1.0)  # E_g / R_g in [0, 1]
    cum_events = event.cumsum(0)
    d_g = torch.zeros_like(group_end).index_add(0, group, event.long())
    before = (cum_events[group_end] - d_g)[group]
    rank_in_group = (cum_events - 1 - before).clamp(min=0).to(h.dtype)  # l_i = 0, ..., d_g - 1
    frac = rank_in_group / d_g[group].clamp(min=1).to(h.dtype)
    return torch.log1p(-frac * ratio[group])


def deephit_loss(
    logits: torch.Tensor,
    bin_index: torch.Tensor,
    event: torch.Tensor,
    rank_weight: float = 0.0,
    sigma: float = 0.1,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Single-risk DeepHit loss: discrete-time likelihood plus the optional ranking term.

    The K logits give K+1 probabilities :math:`p = \operatorname{softmax}([\phi_0, \dots, \phi_{K-1}, 0])`:
    mass in the K bins and, with a logit fixed at 0, the mass "beyond the last cut" (pycox's ``pad_col``
    convention, so a patient censored in the last bin keeps a finite likelihood). With :math:`k(i)` the
    bin of patient i and :math:`F_i(k) = \sum_{l \le k} p_{il}`:

    .. math::

        \mathcal{L}_{\text{nll}} = -\frac{1}{N} \sum_i \Big[ \delta_i \log p_{i,k(i)}
            + (1 - \delta_i) \log \sum_{l > k(i)} p_{il} \Big]

        \mathcal{L}_{\text{rank}} = \frac{1}{N^2} \sum_{i,j} A_{ij}
            \exp\Big(-\frac{F_i(k(i)) - F_j(k(i))}{\sigma}\Big), \quad
            A_{ij} = \delta_i \,\mathbb{1}\{k(i) < k(j) \lor (k(i) = k(j) \land \delta_j = 0)\}

        \mathcal{L} = \mathcal{L}_{\text{nll}} + \alpha\, \mathcal{L}_{\text{rank}}

    with :math:`\alpha` = ``rank_weight`` as in the DeepHit paper. pycox's ``DeepHitSingleLoss(alpha_p)``
    returns :math:`\alpha_p \mathcal{L}_{\text{nll}} + (1-\alpha_p) \mathcal{L}_{\text{rank}}`, i.e.
    :math:`\alpha_p` times this loss with ``rank_weight`` :math:`= (1-\alpha_p)/\alpha_p`. The likelihood
    uses ``log_softmax``/``logsumexp`` (no ``eps``; pycox's ``nll_pmf`` adds 1e-7 inside its logs). The
    ranking term builds an N x N matrix (a batch); it is skipped when ``rank_weight == 0``.

    Reference: Lee et al. (2018) "DeepHit: a deep learning approach to survival analysis with competing
    risks", AAAI; Kvamme & Borgan (2019) arXiv:1910.06724 (the PMF parametrisation).

    Args:
        logits (torch.Tensor, float): shape (N, K), one logit per time bin.
        bin_index (torch.Tensor, long): shape (N,), bin of each time in ``[0, K-1]``
            (see :class:`ctvl.survival.discretize.TimeDiscretizer`).
        event (torch.Tensor, bool): shape (N,), True = event in that bin, False = censored there.
        rank_weight: weight :math:`\alpha \ge 0` of the ranking term.
        sigma: scale :math:`\sigma > 0` of the ranking term.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample losses, shape (N,)).

    Returns:
        torch.Tensor: scalar loss (or (N,) for ``"none"``).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> logits = torch.randn(4, 3, dtype=torch.float64)
        >>> bin_index = torch.tensor([0, 2, 1, 2])
        >>> event = torch.tensor([True, False, True, True])
        >>> round(deephit_loss(logits, bin_index, event).item(), 6)
        0.855062
        >>> round(deephit_loss(logits, bin_index, event, rank_weight=0.5).item(), 6)
        0.903218
    """
    _check_choice("reduction", reduction, ("mean", "sum", "none"))
    if logits.dim() != 2:
        raise ValueError(f"`logits` must have shape (N, K), got {tuple(logits.shape)}")
    n, k = logits.shape
    bin_index = _as_1d(bin_index, "bin_index", n, like=logits).long()
    event = _as_event(event, n, logits)
    if n and (bin_index.min() < 0 or bin_index.max() >= k):
        raise ValueError(f"`bin_index` must lie in [0, {k - 1}] for {k} logits")
    if rank_weight < 0 or sigma <= 0:
        raise ValueError(f"need `rank_weight` >= 0 and `sigma` > 0, got {rank_weight} and {sigma}")
    log_pmf = F.log_softmax(_with_beyond_column(logits), dim=1)  # (N, K+1)
    log_tail = torch.logcumsumexp(log_pmf.flip(1), dim=1).flip(1)  # log sum_{l >= k} p_l
    idx = bin_index[:, None]
    nll = -torch.where(event, log_pmf.gather(1, idx)[:, 0], log_tail.gather(1, idx + 1)[:, 0])
    loss = nll
    if rank_weight > 0:
        loss = nll + rank_weight * _deephit_rank(log_pmf.exp(), bin_index, event, sigma)
    if reduction == "none":
        return loss
    return loss.mean() if reduction == "mean" else loss.sum()


def _with_beyond_column(logits: torch.Tensor) -> torch.Tensor:
    """Append the fixed zero logit of "beyond the last cut" (pycox ``pad_col``): (N, K) -> (N, K+1)."""
    return torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1)


def _deephit_rank(
    pmf: torch.Tensor, bin_index: torch.Tensor, event: torch.Tensor, sigma: float
) -> torch.Tensor:
    """Per-sample DeepHit ranking term (N,): mean over j of A_ij exp(-(F_i(k_i) - F_j(k_i)) / sigma)."""
    cdf = pmf.cumsum(1)  # (N, K+1)
    at_ki = cdf[:, bin_index].T  # (i, j): F_j(k(i))
    diff = at_ki.diagonal()[:, None] - at_ki  # F_i(k(i)) - F_j(k(i))
    k_i, k_j = bin_index[:, None], bin_index[None, :]
    comparable = event[:, None] & ((k_i < k_j) | ((k_i == k_j) & ~event[None, :]))
    weighted = torch.where(comparable, torch.exp(-diff / sigma), torch.zeros_like(diff))
    return weighted.mean(1)


def dispersion_loss(
    z: torch.Tensor,
    event: torch.Tensor,
    time: torch.Tensor,
    tau: float = 1.0,
    time_scale: float | None = None,
) -> torch.Tensor:
    r"""Continuous dispersion loss: uncensored patients with similar times close, distant times apart.

    The paper (eq. 3) writes :math:`\frac{1}{\sum_{i \ne j} w_{ij}} \sum_{i \ne j} w_{ij}
    \lVert z_i - z_j \rVert^2` with :math:`w_{ij} = \exp(-|t_i - t_j| / \tau)` over uncensored pairs. Alone
    it only attracts (all latents collapsing to one point minimises it), while the text asks that
    "very different times" be apart. ctvl therefore uses it as the attractive half of a contrast, on
    L2-normalised latents :math:`\hat z` (so the repulsion is bounded and norms cannot shrink to cheat):

    .. math::

        d_{ij} = \lVert \hat z_i - \hat z_j \rVert^2, \qquad
        w_{ij} = \exp\Big(-\frac{|t_i - t_j|}{\tau\, s}\Big)

        \mathcal{L}_{\text{disp}} = \frac{\sum_{i \ne j} w_{ij} d_{ij}}{\sum_{i \ne j} w_{ij}}
            - \frac{\sum_{i \ne j} (1 - w_{ij}) d_{ij}}{\sum_{i \ne j} (1 - w_{ij})}

    over uncensored i, j: the weighted mean distance of similar-time pairs minus that of dissimilar-time
    pairs, in [-4, 4]. :math:`s` makes ``tau`` unit-free: by default the mean :math:`|t_i - t_j|` of the
    uncensored pairs in the batch (pass ``time_scale=1`` for the paper's :math:`w_{ij}` in time units).
    The repulsive half is 0 when all weights are 1. O(n^2) over the batch (tens of patients).

    Reference: Liu et al. (2026) arXiv:2604.18250, eq. 3; for the repulsive half, the dispersive loss of
    Wang & He (2025), "Diffuse and Disperse: Image Generation with Representation Regularization".

    Args:
        z (torch.Tensor, float): latents, shape (N, D).
        event (torch.Tensor, bool): shape (N,); only uncensored patients take part.
        time (torch.Tensor, float): shape (N,).
        tau: time temperature, > 0.
        time_scale: unit of |t_i - t_j|; None = the batch mean over uncensored pairs.

    Returns:
        torch.Tensor: scalar; 0 with a zero gradient when fewer than 2 patients are uncensored.

    Example:
        >>> event = torch.tensor([True, True, False, True, True])
        >>> time = torch.tensor([1.0, 2.0, 3.0, 8.0, 9.0], dtype=torch.float64)
        >>> z = torch.stack([torch.cos(time / 3), torch.sin(time / 3)], dim=1)  # latents ordered by time
        >>> round(dispersion_loss(z, event, time).item(), 4)
        -1.6941
        >>> round(dispersion_loss(z[[0, 3, 2, 1, 4]], event, time).item(), 4)  # times 2 and 8 swapped
        0.8392
    """
    if tau <= 0:
        raise ValueError(f"`tau` must be > 0, got {tau}")
    z, event, time = _uncensored(z, event, time, "time")
    if z.shape[0] < 2:
        return _zero_like_graph(z)
    zn = F.normalize(z, dim=1)
    dist2 = (2.0 - 2.0 * zn @ zn.T).clamp(min=0.0)  # ||a - b||^2 of unit vectors
    gap = (time[:, None] - time[None, :]).abs().to(z.dtype)
    off_diag = ~torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    scale = gap[off_diag].mean() if time_scale is None else float(time_scale)
    w = torch.exp(-gap / (tau * scale)) if scale > 0 else torch.ones_like(gap)
    near, far = w * off_diag, (1.0 - w) * off_diag
    tiny = torch.finfo(z.dtype).tiny  # an empty weight set contributes 0, not 0/0
    attract = (near * dist2).sum() / near.sum().clamp(min=tiny)
    repel = (far * dist2).sum() / far.sum().clamp(min=tiny)
    return attract - repel


def dispersion_loss_discrete(
    z: torch.Tensor, event: torch.Tensor, bin_index: torch.Tensor, tau: float = 1.0
) -> torch.Tensor:
    r"""Discrete dispersion loss: the mean latents of different time bins maximally separated.

    With :math:`\mu_g` the L2-normalised mean latent of the uncensored patients in bin g, over the G
    bins that hold at least one (paper eq. 3, discrete case):

    .. math::

        \mathcal{L}_{\text{disp}} = \frac{1}{G} \sum_g \log \frac{1}{G-1} \sum_{h \ne g}
            \exp(\mu_g^\top \mu_h / \tau)

    Reference: Liu et al. (2026) arXiv:2604.18250, eq. 3.

    Args:
        z (torch.Tensor, float): latents, shape (N, D).
        event (torch.Tensor, bool): shape (N,); only uncensored patients take part.
        bin_index (torch.Tensor, long): time bin of each patient, shape (N,).
        tau: temperature, > 0.

    Returns:
        torch.Tensor: scalar in [-1/tau, 1/tau]; 0 with a zero gradient when fewer than 2 bins hold events.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> z = torch.randn(6, 4, dtype=torch.float64)
        >>> event = torch.tensor([True, True, False, True, True, True])
        >>> bin_index = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> round(dispersion_loss_discrete(z, event, bin_index, tau=0.5).item(), 6)
        0.456843
    """
    if tau <= 0:
        raise ValueError(f"`tau` must be > 0, got {tau}")
    z, event, bin_index = _uncensored(z, event, bin_index, "bin_index")
    bins, group = torch.unique(bin_index, return_inverse=True)
    n_groups = bins.shape[0]
    if n_groups < 2:
        return _zero_like_graph(z)
    sums = z.new_zeros(n_groups, z.shape[1]).index_add(0, group, z)
    counts = torch.bincount(group, minlength=n_groups).to(z.dtype)
    mu = F.normalize(sums / counts[:, None], dim=1)  # (G, D)
    sim = (mu @ mu.T / tau).masked_fill(torch.eye(n_groups, dtype=torch.bool, device=z.device), -math.inf)
    return (torch.logsumexp(sim, dim=1) - math.log(n_groups - 1)).mean()


def _uncensored(
    z: torch.Tensor, event, other, other_name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate (z, event, time or bin_index) and keep the uncensored rows."""
    if z.dim() != 2:
        raise ValueError(f"`z` must have shape (N, D), got {tuple(z.shape)}")
    event = _as_event(event, z.shape[0], z)
    other = _as_1d(other, other_name, z.shape[0], like=z)
    if bool(event.all()):
        return z, event, other
    return z[event], event[event], other[event]


def alignment_loss(z_surv: torch.Tensor, z_pooled: torch.Tensor) -> torch.Tensor:
    r"""Alignment loss: mean squared distance between the survival latent and the pooled decoder state.

    .. math::

        \mathcal{L}_{\text{align}} = \frac{1}{B} \sum_b
            \lVert z^{\text{surv}}_b - z^{\text{pooled}}_b \rVert_2^2

    Reference: Liu et al. (2026) arXiv:2604.18250, eq. 4.

    Args:
        z_surv (torch.Tensor, float): adapter output, shape (B, D).
        z_pooled (torch.Tensor, float): mean hidden state over all tokens, shape (B, D).

    Returns:
        torch.Tensor: scalar (0 for an empty batch).

    Example:
        >>> alignment_loss(torch.ones(2, 3), torch.zeros(2, 3)).item()
        3.0
    """
    if z_surv.shape != z_pooled.shape or z_surv.dim() != 2:
        raise ValueError(
            f"`z_surv` and `z_pooled` must both be (B, D), "
            f"got {tuple(z_surv.shape)} and {tuple(z_pooled.shape)}"
        )
    if z_surv.shape[0] == 0:
        return _zero_like_graph(z_surv) + _zero_like_graph(z_pooled)
    return (z_surv - z_pooled).pow(2).sum(dim=1).mean()
