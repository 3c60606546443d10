r"""Cox / DeepSurv loss: the negative partial log-likelihood with Breslow or Efron ties, in O(n log n).

On CPU tensors whose log-hazards spread less than ``_MAX_SHIFTED_SPREAD`` the risk sets are summed in
float64 NumPy with an exact analytic gradient (``_CoxWithGradient``); otherwise, and on GPUs, in torch
log space. Both give the same values (tested against scikit-survival, lifelines and pycox).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ctvl.survival._tensors import _LOW_PRECISION, _as_1d, _as_event, _check_choice

__all__ = ["linear_cox_derivatives", "neg_partial_log_likelihood"]

# Cox loss: largest max(h) - min(h) for which the risk sets are summed as exp(h - max h) in float64. Every
# term is then >= e^-600, a normal float64 (no precision lost to underflow), and the sums of inverse risk
# sets in the gradient stay below N e^600 (no overflow). Wider spreads take the log-space path.
_MAX_SHIFTED_SPREAD = 600.0
_TORCH_CUMSUM_FROM = 4096  # array length from which torch's cumsum beats NumPy's (~4x at 1e5)


def neg_partial_log_likelihood(
    log_hz: torch.Tensor,
    event: torch.Tensor,
    time: torch.Tensor,
    ties: str = "efron",
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Negative Cox partial log-likelihood (DeepSurv loss) with Breslow or Efron ties, optionally weighted.

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

    With per-sample weights :math:`w_i \ge 0` (``weight``, e.g. inverse propensity weights) every sample
    counts :math:`w_i` times in its event term and in every risk set, as in R's ``coxph(weights=)`` and
    lifelines' ``CoxPHFitter(weights_col=)``; with :math:`W_g = \sum_{i \in D_g} w_i`:

    .. math::

        \mathcal{L}^w_{\text{Breslow}} = -\frac{1}{N^w_E} \sum_g \Big[ \sum_{i \in D_g} w_i h_i
            - W_g \log \sum_{j \in R_g} w_j e^{h_j} \Big]

        \mathcal{L}^w_{\text{Efron}} = -\frac{1}{N^w_E} \sum_g \Big[ \sum_{i \in D_g} w_i h_i
            - \frac{W_g}{d_g} \sum_{l=0}^{d_g-1} \log \Big( \sum_{j \in R_g} w_j e^{h_j}
            - \frac{l}{d_g} \sum_{i \in D_g} w_i e^{h_i} \Big) \Big]

    with :math:`N^w_E = \sum_i w_i \delta_i` for ``"mean"``. Efron's tied-death correction uses the
    mean weight :math:`W_g / d_g` of the tied deaths (R ``coxfit6.c``; lifelines), so integer weights
    equal row replication for Breslow, not for Efron (a replicated row forms a tie group). A weight of 0
    removes its sample (it neither dies nor is at risk) and does not count in :math:`d_g`.
    ``weight=None`` computes the unweighted loss exactly as before (not via weights of 1).

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
    events gives 0 with a zero gradient. A ``weight`` that requires a gradient takes the torch path, so
    the gradient reaches it too.

    References: Cox (1972) JRSS-B 34:187; Breslow (1974) Biometrics 30:89; Efron (1977) JASA 72:557;
    Katzman et al. (2018) "DeepSurv", BMC Med Res Methodol 18:24.

    Args:
        log_hz (torch.Tensor, float): log relative hazards, shape (N,) or (N, 1).
        event (torch.Tensor, bool): event indicator (True = event, False = censored), shape (N,).
            0/1 numbers are accepted.
        time (torch.Tensor, float): event or censoring times, shape (N,).
        ties: ``"efron"`` or ``"breslow"``.
        reduction: ``"mean"`` (divide by the number of events, or by their summed weight) or ``"sum"``.
        weight (torch.Tensor, float, optional): per-sample weights :math:`w_i \ge 0`, shape (N,).

    Returns:
        torch.Tensor: scalar loss, dtype of ``log_hz`` (float32 for half-precision input).

    Raises:
        ValueError: NaN or infinite ``time`` or ``event`` values (they used to sort as the longest
            time), or a negative, NaN or infinite ``weight``.

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
        >>> weight = torch.tensor([1.0, 2.0, 1.0, 1.0, 1.0, 2.0], dtype=torch.float64)
        >>> round(neg_partial_log_likelihood(log_hz, event, time, ties="breslow", weight=weight).item(), 6)
        1.870619
    """
    _check_choice("ties", ties, ("efron", "breslow"))
    _check_choice("reduction", reduction, ("mean", "sum"))
    log_hz = _as_1d(log_hz, "log_hz")
    n = log_hz.shape[0]
    event = _as_1d(event, "event", n, like=log_hz)
    time = _as_1d(time, "time", n, like=log_hz)
    weight = None if weight is None else _as_1d(weight, "weight", n, like=log_hz)
    if not _check_inputs(event, time, weight):  # some weights are 0: drop those samples (exact)
        keep = weight > 0
        return neg_partial_log_likelihood(log_hz[keep], event[keep], time[keep], ties, reduction,
                                          weight[keep])
    event = _as_event(event, n, log_hz)
    h = log_hz.float() if log_hz.dtype in _LOW_PRECISION else log_hz
    # torch.func needs torch ops at every step; on a GPU the torch path avoids a host round trip.
    if (torch._C._are_functorch_transforms_active() or h.device.type != "cpu"
            or (weight is not None and weight.requires_grad)):
        loss = _cox_log_space(h, event, time, torch.argsort(time, descending=True), ties, 1.0, weight)
        if reduction == "sum":
            return loss
        if weight is None:
            return loss / event.sum().clamp(min=1).to(loss.dtype)
        total = torch.where(event, weight, torch.zeros_like(weight)).sum().to(loss.dtype)
        return loss / torch.where(total > 0, total, torch.ones_like(total))
    is_event = _host(event)
    n_events = int(np.count_nonzero(is_event))
    if n_events == 0:
        return h[:0].sum()  # +0.0 with a zero gradient, whatever the values of h
    w_np = None if weight is None else _host(weight).astype(np.float64)
    if reduction == "sum":
        scale = 1.0
    else:
        scale = 1.0 / (n_events if w_np is None else float(w_np[is_event].sum()))
    time_np = _host(time)
    order = time_np.argsort()[::-1]  # descending time; ties in any order (the loss is symmetric there)

    def log_space(h: torch.Tensor) -> torch.Tensor:  # the same loss in torch ops
        order_t = torch.from_numpy(order.copy()).to(h.device)
        return _cox_log_space(h, event, time, order_t, ties, scale, weight)

    x = _host(h)[order].astype(np.float64, copy=False)  # a fresh array: the gather copies
    w_sorted = log_w = None
    if w_np is not None:  # risk-set terms w e^h = e^(h + log w): the spread that matters is that of h + log w
        w_sorted = w_np[order]
        log_w = np.log(w_sorted)
    spread = x if log_w is None else x + log_w
    hi = spread.max()
    if not hi - spread.min() <= _MAX_SHIFTED_SPREAD:  # NaN and inf also take the log-space path
        return log_space(h)
    need_grad = h.requires_grad and torch.is_grad_enabled()
    x -= hi
    value, grad = _cox_shifted(x, is_event[order], time_np[order], scale, ties == "efron", need_grad,
                               w_sorted, log_w)
    if not need_grad:
        return torch.tensor(value, dtype=h.dtype, device=h.device)
    grad_in = np.empty(n, dtype=np.float64 if h.dtype == torch.float64 else np.float32)
    grad_in[order] = grad
    return _CoxWithGradient.apply(h, value, torch.from_numpy(grad_in).to(h.device), log_space)


