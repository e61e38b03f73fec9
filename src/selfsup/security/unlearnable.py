"""Unlearnable Clusters (Zhang et al., CVPR 2023, arXiv 2301.01217): label-agnostic data protection.

UC (Sec. 4) (1) embeds the data with a surrogate encoder and splits it into ``p`` clusters with k-means;
(2) gives every cluster ONE perturbation ``delta_i`` (bounded by ``eps`` in L-inf) that disrupts the
uniformity and discrepancy of the cluster in the surrogate's feature space; (3) publishes ``x + delta_i``.
A shared pattern per cluster is an easy shortcut feature for whoever trains on the protected data.

Our objective for ``delta_i`` (PGD, projected to the budget; the paper trains one generator per cluster, we
optimise the perturbation directly, which has the same expressiveness for a fixed dataset):

    min  mean_{x in C_i} [ cos(f(x + delta_i), mu_i) - cos(f(x + delta_i), mu_{pi(i)}) ]

with ``mu`` the clean cluster centroids and ``pi`` a fixed cyclic shift of the cluster ids: each cluster is
pushed off its own centroid (uniformity) and towards another cluster's (discrepancy). Protected images are
rounded to uint8 and clipped so that ``|protected - clean| <= floor(eps * 255)`` per pixel (8 for 8/255).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.models.state import frozen
from selfsup.security.adversarial import embed, encode, module_device, to_unit
from selfsup.security.defense import kmeans


def budget_pixels(eps: float) -> int:
    """The integer pixel budget of ``eps`` (pixel units): floor(eps * 255 + 1e-6)."""
    return int(np.floor(eps * 255 + 1e-6))


def apply_budget(clean: np.ndarray, perturbed01: np.ndarray, eps: float) -> np.ndarray:
    """Round to uint8 and clip to the L-inf budget around ``clean`` (both [N, S, S, 3])."""
    b = budget_pixels(eps)
    x = np.rint(perturbed01 * 255.0)
    c = clean.astype(np.float64)
    return np.clip(np.clip(x, c - b, c + b), 0, 255).astype(np.uint8)


def unlearnable_clusters(
    surrogate: nn.Module, images: np.ndarray, *, image_size: int, clusters: int = 10, eps: float = 8 / 255,
    steps: int = 30, batch_size: int = 128, seed: int = 0,
) -> dict[str, Any]:
    """Protect uint8 images [N, S, S, 3] (S must equal ``image_size``); returns protected images and clusters."""
    if not 0.0 < eps < 1.0 or budget_pixels(eps) < 1:
        raise ConfigError(f"--eps must be in [1/255, 1), got {eps}")
    if images.shape[1] != image_size:
        raise ConfigError(f"images are {images.shape[1]} px but image_size is {image_size}; open the data at image_size")
    if clusters < 2:
        raise ConfigError(f"--clusters must be >= 2, got {clusters}")
    feats = encode(surrogate, images, image_size)
    assign = kmeans(feats, clusters, seed)
    k = int(assign.max()) + 1
    mu = F.normalize(torch.zeros(k, feats.shape[1]).index_add_(0, assign, F.normalize(feats, dim=1)), dim=1)
    shift = torch.roll(torch.arange(k), 1)
    dev = module_device(surrogate)
    g = torch.Generator().manual_seed(seed)
    alpha = eps / 4
    deltas = torch.zeros(k, 3, image_size, image_size)
    with frozen(surrogate):
        for c in range(k):
            rows = torch.nonzero(assign == c).squeeze(1)
            if rows.numel() == 0:
                continue
            d = ((torch.rand(1, 3, image_size, image_size, generator=g) * 2 - 1) * eps).to(dev)
            own, other = mu[c].to(dev), mu[shift[c]].to(dev)
            for _ in range(steps):
                pick = rows[torch.randperm(rows.numel(), generator=g)[:batch_size]].sort().values.numpy()
                x = to_unit(images[pick], image_size, dev)
                dd = d.clone().requires_grad_(True)
                with torch.enable_grad():
                    z = F.normalize(embed((x + dd).clamp(0, 1), surrogate), dim=1)
                    loss = (z @ own).mean() - (z @ other).mean()
                    (grad,) = torch.autograd.grad(loss, dd)
                d = (d - alpha * grad.sign()).clamp(-eps, eps)
            deltas[c] = d[0].cpu()
    x01 = images.astype(np.float64) / 255.0 + deltas.permute(0, 2, 3, 1).numpy()[assign.numpy()]
    protected = apply_budget(np.asarray(images), x01, eps)
    return {"images": protected, "clusters": assign.numpy(), "deltas": deltas, "eps": eps,
            "budget_pixels": budget_pixels(eps)}


__all__ = ["apply_budget", "budget_pixels", "unlearnable_clusters"]
