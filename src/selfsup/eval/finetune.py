"""Fine-tuning with a fraction of the labels (semi-supervised protocol of SimCLR v2 and BYOL).

Chen et al. 2020, "Big Self-Supervised Models are Strong Semi-Supervised Learners" (SimCLR v2,
arXiv 2006.10029), and Grill et al. 2020 (BYOL, arXiv 2006.07733, Sec. 4.2): a linear classifier is put
on the pretrained encoder and the whole network (here optionally only its last k blocks) is trained on
1%, 10% or 100% of the labelled training images, then evaluated on the test set.

- Label subsets are *class-balanced* (stratified): ``round(fraction * n_c)`` images of each class c, at
  least one, drawn with a seeded generator, so that a fraction is the same subset for every encoder.
- Augmentation: random resized crop (scale 0.25-1) + horizontal flip, no colour ops (the papers use
  crop + flip only for fine-tuning), via :func:`selfsup.augment.views.make_views`.
- Optimiser (CPU-friendly defaults, not the papers' 60/30-epoch LARS schedules): AdamW, head learning
  rate ``lr``, encoder ``lr * backbone_lr_scale`` (default 1: one rate, as SimCLR v2), no weight decay (SimCLR v2 fine-tunes without it),
  cosine decay over ``max(epochs * steps_per_epoch, min_steps)`` steps (small label fractions get
  enough steps).
- ``blocks="all"`` trains everything; an integer k trains only the last k blocks (the encoder's
  parameterised sub-modules in forward-execution order, see :func:`encoder_blocks`) and keeps the frozen
  part in eval mode (BatchNorm statistics stay as pretrained).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError, DataError
from selfsup.eval.features import as_tensor
from selfsup.eval.knn import topk_accuracy


def parse_fraction(value: str | float) -> float:
    """``"1%"`` -> 0.01, ``"0.1"`` -> 0.1, ``100`` -> 1.0; must lie in (0, 1]."""
    text = str(value).strip()
    try:
        frac = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(f"label fraction '{value}' is not a number; use e.g. 1%, 10% or 100%") from None
    if not isinstance(value, str) and frac > 1.0:
        frac /= 100.0
    if not 0.0 < frac <= 1.0:
        raise ConfigError(f"label fraction '{value}' must lie in (0%, 100%]")
    return frac


def stratified_subset(labels: Any, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a class-balanced subset: ``max(1, round(fraction * n_c))`` per class c."""
    y = np.asarray(labels, dtype=np.int64)
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"label fraction must lie in (0, 1], got {fraction}")
    rng = np.random.default_rng(int(seed))
    picks = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n = min(idx.size, max(1, int(round(fraction * idx.size))))
        picks.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, dtype=np.int64)