def linear_cox_derivatives(
    X, event, time, beta, *, ties: str = "efron", weight=None, derivatives: bool = True
) -> tuple[float, np.ndarray | None, np.ndarray | None]:
    r"""Summed Cox loss of a linear model :math:`h = X\beta`, with its gradient and Hessian in :math:`\beta`.

    The loss is ``neg_partial_log_likelihood(X @ beta, event, time, ties, "sum", weight)``. Written per
    event term :math:`l` of tie group :math:`g` as :math:`\sum_l a_l \log c_l - \sum_i w_i \delta_i h_i`
    with :math:`c_l = S_g - f_l E_g` (Breslow: :math:`f_l = 0`, :math:`a_l = w_l`; Efron:
    :math:`f_l = l/d_g`, :math:`a_l = W_g / d_g`), :math:`u_j = w_j e^{h_j}`,
    :math:`S_g = \sum_{R_g} u_j`, :math:`E_g = \sum_{D_g} u_j` and
    :math:`v_l = \nabla_\beta c_l / c_l = \big(\sum_{R_g} u_j x_j - f_l \sum_{D_g} u_j x_j\big) / c_l`:

    .. math::

        \nabla_\beta \mathcal{L} = \sum_l a_l v_l - \sum_i w_i \delta_i x_i, \qquad
        \nabla^2_\beta \mathcal{L} = X^\top \operatorname{diag}(D) X - \sum_l a_l v_l v_l^\top,
        \quad D_j = u_j \Big(\sum_{g:\, t_g \le t_j} \sum_{l \in g} \frac{a_l}{c_l}
            - \delta_j \sum_{l \in g(j)} \frac{a_l f_l}{c_l}\Big)

    in float64 NumPy, O(n d + N_E d^2), no n x n matrix: the Newton step of
    :func:`ctvl.survival.baselines.fit_coxph`
    (autograd through the loss would take d backward passes). Terms are shifted by
    :math:`\max(h + \log w)`; risk sets that underflow give an infinite loss (a rejected Newton step).

    Args:
        X (array-like, float): (n, d) covariates.
        event (array-like, bool): (n,).
        time (array-like, float): (n,), finite.
        beta (array-like, float): (d,) coefficients.
        ties: ``"efron"`` or ``"breslow"``.
        weight (array-like, float, optional): (n,) weights >= 0 (0 removes the sample).
        derivatives: False returns ``(loss, None, None)``.

    Returns:
        ``(loss, gradient (d,), Hessian (d, d))``.
    """
    _check_choice("ties", ties, ("efron", "breslow"))
    X, beta = np.asarray(X, dtype=np.float64), np.asarray(beta, dtype=np.float64)
    event, time = np.asarray(event, dtype=bool), np.asarray(time, dtype=np.float64)
    w = np.ones(time.size) if weight is None else np.asarray(weight, dtype=np.float64)
    if X.ndim != 2 or not X.shape[0] == event.size == time.size == w.size or beta.shape != (X.shape[1],):
        raise ValueError(f"need X (n, d), event, time, weight (n,) and beta (d,), got {X.shape}, "
                         f"{event.shape}, {time.shape}, {w.shape} and {beta.shape}")
    if not np.isfinite(time).all() or not (np.isfinite(w) & (w >= 0)).all():
        raise ValueError("`time` must be finite and `weight` finite and >= 0 "
                         "(found NaN, inf or a negative value)")
    keep = w > 0
    order = np.flatnonzero(keep)[np.argsort(-time[keep], kind="stable")]  # descending time, zero weights out
    X, event, time, w = X[order], event[order], time[order], w[order]
    if not event.any():
        return 0.0, np.zeros(beta.size), np.zeros((beta.size, beta.size))
    h = X @ beta
    shift = (h + np.log(w)).max()
    u = w * np.exp(h - shift)
    is_last = np.append(time[1:] != time[:-1], True)
    last, group_of = np.flatnonzero(is_last), np.concatenate(([0], is_last[:-1].cumsum()))
    n_groups, dead = last.size, np.flatnonzero(event)
    g = group_of[dead]  # (N_E,) tie group of each event
    d_g = np.bincount(g, minlength=n_groups)
    if ties == "efron":
        f = (np.arange(dead.size) - (d_g.cumsum() - d_g)[g]) / d_g[g]
        a = np.bincount(g, w[dead], n_groups)[g] / d_g[g]
    else:
        f, a = np.zeros(dead.size), w[dead]
    risk = u.cumsum()[last]  # S_g
    c = risk[g] - f * np.bincount(g, u[dead], n_groups)[g]
    with np.errstate(divide="ignore"):
        loss = float((a * np.log(c)).sum() + shift * a.sum() - (w[dead] * h[dead]).sum())
    if not derivatives:
        return loss, None, None
    ux = u[:, None] * X
    p = ux.cumsum(0)[last]  # (G, d) sum over the risk set of u x
    q = np.zeros_like(p)
    np.add.at(q, g, ux[dead])  # (G, d) sum over the tied events of u x
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (p[g] - f[:, None] * q[g]) / c[:, None]  # (N_E, d)
        grad = a @ v - w[dead] @ X[dead]
        tail = np.bincount(g, a / c, n_groups)[::-1].cumsum()[::-1]
        diag = u * (tail[group_of] - event * np.bincount(g, a * f / c, n_groups)[group_of])
        hessian = (X * diag[:, None]).T @ X - (v * a[:, None]).T @ v
    return loss, grad, hessian


