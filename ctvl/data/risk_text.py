r"""A teacher's risk as answer text, and back: the target encodings of the distillation workflow.

A student language model learns to *write* a teacher's risk for a patient (paper 000). The answer
is one of a fixed, finite set of strings, so that decoding can be constrained to it and the
model's distribution over the set gives an expected value (a continuous score, no ties):

- ``percentile``: the patient's percentile among the training patients' teacher log-hazards,
  an integer 0-100 (``"42"``);
- ``log_hazard``: the teacher log-hazard minus the training mean, two decimals with a sign,
  clipped to the training range (``"+0.53"``, ``"-1.20"``);
- ``decile``: the risk decile as a word (``"first"`` ... ``"tenth"``).

Every encoding is fitted on the training patients' teacher log-hazards only. Each candidate
answer has a numeric ``value`` (percentile, centred log-hazard or decile number) and a
teacher-scale log-hazard (:meth:`RiskEncoding.to_log_hazard`): the training quantile of a
percentile, the median of a decile, the log-hazard itself.

    >>> import numpy as np
    >>> enc = RiskEncoding("percentile").fit(np.linspace(-2, 2, 101))
    >>> enc.encode(np.array([-2.0, 0.0, 2.0]))
    ['0', '50', '100']
    >>> enc.parse("50"), enc.parse("fifty")
    (50.0, None)
    >>> float(enc.to_log_hazard(np.array([50.0]))[0])
    0.0
"""

from __future__ import annotations

from typing import Optional

import numpy as np

ENCODINGS = ("percentile", "log_hazard", "decile")
DECILE_WORDS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")


class RiskEncoding:
    """One target encoding, fitted on the training teacher log-hazards ``(n_train,)``.

    Attributes (after ``fit``):
        candidates (list[str]): every valid answer, in increasing risk.
        values (np.ndarray): ``(C,)`` the numeric value of each candidate.
    """

    def __init__(self, name: str = "percentile", decimals: int = 2):
        if name not in ENCODINGS:
            raise ValueError(f"unknown risk encoding {name!r}; choose from {ENCODINGS}")
        self.name, self.decimals = name, decimals

    def fit(self, train_log_hazard) -> RiskEncoding:
        h = np.sort(np.asarray(train_log_hazard, dtype=np.float64))
        if h.size < 2 or not np.isfinite(h).all():
            raise ValueError("RiskEncoding.fit needs >= 2 finite training log-hazards")
        self.train_ = h
        self.mean_ = float(h.mean())
        if self.name == "percentile":
            self.values = np.arange(101, dtype=np.float64)
            self.candidates = [str(v) for v in range(101)]
        elif self.name == "decile":
            self.values = np.arange(1, 11, dtype=np.float64)
            self.candidates = list(DECILE_WORDS)
            edges = np.quantile(h, np.linspace(0, 1, 11))
            self.decile_medians_ = np.array([np.median(h[(h >= lo) & (h <= hi)]) for lo, hi in zip(edges, edges[1:])])
        else:
            step = 10.0 ** -self.decimals
            lo, hi = (np.floor((h[0] - self.mean_) / step), np.ceil((h[-1] - self.mean_) / step))
            self.values = np.round(np.arange(lo, hi + 1) * step, self.decimals)
            self.candidates = [self._format(v) for v in self.values]
        self._index = {c: i for i, c in enumerate(self.candidates)}
        return self

    def _format(self, v: float) -> str:
        v = 0.0 if abs(v) < 0.5 * 10.0 ** -self.decimals else v  # no "-0.00"
        return f"{v:+.{self.decimals}f}"

    def value_of(self, log_hazard) -> np.ndarray:
        """Teacher log-hazards ``(n,)`` -> the encoding's value ``(n,)``, on the candidates' grid."""
        h = np.asarray(log_hazard, dtype=np.float64)
        if self.name == "percentile":
            below = np.searchsorted(self.train_, h, side="left")  # mid-rank: ties share their middle
            ecdf = 0.5 * (below + np.searchsorted(self.train_, h, side="right")) / self.train_.size
            return np.round(100.0 * ecdf)
        if self.name == "decile":
            edges = np.quantile(self.train_, np.linspace(0, 1, 11))[1:-1]
            return np.searchsorted(edges, h, side="right") + 1.0
        return np.clip(np.round(h - self.mean_, self.decimals), self.values[0], self.values[-1])

    def encode(self, log_hazard) -> list[str]:
        """Teacher log-hazards ``(n,)`` -> answer strings."""
        return [self.candidates[i] for i in self.index_of(self.value_of(log_hazard))]

    def index_of(self, values) -> np.ndarray:
        """Values ``(n,)`` on the grid -> candidate indices ``(n,)``."""
        return np.abs(np.asarray(values, dtype=np.float64)[:, None] - self.values[None, :]).argmin(axis=1)

    def parse(self, text: str) -> Optional[float]:
        """An answer string -> its value, or None when it is not one of the candidates."""
        i = self._index.get(str(text).strip())
        return None if i is None else float(self.values[i])

    def to_log_hazard(self, values) -> np.ndarray:
        """Values ``(n,)`` (also expected values between grid points) -> teacher-scale log-hazards ``(n,)``,
        monotone increasing: the training quantile (percentile), the decile's median, or ``value + mean``."""
        v = np.asarray(values, dtype=np.float64)
        if self.name == "percentile":
            return np.quantile(self.train_, np.clip(v, 0, 100) / 100.0)
        if self.name == "decile":
            return np.interp(v, self.values, self.decile_medians_)
        return v + self.mean_
