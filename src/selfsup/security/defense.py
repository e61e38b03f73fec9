"""PatchSearch-style poison detection (Tejankar et al., CVPR 2023, arXiv 2304.01482), simplified.

PatchSearch (Sec. 3) finds patch-trigger poisons in an SSL pretraining set with the (possibly backdoored)
encoder itself: (1) cluster the embeddings with k-means, (2) fit a linear classifier on the cluster ids,
(3) locate a candidate trigger in each image with Grad-CAM and cut it out as a ``w x w`` patch, (4) paste the
candidate patch onto held-out images: a real trigger flips many of them to its own cluster; the number of
flips is the image's *poison score*, (5) remove the highest-scoring images and retrain.

What we do differently (stated so results are read correctly):
- the saliency map is the input-gradient magnitude of the image's own cluster logit (summed over channels and
  box-filtered to ``w x w``) instead of Grad-CAM on the last conv layer: it needs no layer hooks and works for
  every backbone;
- every image is scored (PatchSearch scores a sample of each cluster and searches clusters iteratively, then
  trains a poison classifier); on small data scoring all is affordable;
- the top ``flag_fraction`` of scores is flagged (PatchSearch removes a fixed top share as well).
- window ``w = round(S * 60 / 224)`` (PatchSearch uses 60 px on 224 px images; 9 px on 32 px).
It targets patch triggers; a frequency trigger (CTRL) has no patch to find, as PatchSearch itself notes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.security.adversarial import embed, encode, module_device, to_unit
from selfsup.security.metrics import fit_linear_head


def kmeans(features: torch.Tensor, k: int, seed: int = 0, iters: int = 50) -> torch.Tensor:
    """Cosine k-means (k-means++ init) on L2-normalised features; returns cluster ids [N]."""
    x = F.normalize(features.float(), dim=1)
    n = x.shape[0]
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    centres = [x[int(torch.randint(n, (1,), generator=g))]]
    for _ in range(1, k):
        d = (1 - x @ torch.stack(centres).T).min(1).values.clamp_min(0)
        p = d / d.sum() if float(d.sum()) > 0 else torch.full((n,), 1.0 / n)
        centres.append(x[int(torch.multinomial(p, 1, generator=g))])
    c = torch.stack(centres)
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        assign = (x @ c.T).argmax(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        empty = new.norm(dim=1) == 0
        new[empty] = c[empty]
        new = F.normalize(new, dim=1)
        if torch.allclose(new, c):
            break
        c = new
    return assign


def patchsearch_scores(
    encoder: nn.Module, images: np.ndarray, *, image_size: int, clusters: int = 10, window: int | None = None,
    n_test: int = 32, batch_size: int = 64, seed: int = 0,
) -> dict[str, Any]:
    """Poison score per image (number of held-out images flipped to its cluster by its candidate patch)."""
    n = len(images)
    if n < 2:
        raise ConfigError("patchsearch needs at least 2 images")
    w = window or max(3, int(round(image_size * 60 / 224)))
    if w > image_size:
        raise ConfigError(f"--window {w} is larger than the images ({image_size} px)")
    feats = encode(encoder, images, image_size)
    assign = kmeans(feats, clusters, seed)
    k = int(assign.max()) + 1
    head = fit_linear_head(feats, assign, k)
    dev = module_device(encoder)
    was = encoder.training
    encoder.eval()
    g = torch.Generator().manual_seed(seed)
    test_idx = torch.randperm(n, generator=g)[: min(n_test, n)].sort().values.numpy()
    x_test = to_unit(images[test_idx], image_size, dev)
    scores = np.zeros(n, dtype=np.int64)
    boxes = np.zeros((n, 2), dtype=np.int64)
    try:
        for s in range(0, n, batch_size):
            x = to_unit(images[s : s + batch_size], image_size, dev).requires_grad_(True)
            own = assign[s : s + batch_size].to(dev)
            with torch.enable_grad():
                logit = head.logits(embed(x, encoder)).gather(1, own[:, None]).sum()
                (grad,) = torch.autograd.grad(logit, x)
            sal = F.avg_pool2d(grad.abs().sum(1, keepdim=True), w, stride=1)[:, 0]  # [B, S-w+1, S-w+1]
            flat = sal.flatten(1).argmax(1)
            tops, lefts = flat // sal.shape[2], flat % sal.shape[2]
            with torch.no_grad():
                base_pred = head.logits(embed(x_test, encoder)).argmax(1)
                for j in range(x.shape[0]):
                    t0, l0 = int(tops[j]), int(lefts[j])
                    patch = x[j, :, t0 : t0 + w, l0 : l0 + w].detach()
                    pt = torch.randint(0, image_size - w + 1, (len(test_idx), 2), generator=g)
                    xt = x_test.clone()
                    for m in range(len(test_idx)):
                        a, b = int(pt[m, 0]), int(pt[m, 1])
                        xt[m, :, a : a + w, b : b + w] = patch
                    pred = head.logits(embed(xt, encoder)).argmax(1)
                    c = own[j]
                    scores[s + j] = int(((pred == c) & (base_pred != c)).sum())
                    boxes[s + j] = (t0, l0)
    finally:
        encoder.train(was)
    return {"method": "patchsearch-lite (Tejankar et al. CVPR 2023)", "scores": scores, "boxes": boxes, "window": w,
            "clusters": assign.numpy(), "n_test": len(test_idx)}


def flag_top(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ``ceil(fraction * N)`` highest scores (ties broken by index, deterministic)."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"--flag-fraction must be in (0, 1), got {fraction}")
    n = len(scores)
    m = max(1, int(np.ceil(fraction * n)))
    order = np.lexsort((np.arange(n), -np.asarray(scores)))
    mask = np.zeros(n, dtype=bool)
    mask[order[:m]] = True
    return mask


def precision_recall(flagged: np.ndarray, is_poison: np.ndarray) -> dict[str, float]:
    tp = int(np.sum(flagged & is_poison))
    p = tp / max(1, int(flagged.sum()))
    r = tp / max(1, int(is_poison.sum()))
    return {"precision": 100.0 * p, "recall": 100.0 * r, "flagged": int(flagged.sum()), "true_positives": tp}


__all__ = ["flag_top", "kmeans", "patchsearch_scores", "precision_recall"]