def _host(x: torch.Tensor) -> np.ndarray:
    """A NumPy view (a copy for a GPU tensor) of a 1-D tensor; half precision becomes float32."""
    x = x.detach().cpu()
    return (x.float() if x.dtype in _LOW_PRECISION else x).numpy()


def _check_inputs(event: torch.Tensor, time: torch.Tensor, weight: torch.Tensor | None) -> bool:
    """Raise ``ValueError`` for NaN/inf ``time`` or ``event`` and negative/NaN/inf ``weight``.

    Returns False when some weight is 0 (those samples are then dropped). One host sync on a GPU.
    """
    if time.device.type == "cpu" and not torch._C._are_functorch_transforms_active():
        t, e = _host(time), _host(event)
        flags = [np.isfinite(t).all(), np.isfinite(e).all()]
        if weight is not None:
            w = _host(weight)
            flags += [(np.isfinite(w) & (w >= 0)).all(), (w > 0).all()]
    else:
        checks = [torch.isfinite(time).all(), torch.isfinite(event).all()]
        if weight is not None:
            checks += [(torch.isfinite(weight) & (weight >= 0)).all(), (weight > 0).all()]
        flags = torch.stack(checks).tolist()  # one host sync for all checks
    messages = ("`time` must be finite (found NaN or inf)", "`event` must be finite (found NaN or inf)",
                "`weight` must be finite and >= 0 (found NaN, inf or a negative value)")
    for ok, message in zip(flags, messages):
        if not ok:
            raise ValueError(message)
    return bool(flags[3]) if weight is not None else True


