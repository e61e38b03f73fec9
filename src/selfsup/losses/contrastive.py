"""Contrastive losses (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed


def nt_xent_loss(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, *, decoupled: bool = False
) -> torch.Tensor:
    """NT-Xent, the SimCLR loss (Chen et al. 2020, arXiv 2002.05709, Eq. 1 and Alg. 1).

    For a positive pair (i, j) among the 2N augmented samples:

        l(i, j) = -log  exp(sim(z_i, z_j) / tau) / sum_{k != i} exp(sim(z_i, z_k) / tau)

    with sim the cosine similarity; the loss is the mean of l over all 2N anchors (both directions).
    ``decoupled=True`` gives the DCL loss (Yeh et al. 2021, arXiv 2110.06848, Eq. 6): the positive is also
    left out of the denominator, l(i, j) = -sim(z_i, z_j) / tau + log sum_{k != i, j} exp(sim(z_i, z_k) / tau),
    which removes the negative-positive coupling that slows small-batch training.

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
    if not decoupled:
        return F.cross_entropy(logits, pos_idx)
    logits = logits.float()  # under autocast the matmul gave bf16; logsumexp is not autocast to fp32
    pos = logits[rows, pos_idx]
    logits[rows, pos_idx] = float("-inf")  # DCL: nor is the positive in the denominator
    return (torch.logsumexp(logits, dim=1) - pos).mean()


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


def moco_queue_loss(
    query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MoCo InfoNCE with a queue of negatives (He et al. 2019, arXiv 1911.05722, Eq. 1 and Alg. 1;
    MoCo v2, Chen et al. 2020, arXiv 2003.04297, Sec. 2).

        L_q = -log exp(q . k+ / tau) / (exp(q . k+ / tau) + sum_{k- in queue} exp(q . k- / tau))

    query: [B, D] queries (with gradient); key: [B, D] keys from the momentum encoder (gradient stopped);
    queue: [K, D] negative keys (gradient stopped). Cosine similarities (all three are L2-normalised
    here). Each process uses its own queries and positive keys; the queue holds keys gathered from every
    process, so it is identical everywhere. Returns the mean over the B queries (float32).
    """
    q = F.normalize(query.float(), dim=1)
    k = F.normalize(key.detach().float(), dim=1)
    neg = F.normalize(queue.detach().float(), dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    l_neg = q @ neg.T  # [B, K]
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)  # the positive is column 0
    return F.cross_entropy(logits, labels)


def mocov3_loss(
    q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float
) -> torch.Tensor:
    """MoCo v3 symmetrised loss (Chen, Xie, He 2021, arXiv 2104.02057, Alg. 1):

        L = ctr(q1, k2) + ctr(q2, k1),   ctr(q, k) = 2 tau * InfoNCE(q, k; in-batch keys)

    The factor 2 tau (Alg. 1, "loss scaled by 2 tau") makes the gradient scale insensitive to tau.
    q1, q2: [B, D] predictions of the two views; k1, k2: [B, D] momentum-encoder projections (gradient
    stopped). Keys are gathered from every process (:func:`info_nce_loss`).
    """
    return (
        info_nce_loss(q1, k2.detach(), temperature) + info_nce_loss(q2, k1.detach(), temperature)
    ) * (2 * temperature)


def nearest_neighbour(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """NNCLR's NN(z, Q) = argmax_{q in Q} <z, q> of L2-normalised vectors (Dwibedi et al. 2021,
    arXiv 2104.14548, Eq. 2). z: [B, D]; support: [M, D]. Returns the rows of ``support`` [B, D]
    (normalised, no gradient)."""
    s = F.normalize(support.detach().float(), dim=1)
    zn = F.normalize(z.detach().float(), dim=1)
    return s[(zn @ s.T).argmax(dim=1)]


def nnclr_loss(nn_z: torch.Tensor, p: torch.Tensor, temperature: float) -> torch.Tensor:
    """NNCLR loss (Dwibedi et al. 2021, arXiv 2104.14548, Eq. 2, with the prediction head of Sec. 3.2):

        L_i = -log exp(NN(z_i, Q) . p_i+ / tau) / sum_k exp(NN(z_i, Q) . p_k+ / tau)

    nn_z: [B, D] nearest neighbours of view-1 projections in the support set (no gradient);
    p: [B, D] predictions of view 2 (with gradient); the denominator runs over the global batch of p.
    This is :func:`info_nce_loss` with query = NN(z) and key = p. The paper symmetrises over the views.
    """
    return info_nce_loss(nn_z.detach(), p, temperature)


@torch.no_grad()
def enqueue(
    queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor, filled: torch.Tensor | None = None
) -> None:
    """FIFO ring-buffer update in place (MoCo's dequeue-and-enqueue, NNCLR's support set, SwAV's queue).

    queue: [K, D] buffer; ptr: [1] int64 buffer, index of the oldest entry (the next one overwritten);
    keys: [n, D] new entries (oldest first); filled: optional [1] int64 buffer counting valid entries
    (saturates at K). Rows ptr, ptr+1, ... (mod K) are replaced and ptr advances by n mod K. When n > K only
    the last K keys are kept. No host synchronisation (works on CUDA without a .item()).
    """
    k = queue.shape[0]
    keys = keys.detach().to(queue.dtype)
    if keys.shape[0] > k:
        # only the newest K survive; writing them from ptr + (n - K) keeps the pointer arithmetic exact
        ptr.add_(keys.shape[0] - k).remainder_(k)
        if filled is not None:
            filled.fill_(k)
        keys = keys[-k:]
    n = keys.shape[0]
    idx = (ptr + torch.arange(n, device=queue.device)).remainder(k)
    queue.index_copy_(0, idx, keys)
    ptr.add_(n).remainder_(k)
    if filled is not None:
        filled.add_(n).clamp_(max=k)
