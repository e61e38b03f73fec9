"""Image retrieval on frozen features: test queries against the training gallery, cosine similarity.

Every query ranks the whole gallery by cosine similarity (L2-normalised features, inner product); a gallery
item is *relevant* when it has the query's label.

- ``recall@k`` (the metric-learning "Recall@K", Song et al. 2016, arXiv 1511.06452): the percentage of
  queries with at least one relevant item among their k nearest gallery items. Non-decreasing in k.
- ``mAP``: mean over queries of average precision,
  ``AP = (1 / R) * sum_{r : rel(r)} P@r`` with R the number of relevant gallery items and P@r the
  precision of the top r (computed over the full ranking, no cut-off).

Queries whose class has no gallery item are left out (counted in ``n_queries_without_relevant``). Ties in
similarity are broken by gallery order (stable sort), so results are deterministic.

Cost: one chunked ``[chunk, N]`` similarity + full sort per chunk in torch (any device). For recall only,
``map=False`` switches to a top-k search (faiss ``IndexFlatIP`` on CPU for large problems).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError, DataError
from selfsup.eval.features import as_tensor
from selfsup.eval.knn import FAISS_AUTO_PAIRS, faiss_available, neighbours_faiss, neighbours_torch


def average_precision(relevant_sorted: torch.Tensor) -> torch.Tensor:
    """AP of each row of a ranked relevance matrix ``[Q, N]`` (bool, best first) -> ``[Q]`` (NaN if none)."""
    rel = relevant_sorted.float()
    hits = rel.cumsum(1)
    ranks = torch.arange(1, rel.shape[1] + 1, device=rel.device, dtype=torch.float32)
    n_rel = rel.sum(1)
    ap = (hits / ranks * rel).sum(1) / n_rel
    return torch.where(n_rel > 0, ap, torch.full_like(ap, float("nan")))


@torch.no_grad()
def retrieval_metrics(
    gallery_features: Any,
    gallery_labels: Any,
    query_features: Any,
    query_labels: Any,
    *,
    ks: Sequence[int] = (1, 5, 10),
    map: bool = True,  # noqa: A002 - the metric's name
    chunk_size: int = 256,
    use_faiss: bool | None = None,
) -> dict[str, Any]:
    """mAP and recall@k (percent) of ``query_features`` against ``gallery_features`` by cosine similarity.

    Returns ``{"mAP", "recall@1", "recall@5", "recall@10", "n_queries", "n_gallery",
    "n_queries_without_relevant", "ks"}`` (``mAP`` omitted when ``map=False``).
    """
    g = as_tensor(gallery_features, "gallery_features")
    q = as_tensor(query_features, "query_features")
    yg = as_tensor(gallery_labels, "gallery_labels").long()
    yq = as_tensor(query_labels, "query_labels").long()
    if g.ndim != 2 or q.ndim != 2 or g.shape[1] != q.shape[1]:
        raise DataError(f"features must be [N, F] with the same F; got gallery {tuple(g.shape)}, query {tuple(q.shape)}")
    if yg.shape != (g.shape[0],) or yq.shape != (q.shape[0],):
        raise DataError("retrieval: one label per gallery row and per query row is needed")
    if g.shape[0] == 0 or q.shape[0] == 0:
        raise DataError("retrieval needs a non-empty gallery (train set) and query set (test set)")
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ConfigError(f"retrieval ks must be positive integers, got {ks}")
    device = g.device
    g = F.normalize(g.float(), dim=1)
    q = F.normalize(q.to(device).float(), dim=1)
    yg, yq = yg.to(device), yq.to(device)
    n_rel = (yq[:, None] == torch.unique(yg)[None, :]).any(1)
    keep = n_rel.nonzero().squeeze(1)
    q, yq = q[keep], yq[keep]
    out: dict[str, Any] = {"n_queries": int(keep.numel()), "n_gallery": int(g.shape[0]),
                           "n_queries_without_relevant": int((~n_rel).sum()), "ks": list(ks)}
    if q.shape[0] == 0:
        raise DataError("retrieval: no query label occurs in the gallery; --train and --test need the same classes")
    kmax = min(max(ks), g.shape[0])
    hit_at = torch.zeros(q.shape[0], kmax, dtype=torch.bool, device=device)
    if map:
        aps = []
        for s in range(0, q.shape[0], chunk_size):
            sims = q[s : s + chunk_size] @ g.t()
            order = torch.sort(sims, dim=1, descending=True, stable=True).indices
            rel = yg[order] == yq[s : s + chunk_size, None]
            aps.append(average_precision(rel))
            hit_at[s : s + chunk_size] = rel[:, :kmax]
        out["mAP"] = 100.0 * float(torch.cat(aps).mean())
    else:
        if use_faiss is None:
            use_faiss = device.type == "cpu" and g.shape[0] * q.shape[0] > FAISS_AUTO_PAIRS and faiss_available()
        _, idx = neighbours_faiss(g, q, kmax) if use_faiss else neighbours_torch(g, q, kmax, chunk_size)
        hit_at = yg[idx] == yq[:, None]
    for k in ks:
        out[f"recall@{k}"] = 100.0 * float(hit_at[:, : min(k, kmax)].any(1).float().mean())
    return out
