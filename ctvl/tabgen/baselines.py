r"""Generators that CK4Gen is compared with, each over the whole real table (covariates, time and event).

- ``copula`` -- :class:`GaussianCopula`: every column through its empirical CDF to a normal score
  (discrete columns: a uniform draw inside the level's CDF step), one correlation matrix :math:`\Sigma`,
  samples :math:`z \sim \mathcal N(0, \Sigma)` mapped back by each column's empirical quantile function
  (SDV's ``GaussianCopulaSynthesizer`` in spirit; written here, about 60 lines).
- ``tvae`` -- :class:`TVAEGenerator`: ctgan's TVAE (the SDV project's tabular VAE; ``ctvl[synth-baselines]``).
- ``bootstrap`` -- :class:`BootstrapGenerator`: real rows drawn with replacement, the utility ceiling
  with no privacy at all.

Missing numeric cells become a 0/1 column ``<name>=<missing>`` for the generator (filled with the median) and
NaN again afterwards; every output goes through :class:`ctvl.tabgen.postprocess.ColumnBounds`.

    >>> import pandas as pd
    >>> real = pd.DataFrame({"x": np.arange(50.0), "arm": pd.Categorical(["a", "b"] * 25),
    ...                      "time": np.arange(1.0, 51.0), "event": [True, False] * 25})
    >>> fake = fit_generator("copula", real, seed=0).sample(20, seed=1)
    >>> list(fake.columns), fake["arm"].dtype == real["arm"].dtype, bool(fake["x"].between(0, 49).all())
    (['x', 'arm', 'time', 'event'], True, True)
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ctvl.data.tabular import MISSING, column_kind
from ctvl.tabgen.postprocess import ColumnBounds

__all__ = ["GENERATORS", "BootstrapGenerator", "GaussianCopula", "TVAEGenerator", "fit_generator"]

GENERATORS = ("copula", "tvae", "bootstrap")


class _Generator:
    """Shared frame handling: missing numeric cells <-> indicator columns, then :class:`ColumnBounds`."""

    def _prepare(self, real: pd.DataFrame) -> pd.DataFrame:
        self.bounds_ = ColumnBounds().fit(real)
        frame = real.copy()
        self.indicators_ = []
        for name in real.columns:
            if column_kind(real[name]) in ("numeric", "integer") and real[name].isna().any():
                frame[name] = real[name].fillna(real[name].median())
                frame[f"{name}={MISSING}"] = real[name].isna().astype(int)
                self.indicators_.append(name)
        return frame

    def _finish(self, generated: pd.DataFrame) -> pd.DataFrame:
        out = generated.copy()
        for name in self.indicators_:
            flag = f"{name}={MISSING}"
            out[name] = out[name].where(pd.to_numeric(out.pop(flag)).to_numpy() < 0.5)
        return self.bounds_.restore(out).reset_index(drop=True)


class BootstrapGenerator(_Generator):
    """Real rows drawn with replacement."""

    def fit(self, real: pd.DataFrame, seed: int = 0) -> BootstrapGenerator:
        self.real_ = real.reset_index(drop=True)
        return self

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        idx = np.random.default_rng(seed).integers(len(self.real_), size=n)
        return self.real_.iloc[idx].reset_index(drop=True)


class GaussianCopula(_Generator):
    """Empirical marginals joined by a Gaussian copula; discrete columns by their level frequencies."""

    def fit(self, real: pd.DataFrame, seed: int = 0) -> GaussianCopula:
        frame = self._prepare(real)
        rng = np.random.default_rng(seed)
        self.columns_, scores = [], []
        for name in frame.columns:
            col = frame[name]
            if column_kind(col) in ("numeric", "integer") and col.nunique() > 2:
                values = col.to_numpy(np.float64)
                u = (stats.rankdata(values) - 0.5) / values.size
                self.columns_.append((name, "continuous", np.sort(values)))
            else:
                levels, codes = np.unique(col.astype(object).to_numpy(), return_inverse=True)
                cum = np.r_[0.0, np.cumsum(np.bincount(codes, minlength=levels.size)) / codes.size]
                u = cum[codes] + rng.uniform(size=codes.size) * (cum[codes + 1] - cum[codes])
                self.columns_.append((name, "discrete", (levels, cum)))
            scores.append(stats.norm.ppf(np.clip(u, 1e-6, 1 - 1e-6)))
        Z = np.column_stack(scores)
        self.correlation_ = np.corrcoef(Z, rowvar=False) + 1e-6 * np.eye(Z.shape[1])
        return self

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        z = rng.multivariate_normal(np.zeros(len(self.columns_)), self.correlation_, size=n)
        u = stats.norm.cdf(z)
        out = {}
        for j, (name, kind, state) in enumerate(self.columns_):
            if kind == "continuous":
                out[name] = np.quantile(state, u[:, j])
            else:
                levels, cum = state
                out[name] = levels[np.clip(np.searchsorted(cum, u[:, j], side="right") - 1, 0, levels.size - 1)]
        return self._finish(pd.DataFrame(out))


class TVAEGenerator(_Generator):
    """ctgan's TVAE (Xu et al. 2019) on the real table; categorical and 0/1 columns as discrete columns."""

    def __init__(self, epochs: int = 100):
        self.epochs = epochs

    def fit(self, real: pd.DataFrame, seed: int = 0) -> TVAEGenerator:
        try:
            from ctgan import TVAE
        except ImportError as err:
            raise ImportError("the `tvae` baseline needs ctgan: pip install 'ctvl[synth-baselines]'") from err
        import torch

        frame = self._prepare(real)
        self.discrete_ = [c for c in frame.columns if column_kind(frame[c]) in ("categorical", "binary")]
        frame[self.discrete_] = frame[self.discrete_].astype(str)
        torch.manual_seed(seed)
        np.random.seed(seed)  # ctgan draws from the global NumPy state
        self.model_ = TVAE(epochs=self.epochs, enable_gpu=False)
        self.model_.fit(frame, discrete_columns=self.discrete_)
        self.kinds_ = {c: column_kind(real[c]) for c in real.columns}
        return self

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        import torch

        torch.manual_seed(seed)
        np.random.seed(seed)
        out = self.model_.sample(n)
        for name, kind in self.kinds_.items():  # discrete columns come back as text
            if kind == "binary":
                out[name] = out[name].map({"True": 1.0, "False": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0})
        return self._finish(out)


def fit_generator(name: str, real: pd.DataFrame, seed: int = 0, tvae_epochs: int = 100) -> _Generator:
    """Fit baseline ``name`` (:data:`GENERATORS`) on ``real`` (covariates + time + event columns)."""
    makers = {"copula": GaussianCopula, "tvae": lambda: TVAEGenerator(tvae_epochs), "bootstrap": BootstrapGenerator}
    if name not in makers:
        raise ValueError(f"unknown generator {name!r}; choose from {GENERATORS}")
    return makers[name]().fit(real, seed=seed)