def _expand(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Parameterised children; containers of >= 2 parameterised modules are expanded one level."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, nn.Sequential | nn.ModuleList):
            inner = [(f"{name}.{n}", m) for n, m in child.named_children() if any(True for _ in m.parameters())]
            if len(inner) >= 2:
                out.extend(inner)
                continue
        out.append((name, child))
    return out


def encoder_blocks(encoder: nn.Module, image_size: int) -> list[tuple[str, nn.Module]]:
    """The encoder's blocks in the order a forward pass runs them (``[(name, module)]``).

    Wrappers with a single parameterised child (e.g. ``ResNetEncoder.net``) are descended; sequential
    containers (ResNet layers, ViT ``blocks``) are expanded into their blocks. The order is observed with
    forward hooks on a dummy batch, so interleaved module lists (conv stages) are handled.
    """
    root, prefix = encoder, ""
    while True:
        kids = [(n, m) for n, m in root.named_children() if any(True for _ in m.parameters())]
        if len(kids) == 1 and not isinstance(kids[0][1], nn.Sequential | nn.ModuleList):
            prefix += kids[0][0] + "."
            root = kids[0][1]
            continue
        break
    blocks = [(prefix + n, m) for n, m in _expand(root)]
    order: dict[int, int] = {}

    def seen(k: int) -> Any:
        def hook(mod: nn.Module, inp: Any, out: Any) -> None:
            order.setdefault(k, len(order))

        return hook

    hooks = [m.register_forward_hook(seen(k)) for k, (_, m) in enumerate(blocks)]
    was = encoder.training
    try:
        encoder.eval()
        p = next(encoder.parameters())
        with torch.no_grad():
            encoder(torch.zeros(2, 3, image_size, image_size, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        encoder.train(was)
    ranked = sorted(range(len(blocks)), key=lambda k: order.get(k, len(blocks) + k))
    return [blocks[k] for k in ranked]


class _Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder(x)
        if isinstance(f, tuple | list):
            f = f[0]
        return self.head(f.reshape(f.shape[0], -1).float())


def finetune(
    encoder: nn.Module,
    train_images: Any,
    train_labels: Any,
    test_images: Any,
    test_labels: Any,
    *,
    image_size: int,
    num_classes: int | None = None,
    labels: str | float = "10%",
    blocks: str | int = "all",
    epochs: int = 10,
    min_steps: int = 100,
    batch_size: int = 64,
    lr: float = 1e-3,
    backbone_lr_scale: float = 1.0,
    weight_decay: float = 0.0,
    crop_scale: tuple[float, float] = (0.25, 1.0),
    seed: int = 0,
    precision: str = "auto",
    eval_batch_size: int = 256,
) -> dict[str, Any]:
    """Fine-tune a copy of ``encoder`` plus a linear head on a stratified label fraction; test top-1/top-5 (%).

    ``encoder`` is not modified. Runs on the encoder's device. Returns ``{"top1", "top5", "train_loss",
    "n_labelled", ...settings}``.
    """
    from selfsup.augment.recipes import ViewRecipe, ViewSpec
    from selfsup.augment.views import make_views
    from selfsup.eval.features import autocast_context, extract_features, resolve_precision
    from selfsup.runtime import module_device

    frac = parse_fraction(labels)
    ytr = as_tensor(train_labels, "train_labels").long().cpu().numpy()
    yte = as_tensor(test_labels, "test_labels").long()
    if len(ytr) != int(train_images.shape[0]) or len(yte) != int(test_images.shape[0]):
        raise DataError("fine-tune: one label per image is needed in both the train and the test set")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError(f"fine-tune needs epochs >= 1, batch_size >= 1, lr > 0; got {epochs}, {batch_size}, {lr}")
    c = int(num_classes) if num_classes is not None else int(max(ytr.max(), int(yte.max()))) + 1
    device = module_device(encoder)
    enc = copy.deepcopy(encoder)
    all_blocks = encoder_blocks(enc, image_size)
    if blocks == "all" or blocks == -1:
        trainable = list(enc.parameters())
        frozen: list[nn.Module] = []
        n_blocks: int | str = "all"
    else:
        k = int(blocks)
        if not 1 <= k <= len(all_blocks):
            raise ConfigError(f"fine-tune blocks must be 'all' or 1..{len(all_blocks)} for this encoder, got {blocks}")
        last = [m for _, m in all_blocks[-k:]]
        frozen = [m for _, m in all_blocks[:-k]]
        trainable = [p for m in last for p in m.parameters()]
        n_blocks = k
    ids = {id(p) for p in trainable}
    for p in enc.parameters():
        p.requires_grad_(id(p) in ids)
    with torch.no_grad():
        enc.eval()
        nf = int(enc(torch.zeros(1, 3, image_size, image_size, device=device)).reshape(1, -1).shape[1])
    model = _Classifier(enc, nf, c).to(device)
    torch.manual_seed(int(seed))
    nn.init.zeros_(model.head.bias)
    opt = torch.optim.AdamW([
        {"params": trainable, "lr": lr * backbone_lr_scale, "base": lr * backbone_lr_scale},
        {"params": list(model.head.parameters()), "lr": lr, "base": lr},
    ], lr=lr, weight_decay=weight_decay)
    subset = stratified_subset(ytr, frac, seed)
    n = subset.size
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(epochs * steps_per_epoch, int(min_steps))
    recipe = ViewRecipe(views=[ViewSpec(size=image_size, scale=crop_scale, jitter_p=0.0, gray_p=0.0)])
    gen = torch.Generator().manual_seed(int(seed))
    dtype = resolve_precision(precision, device)
    if device.type == "cpu" and dtype == torch.bfloat16:
        from selfsup.models.backbones import check_bf16_cpu_conv_sizes

        check_bf16_cpu_conv_sizes(enc, [image_size], name="this encoder", hint="the fine-tune image size")
    y_sub = torch.from_numpy(ytr[subset])
    step, running, seen = 0, 0.0, 0
    while step < total:
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            if step >= total:
                break
            pick = perm[s : s + batch_size]
            rows = np.sort(subset[pick.numpy()])
            order = np.argsort(subset[pick.numpy()])
            x = torch.from_numpy(np.ascontiguousarray(train_images[rows])).to(device)
            yb = y_sub[pick][torch.from_numpy(order)].to(device)
            views, _ = make_views(x, recipe, gen)
            model.train()
            for m in frozen:
                m.eval()
            for g in opt.param_groups:
                g["lr"] = g["base"] * 0.5 * (1.0 + math.cos(math.pi * step / total))
            with autocast_context(device, dtype):
                logits = model(views[0])
            loss = F.cross_entropy(logits.float(), yb)
            if not torch.isfinite(loss):
                raise ConfigError(f"fine-tuning diverged at step {step} (loss {float(loss)}); lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach()) * yb.shape[0]
            seen += yb.shape[0]
            step += 1
    model.eval()
    scores = extract_features(model, test_images, image_size=image_size, batch_size=eval_batch_size,
                              precision=precision)
    acc = topk_accuracy(scores, yte)
    return {
        **acc, "train_loss": running / max(1, seen), "labels": f"{100 * frac:g}%", "n_labelled": int(n),
        "blocks": n_blocks, "n_blocks_total": len(all_blocks), "epochs": int(epochs), "steps": int(total),
        "min_steps": int(min_steps), "batch_size": int(batch_size), "lr": float(lr),
        "backbone_lr_scale": float(backbone_lr_scale), "weight_decay": float(weight_decay),
        "crop_scale": list(crop_scale), "optimizer": "adamw", "schedule": "cosine", "seed": int(seed),
        "precision": precision,
    }
