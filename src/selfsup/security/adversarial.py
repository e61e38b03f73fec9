"""AdvEncoder-style universal adversarial perturbation against a frozen encoder.

AdvEncoder (Zhou et al., ICCV 2023, arXiv 2308.12661) attacks a pretrained encoder alone, without any
downstream task: one universal perturbation (or patch) is optimised so that perturbed images' embeddings
move away from the clean ones, which then fools downstream classifiers the attacker never saw. AdvEncoder
trains a generator with a high-frequency filter; here the universal perturbation ``delta`` [3, S, S] is
optimised directly by projected signed-gradient descent (PGD, Madry et al. 2018) on

    L(delta) = mean_x cos(f(clip(x + delta, 0, 1)), f(x))        (minimised),   ||delta||_inf <= eps,

with ``eps = 8/255`` by default (the budget AdvEncoder reports for CIFAR-10). Pixels live in [0, 1] before
the ImageNet normalisation that :func:`selfsup.augment.views.eval_transform` applies, so the budget is in pixel units.

Reported (:func:`evaluate_perturbation`): the fooling rate of linear heads fitted on clean features of
labelled data the attacker never used, and the drop in retrieval recall@1 (gallery = clean train features).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.augment.views import IMAGENET_MEAN, IMAGENET_STD
from selfsup.errors import ConfigError
from selfsup.eval.features import as_tensor  # copies read-only (cached) arrays
from selfsup.models.state import frozen
from selfsup.runtime import module_device  # also imported from here by defense and unlearnable


def to_unit(images: np.ndarray | torch.Tensor, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, image_size, image_size] in [0, 1] (antialiased resize if needed)."""
    x = torch.from_numpy(np.array(images, copy=True)) if isinstance(images, np.ndarray) else images
    x = x.to(device)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ConfigError(f"expected uint8 images [N, H, W, 3], got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
    return x


def normalise(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x01.device).view(1, 3, 1, 1)
    return (x01 - mean) / std


def embed(x01: torch.Tensor, encoder: nn.Module) -> torch.Tensor:
    f = encoder(normalise(x01))
    if isinstance(f, (tuple, list)):
        f = f[0]
    return f.reshape(f.shape[0], -1).float()


@torch.no_grad()
def encode(
    encoder: nn.Module, images: np.ndarray, image_size: int, delta: torch.Tensor | None = None, batch_size: int = 256,
) -> torch.Tensor:
    """Features [N, F] (CPU) of uint8 images, optionally with ``delta`` added in [0, 1] pixel space."""
    was = encoder.training
    encoder.eval()
    dev = module_device(encoder)
    out = []
    try:
        for s in range(0, len(images), batch_size):
            x = to_unit(images[s : s + batch_size], image_size, dev)
            if delta is not None:
                x = (x + delta.to(dev)).clamp(0.0, 1.0)
            out.append(embed(x, encoder).cpu())
    finally:
        encoder.train(was)
    return torch.cat(out)


def universal_perturbation(
    encoder: nn.Module, images: np.ndarray, *, image_size: int, eps: float = 8 / 255, steps: int = 100,
    step_size: float | None = None, batch_size: int = 128, seed: int = 0,
) -> tuple[torch.Tensor, list[float]]:
    """Optimise one perturbation [3, S, S] with ``||delta||_inf <= eps``; returns (delta on CPU, loss history).

    The encoder stays frozen (eval mode, no parameter updates). Deterministic for a seed on CPU.
    """
    if not 0.0 < eps < 1.0:
        raise ConfigError(f"--eps must be in (0, 1) (pixel units, e.g. 0.0314 for 8/255), got {eps}")
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if len(images) == 0:
        raise ConfigError("universal_perturbation: no images to optimise on")
    alpha = step_size if step_size is not None else eps / 8
    dev = module_device(encoder)
    gen = torch.Generator().manual_seed(seed)
    delta = ((torch.rand(1, 3, image_size, image_size, generator=gen) * 2 - 1) * eps).to(dev)
    hist: list[float] = []
    with frozen(encoder):
        for _ in range(steps):
            idx = torch.randperm(len(images), generator=gen)[:batch_size].sort().values.numpy()
            x = to_unit(images[idx], image_size, dev)
            with torch.no_grad():
                clean = F.normalize(embed(x, encoder), dim=1)
            d = delta.clone().requires_grad_(True)
            with torch.enable_grad():
                adv = F.normalize(embed((x + d).clamp(0.0, 1.0), encoder), dim=1)
                loss = (adv * clean).sum(1).mean()
                (grad,) = torch.autograd.grad(loss, d)
            delta = (delta - alpha * grad.sign()).clamp(-eps, eps)
            hist.append(float(loss.detach()))
    return delta[0].detach().cpu(), hist


def evaluate_perturbation(
    encoder: nn.Module, delta: torch.Tensor, *, image_size: int, heads: list[dict[str, Any]], seed: int = 0,
) -> dict[str, Any]:
    """Fooling rate of unseen linear heads and recall@1 drop.

    heads: ``{"name", "train_images", "train_labels", "test_images", "test_labels", "num_classes"}``; a linear
    head is fitted on the clean train features of each; retrieval uses the first entry.
    """
    from selfsup.security.metrics import clean_accuracy, fit_linear_head, fooling_rate, recall_at_1

    if not heads:
        raise ConfigError("the adversarial audit needs at least one labelled probe set (--probe-train/--probe-test)")
    res: dict[str, Any] = {"linf": float(delta.abs().max()), "heads": []}
    for i, h in enumerate(heads):
        ftr = encode(encoder, h["train_images"], image_size)
        fte = encode(encoder, h["test_images"], image_size)
        fadv = encode(encoder, h["test_images"], image_size, delta)
        ytr, yte = as_tensor(h["train_labels"], "train_labels"), as_tensor(h["test_labels"], "test_labels")
        head = fit_linear_head(ftr, ytr, int(h["num_classes"]))
        pc, pa = head.predict(fte), head.predict(fadv)
        row = {"name": h["name"], "clean_acc": clean_accuracy(pc, yte), "adv_acc": clean_accuracy(pa, yte),
               "fooling_rate": fooling_rate(pc, pa)}
        if i == 0:
            r0, r1 = recall_at_1(ftr, ytr, fte, yte), recall_at_1(ftr, ytr, fadv, yte)
            res.update({"recall@1_clean": r0, "recall@1_adv": r1, "recall@1_drop": r0 - r1})
        # reference: a random perturbation of the same budget (sign noise), to show the effect is not just noise
        g = torch.Generator().manual_seed(seed)
        rnd = (torch.randint(0, 2, delta.shape, generator=g).float() * 2 - 1) * float(delta.abs().max())
        row["fooling_rate_random_sign"] = fooling_rate(pc, head.predict(encode(encoder, h["test_images"], image_size, rnd)))
        res["heads"].append(row)
    return res


__all__ = ["embed", "encode", "evaluate_perturbation", "normalise", "to_unit", "universal_perturbation"]
