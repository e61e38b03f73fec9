"""PatchSearch (Tejankar et al., CVPR 2023, arXiv 2304.01482; UCDvision/PatchSearch), on selfsup's encoders.

PatchSearch finds patch-trigger poisons in an SSL pretraining set with the (possibly backdoored) encoder
itself, then removes them before retraining. The official pipeline (``patch_search_iterative_search.py``,
``patch_search_poison_classifier.py``) and what selfsup does at each step:

1. **Cluster** the encoder's features with k-means (official: faiss, 1000 clusters for ImageNet-100, about
   126 images per cluster). Here: the same faiss k-means (:func:`kmeans`) with ``clusters`` (default
   ``N // 126``, at least 2). The cluster "classifier" is the cosine similarity to each cluster's mean feature
   (``KMeansLinear``).
2. **Locate a candidate trigger** with Grad-CAM (``pytorch_grad_cam`` on the last conv stage, ``layer4``, for
   the image's top cluster logit), then cut the ``w x w`` window with the largest Grad-CAM sum
   (``extract_max_window``; official w = 60 px at 224 px; here ``round(S * 60 / 224)``). :func:`grad_cam`
   computes it on the last 4-D activation of the encoder (the last conv stage of CNN backbones).
   Deviation: a ViT has no such map; there the input-gradient magnitude of the same logit is used.
3. **Poison score** of an image: paste its window at a random location (uniform, ``randint(0, S - w)``) on
   the test images, and count how many more of them land in the image's cluster than before
   (``new - orig``). Test images: the ones closest to their centroid, ``n_test // clusters`` per cluster
   (official ``get_test_images``, 1000 images; default here 128 to keep CPU cost bounded).
4. **Iterative search** over clusters: each round scores ``samples_per_iteration`` (2) random unscored images
   of every candidate cluster, ranks clusters by their highest score, and drops the least poisonous
   ``remove_per_iteration`` (25%) of them (``--prune_clusters``), until no candidate image is left. Images
   never scored keep score 0.
5. **Poison classifier**: the windows of the ``topk_poisons`` (20) highest-scoring images are pasted (random
   size in [20, 80] px of 224 and a 10 px margin, scaled with S) on random training images after a
   random-resized crop (scale 0.2-1), then colour jitter (0.4, 0.4, 0.4, 0.1, p 0.8), grayscale (p 0.2) and a
   flip; these are class 1, unpasted images class 0 (each with probability 1/2). The training images are
   ranked from ``top_p`` (10%) down, leaving out the ``topk`` lowest; validation uses the ``topk`` highest
   (positive) and lowest (negative). An ensemble of ``model_count`` ResNets with one block per stage
   (``ResNet(BasicBlock, [1, 1, 1, 1])``, SGD lr 0.01, momentum 0.9, wd 1e-4, cosine) classifies every
   training image; the predicted poisons are removed. Deviation: ``model_count`` 2 and ``iterations`` 300 at
   batch 64 by default (``run_pipeline.sh``: 5 models, 2000 iterations at batch 32, stopped early when the
   validation F1 of the last 10 evaluations, every 20 iterations, is unchanged), to fit a CPU audit: about
   a third of the official samples per model; the official values are arguments.
6. **Retrain** on the images not flagged (:func:`selfsup.security.audit.defense_report`): the victim's own
   recipe and settings, the same number of epochs (so fewer steps on the smaller set, as the official
   retrain runs the same 200 epochs). Deviation: the official pipeline also turns on i-CutMix
   (``--icutmix --alpha 1.0``) for that retrain, a second defense; selfsup leaves it out, so the "after
   removal" numbers measure the filtering alone.

A frequency trigger (CTRL) has no patch to find, as PatchSearch itself notes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.security.adversarial import embed, encode, module_device, normalise, to_unit


def kmeans(features: torch.Tensor, k: int, seed: int = 0, iters: int = 20) -> torch.Tensor:
    """Cluster ids [N] of k-means on the L2-normalised features, ``iters`` Lloyd iterations on every point (the
    official ``faiss_kmeans``: ``faiss.Clustering`` with L2 on normalised features, ``niter`` 20,
    ``max_points_per_centroid`` 10^7). :func:`selfsup.eval.clustering.kmeans` runs it: faiss from 20,000
    points, scikit-learn's Lloyd (k-means++ seeding) below. Ids are renumbered 0..k'-1 over non-empty clusters."""
    from selfsup.eval.clustering import kmeans as _kmeans

    x = F.normalize(features.float(), dim=1).cpu().numpy()
    k = max(1, min(int(k), x.shape[0]))
    assign, _ = _kmeans(x, k, seed=seed, n_init=1, max_iter=iters, subsample=False)
    return torch.from_numpy(np.unique(assign, return_inverse=True)[1].reshape(-1).astype(np.int64))


def cluster_means(features: torch.Tensor, assign: torch.Tensor, k: int) -> torch.Tensor:
    """[k, D] L2-normalised mean feature of each cluster (the official ``KMeansLinear`` weights)."""
    f = features.float()
    sums = torch.zeros(k, f.shape[1]).index_add_(0, assign, f)
    return F.normalize(sums, dim=1)


def _last_spatial(encoder: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(features, the last 4-D activation of the forward pass, or None for token models)."""
    acts: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            acts.append(out)

    handles = [m.register_forward_hook(hook) for m in encoder.modules() if not list(m.children())]
    try:
        f = embed(x, encoder)
    finally:
        for h in handles:
            h.remove()
    last = acts[-1] if acts and acts[-1].shape[-1] > 1 and acts[-1].shape[-1] < x.shape[-1] else None
    return f, last