def _cox_shifted(
    x: np.ndarray, is_event: np.ndarray, time: np.ndarray, scale: float, efron: bool, need_grad: bool,
    weight: np.ndarray | None = None, log_w: np.ndarray | None = None,
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

    With sample weights :math:`v_j > 0` (``weight``, sorted like ``x``; ``log_w`` their logs, and ``x``
    shifted so that :math:`x + \log v \le 0`) the risk-set terms become :math:`w_j = v_j e^{x_j}`, each
    event counts :math:`v_i` and Efron's terms the mean weight of their tie group; the formulas keep
    their form.
    """
    w = np.exp(x) if log_w is None else np.exp(x + log_w)
    risk = _cumsum(w)  # the risk set of each sorted sample, ignoring ties
    ev = is_event * scale if weight is None else is_event * (weight * scale)  # event weights
    groups = _tie_groups(time, is_event)
    if groups is None:  # distinct times: groups of one sample, Efron = Breslow
        counts, d = None, ev
    else:
        last, counts, _, n_events = groups
        risk = risk[last]  # S_g
        if efron and n_events.max() >= 2:
            return _efron_shifted(x, w, is_event, ev, scale, risk, groups, need_grad, weight)
        d = n_events * scale if weight is None else np.add.reduceat(ev, last - counts + 1)  # W_g
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
    groups: tuple, need_grad: bool, weight: np.ndarray | None = None,
) -> tuple[float, np.ndarray | None]:
    """Efron's case of :func:`_cox_shifted`, with ``risk`` :math:`S_g` and ``groups`` per tie group."""
    _, counts, events_to, n_events = groups
    group = np.arange(risk.size).repeat(n_events)  # (N_E,) group of each event, in sorted order
    frac = (np.arange(group.size) - (events_to - n_events)[group]) / n_events[group]  # l_i / d_g
    dead = is_event.nonzero()[0]
    tie_sum = np.bincount(group, w[dead], risk.size)  # E_g
    den = risk[group] - frac * tie_sum[group]  # c_i
    if weight is None:
        loss = scale * float(np.log(den).sum()) - float((ev * x).sum())
        coef = scale
    else:  # each log term counts the mean weight W_g / d_g of its tie group (R, lifelines)
        coef = scale * np.bincount(group, weight[dead], risk.size)[group] / n_events[group]
        loss = float((coef * np.log(den)).sum()) - float((ev * x).sum())
    if not need_grad:
        return loss, None
    inv = coef / den
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
    h: torch.Tensor, event: torch.Tensor, time: torch.Tensor, order: torch.Tensor, ties: str, scale: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""``scale`` times the summed Cox loss in torch ops (``logcumsumexp``); ``order``: descending time.

    Computed in float64: in float32, :math:`h - \log S` keeps only ~3 digits at log-hazards near 4e4.
    Positive ``weight`` (N,) enters the risk sets as :math:`h + \log w`, each event term as :math:`w_i`
    and each Efron term as its tie group's mean weight.
    """
    dtype = h.dtype
    h, event, time = h[order].double(), event[order], time[order]
    _, group, counts = torch.unique_consecutive(time, return_inverse=True, return_counts=True)
    group_end = counts.cumsum(0) - 1
    if weight is None:
        log_risk = torch.logcumsumexp(h, dim=0)[group_end]  # (G,) log sum_{j in R_g} exp(h_j)
        terms = h - log_risk[group]
        if ties == "efron":
            terms = terms - _efron_log1p(h, event, group, group_end, log_risk)
        return (torch.where(event, -terms, torch.zeros_like(terms)).sum() * scale).to(dtype)
    w = weight[order].double()
    hw = h + w.log()
    log_risk = torch.logcumsumexp(hw, dim=0)[group_end]  # (G,) log sum_{j in R_g} w_j exp(h_j)
    terms = w * (h - log_risk[group])
    if ties == "efron":
        dead_w = torch.where(event, w, torch.zeros_like(w))
        d_g = torch.zeros_like(group_end).index_add(0, group, event.long()).clamp(min=1)
        mean_w = h.new_zeros(group_end.shape[0]).index_add(0, group, dead_w) / d_g.to(h.dtype)  # W_g / d_g
        terms = terms - mean_w[group] * _efron_log1p(hw, event, group, group_end, log_risk)
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
