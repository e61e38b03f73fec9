"""Attack metrics: attack success rate (ASR), clean accuracy (CA), fooling rate and retrieval recall@1.

- CA  = % of untouched test images classified correctly by the downstream linear head.
- ASR = % of triggered test images FROM NON-TARGET CLASSES classified as the target class (target-class
  images are excluded: classifying them as the target is not an attack success).
- fooling rate = % of test images whose predicted class changes under a perturbation (AdvEncoder, Zhou et
  al. ICCV 2023, arXiv 2308.12661, Sec. 5).
- recall@1 = % of queries whose nearest gallery neighbour (cosine) has the query's label.

:func:`fit_linear_head` is a small multinomial logistic regression (L-BFGS on standardised features) that
returns a predictor, because the attacks need per-image predictions, not only an accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def clean_accuracy(pred: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> float:
    p, y = _np(pred), _np(labels)
    if p.shape != y.shape or p.size == 0:
        raise ConfigError(f"clean_accuracy: need equally long non-empty predictions and labels, got {p.shape}, {y.shape}")
    return float(100.0 * np.mean(p == y))


def attack_success_rate(pred: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, target: int) -> float:
    """% of non-target-class images predicted as ``target`` (``pred`` on triggered images, true ``labels``)."""
    p, y = _np(pred), _np(labels)
    if p.shape != y.shape:
        raise ConfigError(f"attack_success_rate: predictions {p.shape} and labels {y.shape} differ in shape")
    keep = y != target
    if not keep.any():
        raise ConfigError("attack_success_rate: every test image is from the target class; ASR is undefined")
    return float(100.0 * np.mean(p[keep] == target))


def fooling_rate(pred_clean: torch.Tensor | np.ndarray, pred_adv: torch.Tensor | np.ndarray) -> float:
    a, b = _np(pred_clean), _np(pred_adv)
    return float(100.0 * np.mean(a != b))


def recall_at_1(gallery: torch.Tensor, gallery_y: torch.Tensor, query: torch.Tensor, query_y: torch.Tensor) -> float:
    g = F.normalize(gallery.float(), dim=1)
    q = F.normalize(query.float(), dim=1)
    nn_idx = torch.cat([(q[s : s + 1024] @ g.T).argmax(1) for s in range(0, q.shape[0], 1024)])
    return float(100.0 * (gallery_y[nn_idx] == query_y).float().mean())


@dataclass
class LinearHead:
    """A fitted linear classifier on standardised features: ``logits(f) = ((f - mean) / std) @ weight + bias``."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return ((f.float() - self.mean.to(f.device)) / self.std.to(f.device)) @ self.weight.to(f.device) + self.bias.to(f.device)

    def predict(self, f: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.logits(f).argmax(1)


def fit_linear_head(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, weight_decay: float = 1e-4, iters: int = 100,
) -> LinearHead:
    """Multinomial logistic regression on standardised features (L-BFGS, deterministic)."""
    x = features.detach().float().cpu()
    y = torch.as_tensor(labels).long().cpu()
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ConfigError(f"fit_linear_head: {x.shape[0]} features vs {y.shape[0]} labels")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mean) / std
    w = torch.zeros(x.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return LinearHead(mean, std, w.detach(), b.detach())


__all__ = ["LinearHead", "attack_success_rate", "clean_accuracy", "fit_linear_head", "fooling_rate", "recall_at_1"]
