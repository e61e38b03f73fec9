"""Weighted k-nearest-neighbour classification of frozen features.

Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"
(arXiv 1805.01978), Sec. 3.4: features are L2-normalised, similarity is the cosine ``s_i = f_i . f``,
the k most similar training points N_k vote with weight ``a_i = exp(s_i / T)`` and the score of class c is

    w_c = sum_{i in N_k} a_i * 1[c_i = c]                                  (shapes: [M, C])

The paper uses k = 200 and T = 0.07; we default to k = 200, T = 0.1 (as in later SSL reports, e.g. DINO).

Two back ends give the same neighbours: a chunked matmul + ``topk`` in torch (any device), and faiss
``IndexFlatIP`` (exact inner-product search, CPU) used when asked for, or automatically for large
CPU problems when faiss is importable.

Numerics: for T < 1/80 the weights ``exp(s/T)`` would overflow float32, so they are computed as
``exp((s - 1) / T)``, a common factor ``exp(-1/T)`` on every score that changes no ranking.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError, DataError
from selfsup.eval.features import as_tensor

# Brute force in torch below this many train x test pairs; faiss (if importable) above, on CPU only. Both are
# bound by the same sgemm (benchmarks/RESULTS.md, "kNN evaluation"), so faiss is only preferred for very large
# galleries, where its blocked search keeps memory flat.
FAISS_AUTO_PAIRS = 2_000_000_000
# The torch path holds one [chunk, N] similarity block; cap it at this many elements (1 GiB of float32).
MAX_BLOCK_ELEMENTS = 1 << 28


def knn_search_seconds(n_train: int, n_test: int, dim: int) -> float:
    """A conservative time estimate for the similarity search: ~2 N_train N_test F FLOPs at 50 GFLOP/s."""
    return 2.0 * n_train * n_test * dim / 50e9


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except Exception:
        return False
    return True


def _check_inputs(
    train_features: Any, train_labels: Any, test_features: Any, k: int, temperature: float,
    num_classes: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    tr = as_tensor(train_features, "train_features")
    te = as_tensor(test_features, "test_features")
    y = as_tensor(train_labels, "train_labels").long()
    if tr.ndim != 2 or te.ndim != 2:
        raise DataError(f"features must be 2-D [N, F]; got train {tuple(tr.shape)}, test {tuple(te.shape)}")
    if tr.shape[1] != te.shape[1]:
        raise DataError(f"train features have {tr.shape[1]} dims but test features {te.shape[1]}; "
                        "extract both with the same encoder")
    if y.ndim != 1 or y.shape[0] != tr.shape[0]:
        raise DataError(f"train_labels must be [N] with N = {tr.shape[0]}, got {tuple(y.shape)}")
    if tr.shape[0] == 0:
        raise DataError("kNN needs at least one training feature (empty training set)")
    if int(k) < 1:
        raise ConfigError(f"kNN k must be >= 1, got {k}")
    if not float(temperature) > 0:
        raise ConfigError(f"kNN temperature must be > 0, got {temperature}")
    if int(y.min()) < 0:
        raise DataError("train labels contain negative values (unlabelled images?); kNN needs labels >= 0")
    c = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if int(y.max()) >= c:
        raise DataError(f"train label {int(y.max())} is out of range for num_classes={c}")
    return tr, y, te, min(int(k), tr.shape[0]), c


def neighbours_torch(
    train: torch.Tensor, test: torch.Tensor, k: int, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    sims, idx = [], []
    train_t = train.t().contiguous()
    chunk_size = max(1, min(chunk_size, MAX_BLOCK_ELEMENTS // max(1, train.shape[0])))
    for start in range(0, test.shape[0], chunk_size):
        s = test[start : start + chunk_size] @ train_t  # [c, N]
        v, i = s.topk(k, dim=1, largest=True, sorted=True)
        sims.append(v)
        idx.append(i)
    return torch.cat(sims), torch.cat(idx)


def neighbours_faiss(train: torch.Tensor, test: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    import faiss

    index = faiss.IndexFlatIP(int(train.shape[1]))
    index.add(np.ascontiguousarray(train.detach().cpu().numpy(), dtype=np.float32))
    d, i = index.search(np.ascontiguousarray(test.detach().cpu().numpy(), dtype=np.float32), k)
    return torch.from_numpy(d).to(train.device), torch.from_numpy(i).long().to(train.device)


# the faiss back end as knn_predict looks it up at call time (a test swaps it to count the calls)
_neighbours_faiss = neighbours_faiss


@torch.no_grad()
def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    *,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    use_faiss: bool | None = None,
) -> torch.Tensor:
    """Weighted kNN class scores ``[M, C]`` for ``test_features [M, F]`` given ``train_features [N, F]``.

    ``num_classes`` defaults to ``max(train_labels) + 1``. ``k`` is clipped to N. Computation runs on
    ``train_features.device`` in float32; ``use_faiss=None`` picks faiss for CPU problems with more than
    ``FAISS_AUTO_PAIRS`` train x test pairs when faiss is installed.
    """
    tr, y, te, k, c = _check_inputs(train_features, train_labels, test_features, k, temperature, num_classes)
    device = tr.device
    tr = F.normalize(tr.float(), dim=1)
    te = F.normalize(te.to(device).float(), dim=1)
    y = y.to(device)
    if use_faiss is None:
        use_faiss = device.type == "cpu" and tr.shape[0] * te.shape[0] > FAISS_AUTO_PAIRS and faiss_available()
    if use_faiss:
        if not faiss_available():
            raise ConfigError("use_faiss=True but faiss is not installed; `pip install faiss-cpu` or use_faiss=None")
        sims, idx = _neighbours_faiss(tr, te, k)
    else:
        sims, idx = neighbours_torch(tr, te, k, max(1, int(chunk_size)))
    t = float(temperature)
    shift = 1.0 if 1.0 / t > 80.0 else 0.0
    weights = ((sims - shift) / t).exp()  # [M, k]
    scores = torch.zeros(te.shape[0], c, device=device, dtype=torch.float32)
    scores.scatter_add_(1, y[idx], weights)
    return scores


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Top-k accuracies in percent; ``k`` larger than the number of classes counts as all classes."""
    labels = as_tensor(labels, "labels").long().to(scores.device)
    if labels.shape[0] != scores.shape[0]:
        raise DataError(f"{scores.shape[0]} predictions but {labels.shape[0]} labels")
    if labels.numel() == 0:
        raise DataError("no test labels to score (empty test set)")
    kmax = min(max(ks), scores.shape[1])
    pred = scores.topk(kmax, dim=1).indices  # [M, kmax]
    hit = pred == labels[:, None]
    return {f"top{k}": 100.0 * float(hit[:, : min(k, kmax)].any(dim=1).float().mean()) for k in ks}


def knn_accuracy(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, *, k: int = 200, temperature: float = 0.1, num_classes: int | None = None,
                 **options: Any) -> dict[str, Any]:
    """Weighted-kNN top-1/top-5 accuracy (%) of ``test_labels``: ``{"top1", "top5", "k", "temperature"}``;
    ``options`` (``chunk_size``, ``use_faiss``) go to :func:`knn_predict`."""
    y_test = as_tensor(test_labels, "test_labels").long()
    if num_classes is None:
        num_classes = int(max(int(as_tensor(train_labels, "train_labels").max()), int(y_test.max()))) + 1
    scores = knn_predict(train_features, train_labels, test_features, k=k, temperature=temperature,
                         num_classes=num_classes, **options)
    acc = topk_accuracy(scores, y_test)
    return {**acc, "k": min(int(k), int(train_features.shape[0])), "temperature": float(temperature)}
