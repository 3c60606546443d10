r"""Normal scores of numeric columns: the space in which CK4Gen's decoder reconstructs numbers.

Skewed clinical numbers (receptor levels with a quarter at zero, node counts, creatinine) are poorly served by
a decoder that outputs standardised values: a perturbation of the code moves a value by a fixed amount,
whatever the density there. In normal-score space :math:`u = \Phi^{-1}(\hat F(x))` (:math:`\hat F` the real
column's empirical CDF at mid-ranks) the same perturbation moves a value by a share of the distribution,
and the inverse maps scores back through the real quantiles by linear interpolation, so generated values
follow the real marginal and stay inside the real range.

    >>> scores = NormalScores().fit(np.array([[0.0], [0.0], [1.0], [5.0]]), [0])
    >>> np.round(scores.transform(np.array([[0.0], [5.0]])), 3).ravel().tolist()
    [-0.674, 1.15]
    >>> scores.inverse(scores.transform(np.array([[1.0], [5.0]]))).ravel().tolist()
    [1.0, 5.0]
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import stats

__all__ = ["NormalScores"]


class NormalScores:
    """Maps the columns ``columns`` of a matrix to normal scores and back; other columns pass unchanged."""

    def fit(self, X: np.ndarray, columns: Sequence[int], max_knots: int = 2000) -> NormalScores:
        """Learn each column's knots: its distinct values (at most ``max_knots`` quantiles) and their scores."""
        self.knots_: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for j in columns:
            values = np.sort(np.asarray(X[:, j], np.float64))
            uniq, counts = np.unique(values, return_counts=True)
            mid = (np.cumsum(counts) - 0.5 * counts) / values.size  # mid-rank ECDF of each distinct value
            if uniq.size > max_knots:
                keep = np.unique(np.linspace(0, uniq.size - 1, max_knots).round().astype(int))
                uniq, mid = uniq[keep], mid[keep]
            self.knots_[int(j)] = (uniq, stats.norm.ppf(mid))
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        out = np.array(X, dtype=np.float64, copy=True)
        for j, (x, z) in self.knots_.items():
            out[:, j] = np.interp(out[:, j], x, z) if x.size > 1 else 0.0
        return out

    def inverse(self, U: np.ndarray) -> np.ndarray:
        out = np.array(U, dtype=np.float64, copy=True)
        for j, (x, z) in self.knots_.items():
            out[:, j] = np.interp(out[:, j], z, x) if x.size > 1 else x[0]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": "ctvl.NormalScores", "version": 1,
                "knots": {str(j): [x.tolist(), z.tolist()] for j, (x, z) in self.knots_.items()}}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> NormalScores:
        if state.get("format") != "ctvl.NormalScores" or state.get("version") != 1:
            raise ValueError(f"not a ctvl.NormalScores version 1 state: {state.get('format')!r}")
        scores = cls()
        scores.knots_ = {int(j): (np.asarray(x, np.float64), np.asarray(z, np.float64))
                         for j, (x, z) in state["knots"].items()}
        return scores
