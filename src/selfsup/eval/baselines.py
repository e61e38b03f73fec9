"""Evaluate an encoder next to the baselines every SSL number should be read against.

- ``pixels``: the protocol on raw pixels (flattened, in [0, 1], centred with the *training* mean).
  A pretrained encoder that does not beat this has learned nothing useful for the task.
- ``random``: the protocol on the features of the same architecture with random (seeded) weights.
  Random conv nets are surprisingly strong kNN baselines; the gap to them is what pretraining bought.

``evaluate_with_baselines`` returns ``{"encoder": r, "pixels": r, "random": r}`` where each ``r`` is the
protocol's result dict (:func:`~selfsup.eval.knn.knn_accuracy` or :func:`~selfsup.eval.linear.linear_probe`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from selfsup.errors import ConfigError, DataError
from selfsup.eval.features import cached_features, extract_features, raw_pixels
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe
from selfsup.runtime import module_device

if TYPE_CHECKING:  # pragma: no cover
    from selfsup.data import ImageDataset

PROTOCOLS = ("knn", "linear")
BASELINES = ("pixels", "random")


def random_encoder_like(encoder_factory: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """``encoder_factory()`` built under ``torch.manual_seed(seed)`` (global RNG state restored), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        enc = encoder_factory()
    return enc.eval()


def reinitialized_copy(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``encoder`` with every parameter re-drawn (fallback when no factory is given).

    Calls ``reset_parameters()`` on every submodule that has one (conv, linear, norm layers, which also
    resets BatchNorm running statistics) and ``init_weights()`` on the top module if present (timm).
    Any parameter left bit-identical to the trained one (e.g. a ViT position embedding) is re-drawn:
    matrices from N(0, 0.02^2) truncated at 2 std, vectors to ones (``*weight``) or zeros (others).
    """
    enc = copy.deepcopy(encoder)
    before = {k: v.detach().clone() for k, v in encoder.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in enc.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
        for m in enc.modules():
            init = getattr(m, "init_weights", None)
            if callable(init):
                try:
                    init()
                except TypeError:
                    pass
        with torch.no_grad():
            for name, p in enc.named_parameters():
                old = before.get(name)
                if old is None or not torch.equal(p.detach().cpu(), old.cpu()):
                    continue
                if p.ndim >= 2:
                    nn.init.trunc_normal_(p, std=0.02, a=-0.04, b=0.04)
                elif name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()
    return enc.eval()


def _labels(ds: ImageDataset, which: str) -> torch.Tensor:
    if ds.labels is None:
        raise DataError(f"the {which} set has no labels; kNN/linear evaluation needs a labelled dataset "
                        "(an image folder with one sub-folder per class, or a built-in dataset)")
    return torch.tensor(np.asarray(ds.labels), dtype=torch.long)


def _run(protocol: str, tr: torch.Tensor, ytr: torch.Tensor, te: torch.Tensor, yte: torch.Tensor,
         num_classes: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    if protocol == "knn":
        return knn_accuracy(tr, ytr, te, yte, num_classes=num_classes, **kwargs)
    return linear_probe(tr, ytr, te, yte, num_classes=num_classes, **kwargs)


def evaluate_with_baselines(
    protocol: str,
    *,
    encoder: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    image_size: int,
    baselines: Sequence[str] = BASELINES,
    encoder_factory: Callable[[], nn.Module] | None = None,
    progress: bool = True,
    batch_size: int = 256,
    precision: str = "auto",
    transform: Callable[..., torch.Tensor] | None = None,
    pixel_size: int | None = 32,
    random_seed: int = 0,
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
    **protocol_kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Run ``protocol`` ("knn" or "linear") on the encoder's features and on each baseline.

    protocol_kwargs go to :func:`knn_accuracy` (k, temperature, ...) or :func:`linear_probe` (epochs, lr,
    weight_decay, ...). ``pixel_size`` resizes images for the pixel baseline (None = native; the default
    32 keeps it cheap and matches the usual CIFAR-size baseline; images already smaller stay as they are).
    The random baseline uses ``encoder_factory`` (same architecture, seeded random init) or, without one,
    :func:`reinitialized_copy` of the encoder. With ``cache_dir`` and ``cache_key`` (the checkpoint's
    identity, e.g. :func:`~selfsup.eval.features.checkpoint_key`) the encoder's features are cached.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline '{unknown[0]}'; choose from: {', '.join(BASELINES)}")
    ytr, yte = _labels(train, "training"), _labels(test, "test")
    num_classes = int(max(getattr(train, "num_classes", 0) or 0, int(ytr.max()) + 1, int(yte.max()) + 1))
    fx: dict[str, Any] = {"image_size": image_size, "batch_size": batch_size, "precision": precision,
          "transform": transform, "progress": progress}

    def encode(enc: nn.Module, ds: ImageDataset, desc: str) -> torch.Tensor:
        return extract_features(enc, ds.images, desc=desc, **fx)

    results: dict[str, dict[str, Any]] = {}
    if cache_dir is not None and cache_key is not None:
        ftr = cached_features(encoder, train, key=cache_key, cache_dir=cache_dir, desc="train features", **fx)
        fte = cached_features(encoder, test, key=cache_key, cache_dir=cache_dir, desc="test features", **fx)
    else:
        ftr, fte = encode(encoder, train, "train features"), encode(encoder, test, "test features")
    results["encoder"] = _run(protocol, ftr, ytr, fte, yte, num_classes, protocol_kwargs)
    del ftr, fte

    if "pixels" in baselines:
        side = int(train.images.shape[1])
        size = None if pixel_size is None or pixel_size >= side else int(pixel_size)
        ptr = raw_pixels(train.images, size)
        mean = ptr.mean(0)
        ptr -= mean
        pte = raw_pixels(test.images, size) - mean
        results["pixels"] = _run(protocol, ptr, ytr, pte, yte, num_classes, protocol_kwargs)
        del ptr, pte

    if "random" in baselines:
        if encoder_factory is not None:
            rnd = random_encoder_like(encoder_factory, seed=random_seed)
        else:
            rnd = reinitialized_copy(encoder, seed=random_seed)
        rnd = rnd.to(module_device(encoder))
        rtr, rte = encode(rnd, train, "random-init train"), encode(rnd, test, "random-init test")
        results["random"] = _run(protocol, rtr, ytr, rte, yte, num_classes, protocol_kwargs)
    return results
