"""Clustering of frozen features: k-means, scored against the labels with NMI, ARI and matched accuracy.

Features are L2-normalised (cosine geometry, as in the kNN protocol) and clustered with k-means into as
many clusters as there are classes (Lloyd's algorithm, k-means++ seeding, ``n_init`` restarts, best inertia
kept): scikit-learn's ``KMeans`` for small sets, faiss' ``Kmeans`` above ``FAISS_MIN_POINTS`` points when
faiss is importable.

- NMI: normalised mutual information (arithmetic-mean normalisation, sklearn's default).
- ARI: adjusted Rand index (Hubert & Arabie 1985).
- accuracy: the best one-to-one map of clusters to classes, found by the Hungarian algorithm
  (``scipy.optimize.linear_sum_assignment``) on the cluster x class contingency table, as in the deep
  clustering literature (e.g. Xie et al. 2016 DEC, arXiv 1511.06335, Eq. 10).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from selfsup.errors import ConfigError, DataError
from selfsup.eval.features import as_tensor
from selfsup.eval.knn import faiss_available

FAISS_MIN_POINTS = 20_000
BACKENDS = ("auto", "sklearn", "faiss")


def hungarian_accuracy(labels: Any, clusters: Any) -> float:
    """Accuracy (%) under the best one-to-one mapping of cluster ids to label ids."""
    from scipy.optimize import linear_sum_assignment

    y = np.asarray(labels, dtype=np.int64)
    c = np.asarray(clusters, dtype=np.int64)
    if y.shape != c.shape or y.ndim != 1 or y.size == 0:
        raise DataError(f"hungarian_accuracy: labels {y.shape} and clusters {c.shape} must be equal non-empty [N]")
    _, yi = np.unique(y, return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    table = np.zeros((ci.max() + 1, yi.max() + 1), dtype=np.int64)
    np.add.at(table, (ci, yi), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return 100.0 * float(table[rows, cols].sum()) / y.size


def kmeans(features: np.ndarray, n_clusters: int, *, seed: int = 0, n_init: int = 10, max_iter: int = 300,
           backend: str = "auto", subsample: bool = True) -> tuple[np.ndarray, str]:
    """Cluster ``features`` [N, F] (float32); returns (assignments [N], backend used).

    ``subsample=False`` makes faiss train on every point (its default trains on at most 256 per centroid)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown k-means backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    x = np.ascontiguousarray(features, dtype=np.float32)
    if backend == "auto":
        backend = "faiss" if x.shape[0] >= FAISS_MIN_POINTS and faiss_available() else "sklearn"
    if backend == "faiss":
        import faiss

        extra = {} if subsample else {"max_points_per_centroid": max(256, x.shape[0])}
        km = faiss.Kmeans(x.shape[1], int(n_clusters), niter=int(max_iter), nredo=int(n_init), seed=int(seed),
                          verbose=False, spherical=False, **extra)
        km.train(x)
        _, assign = km.index.search(x, 1)
        return assign[:, 0].astype(np.int64), "faiss"
    from sklearn.cluster import KMeans

    km2 = KMeans(n_clusters=int(n_clusters), n_init=int(n_init), max_iter=int(max_iter), random_state=int(seed))
    return km2.fit_predict(x).astype(np.int64), "sklearn"


def clustering_metrics(
    features: Any,
    labels: Any,
    *,
    n_clusters: int | None = None,
    seed: int = 0,
    n_init: int = 10,
    max_iter: int = 300,
    normalize: bool = True,
    backend: str = "auto",
) -> dict[str, Any]:
    """k-means on ``features`` scored against ``labels``: ``{"nmi", "ari", "accuracy"}`` (all in percent)
    plus the settings used (``n_clusters`` defaults to the number of distinct labels)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    x = as_tensor(features, "features").float()
    y = as_tensor(labels, "labels").long().cpu().numpy()
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise DataError(f"clustering: features must be [N, F] with one label per row; got {tuple(x.shape)}, {y.shape}")
    k = int(n_clusters) if n_clusters is not None else int(np.unique(y).size)
    if k < 2 or k > x.shape[0]:
        raise ConfigError(f"clustering needs 2 <= n_clusters <= N ({x.shape[0]}), got {k}")
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1)
    assign, used = kmeans(x.cpu().numpy(), k, seed=seed, n_init=n_init, max_iter=max_iter, backend=backend)
    return {
        "nmi": 100.0 * float(normalized_mutual_info_score(y, assign)),
        "ari": 100.0 * float(adjusted_rand_score(y, assign)),
        "accuracy": hungarian_accuracy(y, assign),
        "n_clusters": k, "seed": int(seed), "n_init": int(n_init), "max_iter": int(max_iter),
        "normalize": bool(normalize), "backend": used, "n": int(x.shape[0]),
    }
