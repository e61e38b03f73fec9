"""Contrastive losses (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import distributed


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


def multi_view_nt_xent_loss(
    views: list[torch.Tensor], temperature: float = 0.5, *, decoupled: bool = False
) -> torch.Tensor:
    """NT-Xent over V >= 2 views of the same B images (multi-crop SimCLR).

    Every ordered pair of different views (v, u) of image i is a positive pair; the negatives of an anchor
    are the views of all OTHER images:

        l(v_i, u_i) = -log  e^{s(v_i, u_i)} / (e^{s(v_i, u_i)} + sum_{w, j != i} e^{s(v_i, w_j)})

    with s the cosine similarity over tau; the loss is the mean over the V (V - 1) B terms. The other views of
    the same image are neither positives nor negatives of a term, as in VISSL's multi-crop SimCLR loss (the
    SwAV authors' library; SwAV, Caron et al. 2020, arXiv 2006.09882, Sec. 3.2 / Table 4: multi-crop raises
    SimCLR's ImageNet accuracy). For V = 2 this is exactly :func:`nt_xent_loss`. ``decoupled=True`` drops the
    positive from the denominator (DCL), as in :func:`nt_xent_loss`.

    views: V tensors [B, D], row b of each from image b. Distributed: keys come from the global batch of all
    processes (autograd-aware gather) and each process averages over its own V (V - 1) B terms, like
    :func:`nt_xent_loss`. Computed as softplus(lse_neg - s_pos) (= -s + log(e^s + e^lse)), which is stable.
    """
    if len(views) < 2:
        raise ValueError(f"expected at least 2 views, got {len(views)}")
    shape = views[0].shape
    if len(shape) != 2 or any(v.shape != shape for v in views):
        raise ValueError(f"expected V tensors [B, D] of equal shape, got {[tuple(v.shape) for v in views]}")
    n_views, b = len(views), shape[0]
    zs = [F.normalize(v.float(), dim=1) for v in views]
    keys = torch.cat([distributed.gather(z) for z in zs])  # [V * W * B, D], view-major
    total = keys.shape[0] // n_views  # global batch size W * B
    queries = torch.cat(zs)  # [V * B, D]
    logits = queries @ keys.T / temperature  # [V * B, V * W * B]
    image = distributed.rank() * b + torch.arange(b, device=queries.device)  # global index of each local image
    same = torch.stack([u * total + image for u in range(n_views)], 1).repeat(n_views, 1)  # [V * B, V] columns
    rows = torch.arange(n_views * b, device=queries.device)[:, None]
    pos = logits[rows, same]  # [V * B, V]: similarity to each view of the same image (own view included)
    own = torch.arange(n_views, device=queries.device).repeat_interleave(b)  # the anchor's own view
    keep = torch.ones_like(pos, dtype=torch.bool)
    keep[torch.arange(n_views * b), own] = False
    pos = pos[keep].reshape(n_views * b, n_views - 1)  # the V - 1 positives of each anchor
    neg = logits.float().index_put((rows.expand_as(same), same), torch.tensor(float("-inf"), device=logits.device))
    lse = torch.logsumexp(neg, dim=1, keepdim=True)  # [V * B, 1] over the other images' views
    pos = pos.float()
    terms = lse - pos if decoupled else F.softplus(lse - pos)
    return terms.mean()


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