def grad_cam(encoder: nn.Module, x01: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Grad-CAM [B, S, S] in [0, 1] for each image's top cluster logit (cosine to the cluster means).

    Grad-CAM (Selvaraju et al. 2017): weights = spatial mean of d logit / d A over the last conv activation
    A, map = ReLU(sum_c weight_c A_c), bilinearly upsampled and min-max scaled per image (as
    ``pytorch_grad_cam``). Token models: |d logit / d x| summed over channels instead.
    """
    x = x01.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        f, act = _last_spatial(encoder, x)
        logits = F.normalize(f, dim=1) @ centres.to(f.device).T
        top = logits.max(1).values.sum()
        if act is not None:
            (g,) = torch.autograd.grad(top, act)
            cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True)).detach()
            cam = F.interpolate(cam.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        else:
            (g,) = torch.autograd.grad(top, x)
            cam = g.abs().sum(1).detach()
    lo = cam.flatten(1).min(1).values.view(-1, 1, 1)
    hi = cam.flatten(1).max(1).values.view(-1, 1, 1)
    return (cam - lo) / (hi - lo).clamp_min(1e-12)


def max_window(cam: torch.Tensor, w: int) -> torch.Tensor:
    """[B, 2] (top, left) of the ``w x w`` window with the largest sum of the map (``extract_max_window``)."""
    sums = F.conv2d(cam.unsqueeze(1), torch.ones(1, 1, w, w, device=cam.device))[:, 0]
    flat = sums.flatten(1).argmax(1)
    return torch.stack([flat // sums.shape[2], flat % sums.shape[2]], 1)


def _paste_random(x: torch.Tensor, patch: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Paste ``patch`` [3, w, w] at a uniformly random location of every image (official ``paste_patch``)."""
    out = x.clone()
    s, w = x.shape[-1], patch.shape[-1]
    ij = torch.randint(0, max(1, s - w), (x.shape[0], 2), generator=g)
    for m in range(x.shape[0]):
        a, b = int(ij[m, 0]), int(ij[m, 1])
        out[m, :, a : a + w, b : b + w] = patch
    return out


def _test_images(feats: torch.Tensor, assign: torch.Tensor, centres: torch.Tensor, n_test: int,
                 g: torch.Generator) -> np.ndarray:
    """Rows closest to their centroid, ``n_test // k`` per cluster (one each from random clusters if 0)."""
    k = centres.shape[0]
    sim = (F.normalize(feats.float(), dim=1) * centres[assign]).sum(1)
    per = n_test // k
    rows: list[int] = []
    if per > 0:
        for c in range(k):
            idx = torch.nonzero(assign == c).squeeze(1)
            rows += idx[torch.argsort(sim[idx], descending=True)[:per]].tolist()
    else:
        for c in torch.randperm(k, generator=g)[:n_test].tolist():
            idx = torch.nonzero(assign == c).squeeze(1)
            if idx.numel():
                rows.append(int(idx[torch.argmax(sim[idx])]))
    return np.array(sorted(rows), dtype=np.int64)


def patchsearch_scores(
    encoder: nn.Module, images: Any, *, image_size: int, clusters: int | None = None, window: int | None = None,
    n_test: int = 128, samples_per_iteration: int = 2, remove_per_iteration: float = 0.25, prune: bool = True,
    batch_size: int = 64, seed: int = 0,
) -> dict[str, Any]:
    """Steps 1-4: poison score per image from the iterative cluster search (unscored images keep 0)."""
    n = len(images)
    if n < 2:
        raise ConfigError("patchsearch needs at least 2 images")
    w = window or max(3, int(round(image_size * 60 / 224)))
    if w >= image_size:
        raise ConfigError(f"PatchSearch window {w} is not smaller than the images ({image_size} px)")
    g = torch.Generator().manual_seed(seed)
    dev = module_device(encoder)
    feats = encode(encoder, images, image_size)
    k = clusters or max(2, n // 126)
    assign = kmeans(feats, k, seed)
    k = int(assign.max()) + 1
    centres = cluster_means(feats, assign, k)
    test_rows = _test_images(feats, assign, centres, n_test, g)
    x_test = to_unit(np.asarray([np.asarray(images[i]) for i in test_rows]), image_size, dev)
    test_a = assign[test_rows]
    queues = {c: torch.nonzero(assign == c).squeeze(1)[torch.randperm(int((assign == c).sum()), generator=g)].tolist()
              for c in range(k)}
    scores = np.zeros(n, dtype=np.int64)
    scored = np.zeros(n, dtype=bool)
    boxes = np.zeros((n, 2), dtype=np.int64)
    candidates = list(range(k))
    was = encoder.training
    encoder.eval()
    rounds = 0
    try:
        while True:
            picked = []
            for c in candidates:
                for _ in range(min(len(queues[c]), samples_per_iteration)):
                    picked.append(queues[c].pop(0))
            if not picked:
                break
            rounds += 1
            for s in range(0, len(picked), batch_size):
                rows = picked[s : s + batch_size]
                x = to_unit(np.asarray([np.asarray(images[i]) for i in rows]), image_size, dev)
                tl = max_window(grad_cam(encoder, x, centres), w)
                with torch.no_grad():
                    for j, r in enumerate(rows):
                        t0, l0 = int(tl[j, 0]), int(tl[j, 1])
                        patch = x[j, :, t0 : t0 + w, l0 : l0 + w]
                        f = embed(_paste_random(x_test, patch, g), encoder)
                        new_a = (F.normalize(f, dim=1) @ centres.to(f.device).T).argmax(1).cpu()
                        c = int(assign[r])
                        scores[r] = int((new_a == c).sum()) - int((test_a == c).sum())
                        scored[r] = True
                        boxes[r] = (t0, l0)
            ranked = sorted(candidates, key=lambda c: -int(scores[(assign == c).numpy()].max()))
            if prune:
                rem = int(remove_per_iteration * len(ranked))
                candidates = ranked[: len(ranked) - rem] if rem else ranked
    finally:
        encoder.train(was)
    return {"method": "PatchSearch (Tejankar et al. CVPR 2023)", "scores": scores, "scored": scored, "boxes": boxes,
            "window": w, "clusters": assign.numpy(), "n_clusters": k, "n_test": len(test_rows), "rounds": rounds}


def _small_resnet() -> nn.Module:
    """torchvision ``ResNet(BasicBlock, [1, 1, 1, 1])`` with a 2-way head (the official poison classifier)."""
    from torchvision.models.resnet import BasicBlock, ResNet

    m = ResNet(block=BasicBlock, layers=[1, 1, 1, 1])
    m.fc = nn.Linear(512, 2)
    return m


def poison_classifier(
    images: Any, scores: np.ndarray, boxes: np.ndarray, *, image_size: int, window: int, topk: int = 20,
    top_p: float = 0.10, model_count: int = 2, iterations: int = 300, batch_size: int = 64, lr: float = 0.01,
    seed: int = 0,
) -> dict[str, Any]:
    """Step 5: train the ensemble on pasted top-k windows and return the predicted poisons [N] bool."""
    from selfsup.augment.views import ViewRecipe, ViewSpec, make_views, resized_crop, sample_boxes

    n = len(images)
    order = np.argsort(-scores, kind="stable")
    topk = max(1, min(topk, n // 4))
    pos, neg = order[:topk], order[-topk:]
    train_rows = order[int(top_p * n) : n - topk]
    if len(train_rows) < 2:
        raise ConfigError(f"PatchSearch's poison classifier needs more images than {n}")
    s = image_size
    u8 = torch.from_numpy(np.asarray([np.asarray(images[i]) for i in range(n)]))
    x_all = u8.permute(0, 3, 1, 2).float() / 255.0
    if x_all.shape[-1] != s or x_all.shape[-2] != s:
        x_all = F.interpolate(x_all, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    patches = [x_all[int(r), :, int(boxes[r, 0]) : int(boxes[r, 0]) + window,
                     int(boxes[r, 1]) : int(boxes[r, 1]) + window] for r in pos]
    g = torch.Generator().manual_seed(seed)
    lo_sz, hi_sz, margin = max(2, round(s * 20 / 224)), max(3, round(s * 80 / 224)), round(s * 10 / 224)
    colour = ViewRecipe([ViewSpec(size=s, scale=(1.0, 1.0), ratio=(1.0, 1.0), brightness=0.4, contrast=0.4,
                                  saturation=0.4, hue=0.1)])

    def batch(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        bx = sample_boxes(torch.rand(len(rows), 40, generator=g), s, s, (0.2, 1.0), (3 / 4, 4 / 3))
        x = resized_crop(x_all[torch.as_tensor(rows)], bx, None, s)
        y = (torch.rand(len(rows), generator=g) < 0.5).long()
        for i in torch.nonzero(y).squeeze(1).tolist():
            p = patches[int(torch.randint(len(patches), (1,), generator=g))]
            sz = int(torch.randint(lo_sz, hi_sz, (1,), generator=g))
            sz = min(sz, s - 2 * margin - 1)
            p = F.interpolate(p[None], size=(sz, sz), mode="bilinear", align_corners=False)[0]
            a, b = (int(v) for v in torch.randint(margin, max(margin + 1, s - sz - margin), (2,), generator=g))
            x[i, :, a : a + sz, b : b + sz] = p
        views, _ = make_views(x.clamp(0, 1), colour, g, channels_last=False, backend="torch")
        return views[0], y

    models = []
    for _ in range(model_count):
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=g)))
        model = _small_resnet()
        opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
        model.train()
        for _it in range(iterations):
            rows = train_rows[torch.randint(len(train_rows), (min(batch_size, len(train_rows)),), generator=g).numpy()]
            xb, yb = batch(rows)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        models.append(model)

    def predict(x01: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            xn = normalise(x01)
            return torch.stack([F.softmax(m(xn), 1) for m in models]).mean(0).argmax(1)

    pred = torch.cat([predict(x_all[i : i + 256]) for i in range(0, n, 256)]).numpy().astype(bool)
    val = torch.cat([predict(x_all[torch.as_tensor(pos)]), predict(x_all[torch.as_tensor(neg)])]).numpy()
    val_y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    return {"flagged": pred, "val_accuracy": float(100.0 * np.mean(val == val_y)), "topk": int(topk),
            "model_count": model_count, "iterations": iterations}


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


__all__ = [
    "cluster_means",
    "flag_top",
    "grad_cam",
    "kmeans",
    "max_window",
    "patchsearch_scores",
    "poison_classifier",
    "precision_recall",
]
