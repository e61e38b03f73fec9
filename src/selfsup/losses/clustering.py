"""Clustering losses (pure functions): SwAV's Sinkhorn-Knopp codes and swapped prediction
(Caron et al. 2020, arXiv 2006.09882)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from selfsup import distributed


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if distributed.world_size() > 1:
        dist.all_reduce(x)
    return x


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft codes Q* = Diag(u) exp(C^T Z / eps) Diag(v) (SwAV Sec. 3.1, Eq. 3 and Alg. 1 / App. A.1).

    scores: [B, K] prototype scores z_b . c_k of the local batch. Returns codes [B, K] (float32, no gradient)
    for the transportation polytope with uniform marginals: after the final step every sample's code sums
    to 1 and, as the iterations converge, every prototype receives B_total / K of the mass. When distributed,
    the sums over samples are all-reduced, so the codes are those of the global batch (B_total = W * B).
    ``epsilon`` 0.05 and 3 iterations are the paper's defaults.
    """
    s = scores.detach().float()
    # exp(s / eps) overflows for s / eps > ~88; subtracting the global max changes Q by a constant
    # factor that the first normalisation removes.
    smax = s.max().clone()
    if distributed.world_size() > 1:
        dist.all_reduce(smax, op=dist.ReduceOp.MAX)
    q = torch.exp((s - smax) / epsilon).T  # [K, B]
    k, b = q.shape
    b_total = b * distributed.world_size()
    q /= _all_reduce_sum(q.sum())
    for _ in range(iterations):
        # rows (prototypes): each gets total mass 1 / K
        q /= _all_reduce_sum(q.sum(dim=1, keepdim=True))
        q /= k
        # columns (samples): each gets total mass 1 / B_total
        q /= q.sum(dim=0, keepdim=True)
        q /= b_total
    q *= b_total  # each column (sample) now sums to 1: a soft assignment
    return q.T


def swav_loss(
    scores: list[torch.Tensor], codes: list[torch.Tensor], assign_views: list[int], temperature: float = 0.1
) -> torch.Tensor:
    """SwAV swapped prediction (Sec. 3.1, Eq. 1-2; main_swav.py):

        L = mean_{s in assign views} mean_{v != s}  l(z_v, q_s),  l(z, q) = -sum_k q_k log softmax(z . c / tau)_k

    scores: per view, [B, K] prototype scores (with gradient); codes: per assignment view, [B, K] Sinkhorn
    codes (no gradient), aligned with ``assign_views`` (indices into ``scores``). Mean over the batch.
    """
    if len(codes) != len(assign_views) or len(scores) < 2:
        raise ValueError("swav_loss needs >= 2 views and one code tensor per assignment view")
    total = scores[0].new_zeros((), dtype=torch.float32)
    for q, s_id in zip(codes, assign_views):
        sub = total.new_zeros(())
        for v, sc in enumerate(scores):
            if v == s_id:
                continue
            sub = sub - torch.sum(q.detach().float() * F.log_softmax(sc.float() / temperature, dim=1), dim=1).mean()
        total = total + sub / (len(scores) - 1)
    return total / len(assign_views)
