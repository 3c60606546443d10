r"""Survival losses of the ctvl survival branch: pure functions of tensors.

Entry points:

- :func:`neg_partial_log_likelihood` -- Cox / DeepSurv loss (Breslow or Efron ties), O(n log n);
  defined in :mod:`ctvl.survival.cox`.
- :func:`deephit_loss` -- single-risk DeepHit likelihood over K time bins, plus the optional ranking term.

Both likelihoods (Cox and DeepHit) take optional per-sample ``weight`` (inverse propensity weighting).
- :func:`dispersion_loss` / :func:`dispersion_loss_discrete` -- spread the latents of uncensored patients
  by survival time (continuous) or by time bin (discrete).
- :func:`alignment_loss` -- ties the survival latent to the pooled decoder state.

Argument names follow torchsurv (``log_hz, event, time``). Every loss is finite with a defined (zero)
gradient on batches that carry no information (no events, fewer than two uncensored patients), because
small CT batches often hold no event at all.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ctvl.survival._tensors import _as_1d, _as_event, _check_choice, _zero_like_graph
from ctvl.survival.cox import neg_partial_log_likelihood

__all__ = [
    "neg_partial_log_likelihood",
    "deephit_loss",
    "dispersion_loss",
    "dispersion_loss_discrete",
    "alignment_loss",
]


def deephit_loss(
    logits: torch.Tensor,
    bin_index: torch.Tensor,
    event: torch.Tensor,
    rank_weight: float = 0.0,
    sigma: float = 0.1,
    reduction: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Single-risk DeepHit loss: discrete-time likelihood plus the optional ranking term; optional weights.

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

    With per-sample weights :math:`w_i \ge 0` (``weight``, e.g. inverse propensity weights) each patient
    counts :math:`w_i` times and each pair :math:`w_i w_j` times:

    .. math::

        \mathcal{L}^w = \frac{\sum_i w_i \big[\ell_i + \alpha\, r_i\big]}{\sum_i w_i}, \qquad
        r_i = \frac{\sum_j w_j A_{ij} \exp\big(-\frac{F_i(k(i)) - F_j(k(i))}{\sigma}\big)}{\sum_j w_j}

    with :math:`\ell_i` the bracket of :math:`\mathcal{L}_{\text{nll}}` (negated): weights of 1 give the
    unweighted loss, integer weights equal replicated rows. ``"sum"`` is :math:`\sum_i w_i [\ell_i +
    \alpha r_i]` and ``"none"`` its terms; a zero total weight gives 0 with a zero gradient.

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
        weight (torch.Tensor, float, optional): per-sample weights :math:`w_i \ge 0`, shape (N,).

    Returns:
        torch.Tensor: scalar loss (or (N,) for ``"none"``, weighted terms when ``weight`` is given).

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
        >>> weight = torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=torch.float64)
        >>> rows = torch.tensor([0, 0, 1, 2, 3])  # weight 2 = the first patient twice
        >>> a = deephit_loss(logits, bin_index, event, rank_weight=0.5, weight=weight)
        >>> b = deephit_loss(logits[rows], bin_index[rows], event[rows], rank_weight=0.5)
        >>> bool(torch.isclose(a, b))
        True
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
    if weight is not None:
        weight = _as_1d(weight, "weight", n, like=logits).to(logits.dtype)
        if not bool((torch.isfinite(weight) & (weight >= 0)).all()):
            raise ValueError("`weight` must be finite and >= 0 (found NaN, inf or a negative value)")
    log_pmf = F.log_softmax(_with_beyond_column(logits), dim=1)  # (N, K+1)
    log_tail = torch.logcumsumexp(log_pmf.flip(1), dim=1).flip(1)  # log sum_{l >= k} p_l
    idx = bin_index[:, None]
    nll = -torch.where(event, log_pmf.gather(1, idx)[:, 0], log_tail.gather(1, idx + 1)[:, 0])
    loss = nll
    if rank_weight > 0:
        loss = nll + rank_weight * _deephit_rank(log_pmf.exp(), bin_index, event, sigma, weight)
    if weight is not None:
        loss = weight * loss
        if reduction == "mean":
            return loss.sum() / weight.sum().clamp(min=torch.finfo(loss.dtype).tiny)
    if reduction == "none":
        return loss
    return loss.mean() if reduction == "mean" else loss.sum()


def _with_beyond_column(logits: torch.Tensor) -> torch.Tensor:
    """Append the fixed zero logit of "beyond the last cut" (pycox ``pad_col``): (N, K) -> (N, K+1)."""
    return torch.cat([logits, logits.new_zeros(logits.shape[0], 1)], dim=1)


def _deephit_rank(
    pmf: torch.Tensor, bin_index: torch.Tensor, event: torch.Tensor, sigma: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample DeepHit ranking term (N,): mean over j (``weight``-weighted) of
    A_ij exp(-(F_i(k_i) - F_j(k_i)) / sigma)."""
    cdf = pmf.cumsum(1)  # (N, K+1)
    at_ki = cdf[:, bin_index].T  # (i, j): F_j(k(i))
    diff = at_ki.diagonal()[:, None] - at_ki  # F_i(k(i)) - F_j(k(i))
    k_i, k_j = bin_index[:, None], bin_index[None, :]
    comparable = event[:, None] & ((k_i < k_j) | ((k_i == k_j) & ~event[None, :]))
    weighted = torch.where(comparable, torch.exp(-diff / sigma), torch.zeros_like(diff))
    if weight is None:
        return weighted.mean(1)
    return (weighted @ weight) / weight.sum().clamp(min=torch.finfo(weighted.dtype).tiny)


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
