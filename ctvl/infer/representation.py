r"""How a set of embeddings (hidden states, latents) orders patients by risk: maps and two numbers.

- :func:`embed_2d`: t-SNE (or PCA) to two dimensions, for a figure.
- :func:`risk_smoothness`: Spearman's :math:`\rho` between each point's risk :math:`r_i` and the mean
  risk of its ``k`` nearest neighbours in embedding space (the point itself excluded),
  :math:`\rho\big(r_i,\ \tfrac{1}{k}\sum_{j \in N_k(i)} r_j\big)`: 1 for a smooth risk gradient, about 0
  when neighbours carry no information about risk.
- :func:`knn_r2`: cross-validated :math:`R^2` of a k-nearest-neighbour regression of risk from the
  embeddings (5 folds by default), the same question asked out of sample.

A t-SNE picture alone is no evidence of structure; the two numbers, compared between a trained and
an untrained model, are.
"""

from __future__ import annotations

import numpy as np


def _standardised(z) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    sd = z.std(axis=0)
    return (z - z.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def embed_2d(z, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """``(n, d)`` -> ``(n, 2)`` coordinates and the method used ("auto": t-SNE for 5..5000 points, else PCA)."""
    z = np.asarray(z, dtype=np.float64)
    n = z.shape[0]
    if method == "auto":
        method = "tsne" if 5 <= n <= 5000 else "pca"
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, (n - 1) / 3.0), init="pca", random_state=seed).fit_transform(z), method
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(2, random_state=seed).fit_transform(z), method
    raise ValueError(f"method must be 'auto', 'tsne' or 'pca', got {method!r}")


def risk_smoothness(z, risk, k: int = 15) -> float:
    """Spearman between each point's risk and its ``k`` nearest neighbours' mean risk (features standardised)."""
    from scipy.stats import spearmanr
    from sklearn.neighbors import NearestNeighbors

    z, risk = _standardised(z), np.asarray(risk, dtype=np.float64)
    if not 1 <= k < len(risk):
        raise ValueError(f"k must be in [1, n), got {k} for {len(risk)} points")
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    return float(spearmanr(risk, risk[idx[:, 1:]].mean(axis=1)).statistic)


def knn_r2(z, risk, k: int = 15, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated R^2 of a ``k``-NN regression of ``risk`` from ``z`` (features standardised per fit)."""
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=k))
    cv = KFold(folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(model, np.asarray(z, float), np.asarray(risk, float), cv=cv, scoring="r2")))
