"""Representation diagnostics that need no labels: RankMe, alignment, uniformity, feature spread.

- RankMe (Garrido et al. 2023, arXiv 2210.02885, Eq. 1): with singular values sigma_k of the embedding
  matrix Z [N, D], ``p_k = sigma_k / ||sigma||_1 + eps`` (eps = 1e-7) and
  ``RankMe(Z) = exp(-sum_k p_k log p_k)``: the effective rank, between 1 (collapsed onto a line) and
  min(N, D). Computed on the raw (unnormalised) features, as in the paper.
- Alignment (Wang & Isola 2020, arXiv 2005.10242, Eq. 2): ``E_{(x,y) ~ positive pairs} ||f(x) - f(y)||_2^alpha``
  with L2-normalised f and alpha = 2. Positive pairs are two augmented views of the same test image
  (:func:`selfsup.augment.views.make_views` with the SimCLR recipe); lower is better (0 = invariant).
- Uniformity (ibid., Eq. 3): ``log E_{x != y} exp(-t ||f(x) - f(y)||_2^2)`` over all distinct pairs of
  normalised features, t = 2; lower is more uniform on the sphere (about -4 for well-spread 128-D features).
- Feature std: per-dimension std of the L2-normalised features, averaged and multiplied by sqrt(D)
  (~1 for features spread over the sphere, ~0 for collapse), the statistic the training loop logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import DataError
from selfsup.eval.features import as_tensor

RANKME_EPS = 1e-7


def rankme(features: Any, eps: float = RANKME_EPS) -> float:
    """Effective rank of ``features`` [N, D] (Garrido et al. 2023, Eq. 1)."""
    z = as_tensor(features, "features").double()
    if z.ndim != 2 or z.shape[0] < 1:
        raise DataError(f"RankMe needs a non-empty [N, D] matrix, got {tuple(z.shape)}")
    s = torch.linalg.svdvals(z)
    p = s / s.sum().clamp_min(1e-300) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def alignment(x: Any, y: Any, alpha: float = 2.0) -> float:
    """``mean_i ||x_i - y_i||^alpha`` of L2-normalised positive pairs (Wang & Isola 2020, Eq. 2)."""
    a = F.normalize(as_tensor(x, "x").double(), dim=1)
    b = F.normalize(as_tensor(y, "y").double(), dim=1)
    if a.shape != b.shape:
        raise DataError(f"alignment needs paired features of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(x: Any, t: float = 2.0) -> float:
    """``log mean_{i<j} exp(-t ||x_i - x_j||^2)`` of L2-normalised features (Wang & Isola 2020, Eq. 3).

    Uses ``||a - b||^2 = 2 - 2 a.b`` on the unit sphere and a log-sum-exp over the i<j pairs.
    """
    z = F.normalize(as_tensor(x, "x").double(), dim=1)
    n = z.shape[0]
    if n < 2:
        raise DataError("uniformity needs at least 2 features")
    sq = (2.0 - 2.0 * (z @ z.t())).clamp_min(0.0)
    iu = torch.triu_indices(n, n, offset=1)
    vals = -t * sq[iu[0], iu[1]]
    return float(torch.logsumexp(vals, 0) - math.log(vals.numel()))


def feature_std(features: Any) -> float:
    """Mean per-dimension std of L2-normalised features, times sqrt(D) (1 = spread, 0 = collapsed)."""
    z = F.normalize(as_tensor(features, "features").float(), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def diagnostics_from_features(features: Any, view1: Any | None = None, view2: Any | None = None, *,
                              alpha: float = 2.0, t: float = 2.0, max_points: int = 2000, seed: int = 0
                              ) -> dict[str, Any]:
    """All diagnostics from precomputed features (alignment only when the two views' features are given).

    Uniformity is O(N^2): at most ``max_points`` rows (seeded subset) are used for it and for RankMe.
    """
    z = as_tensor(features, "features").float()
    n = z.shape[0]
    idx = torch.from_numpy(np.random.default_rng(seed).permutation(n)[:max_points]) if n > max_points else None
    zs = z[idx] if idx is not None else z
    out: dict[str, Any] = {"rankme": rankme(zs), "uniformity": uniformity(zs, t=t), "feature_std": feature_std(z),
                           "dim": int(z.shape[1]), "n": int(zs.shape[0]), "alpha": float(alpha), "t": float(t)}
    if view1 is not None and view2 is not None:
        out["alignment"] = alignment(view1, view2, alpha=alpha)
    return out


@torch.no_grad()
def view_pair_features(
    encoder: nn.Module,
    images: Any,
    *,
    image_size: int,
    batch_size: int = 256,
    seed: int = 0,
    max_images: int = 2000,
    recipe: Any | None = None,
    grayscale_input: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of two augmented views of (up to ``max_images`` of) ``images`` uint8 [N, H, W, 3].

    Views come from :func:`selfsup.augment.views.make_views` with ``recipe`` (default: the SimCLR recipe at
    ``image_size``), drawn from a generator seeded with ``seed``.
    """
    from selfsup.augment.recipes import simclr_recipe
    from selfsup.augment.views import make_views
    from selfsup.runtime import module_device

    recipe = recipe or simclr_recipe(image_size, grayscale_input=grayscale_input)
    n = min(int(images.shape[0]), int(max_images))
    device = module_device(encoder)
    gen = torch.Generator().manual_seed(int(seed))
    was = encoder.training
    encoder.eval()
    a, b = [], []
    try:
        for s in range(0, n, batch_size):
            x = as_tensor(images[s : min(s + batch_size, n)], "images").to(device)  # copies read-only memmap slices
            views, _ = make_views(x, recipe, gen)
            a.append(encoder(views[0]).float().reshape(x.shape[0], -1).cpu())
            b.append(encoder(views[1]).float().reshape(x.shape[0], -1).cpu())
    finally:
        encoder.train(was)
    return torch.cat(a), torch.cat(b)


def representation_diagnostics(
    encoder: nn.Module,
    images: Any,
    *,
    image_size: int,
    features: torch.Tensor | None = None,
    extract: Callable[..., torch.Tensor] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    max_points: int = 2000,
    alpha: float = 2.0,
    t: float = 2.0,
) -> dict[str, Any]:
    """RankMe, uniformity and feature std of the encoder's features on ``images`` and alignment of two
    augmented views of each image. ``features`` (the clean features, if already computed) avoids a pass."""
    from selfsup.eval.features import extract_features

    if features is None:
        features = (extract or extract_features)(encoder, images, image_size=image_size, batch_size=batch_size)
    v1, v2 = view_pair_features(encoder, images, image_size=image_size, batch_size=batch_size, seed=seed,
                                max_images=max_points)
    out = diagnostics_from_features(features, v1, v2, alpha=alpha, t=t, max_points=max_points, seed=seed)
    out.update({"views": "simclr_recipe", "n_pairs": int(v1.shape[0]), "seed": int(seed)})
    return out
