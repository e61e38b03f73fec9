"""Contrastive losses (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent, the SimCLR loss (Chen et al. 2020, arXiv 2002.05709, Eq. 1 and Alg. 1).

    For a positive pair (i, j) among the 2N augmented samples:

        l(i, j) = -log  exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau)

    with sim the cosine similarity; the loss is the mean of l over all 2N anchors (both directions).

    z1, z2: [B, D] projections of the two views of the same B images (row b of z1 pairs with row b
    of z2). When distributed, negatives come from the global batch of all processes (autograd-aware
    gather), and each process averages over its own 2B anchors; DDP's gradient averaging then gives
    exactly the gradient of the single-process loss on the global batch.
    Returns a scalar.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two [B, D] tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    b = z1.shape[0]
    k1, k2 = distributed.gather(z1), distributed.gather(z2)
    total = k1.shape[0]  # global batch size W * B
    offset = distributed.rank() * b
    queries = torch.cat([z1, z2])  # [2B, D]
    keys = torch.cat([k1, k2])  # [2WB, D]
    logits = queries @ keys.T / temperature  # [2B, 2WB]
    local = torch.arange(b, device=z1.device)
    self_idx = torch.cat([offset + local, total + offset + local])
    pos_idx = torch.cat([total + offset + local, offset + local])
    rows = torch.arange(2 * b, device=z1.device)
    logits[rows, self_idx] = float("-inf")  # an anchor is never its own negative
    return F.cross_entropy(logits, pos_idx)


def info_nce_loss(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row b of ``query`` matches row b of the (global) ``key`` set.

    L = -mean_b log exp(q_b . k_b / tau) / sum_j exp(q_b . k_j / tau), cosine similarities.
    Used by MoCo v3 (Chen, Xie, He 2021, Alg. 1), which multiplies it by 2 tau. Shapes [B, D].
    """
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(key.float(), dim=1)
    k_all = distributed.gather(k)
    logits = q @ k_all.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + distributed.rank() * q.shape[0]
    return F.cross_entropy(logits, labels)
