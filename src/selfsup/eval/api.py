"""High-level evaluation entry points (the Python API behind ``selfsup eval``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from selfsup.errors import ConfigError


def load_labelled(spec: str, size: int, *, strict: bool = False, what: str = "eval") -> Any:
    from selfsup.data import open_dataset

    return open_dataset(spec, size, strict=strict, require_labels=True, min_classes=2)


def encoder_factory(info: dict[str, Any]) -> Callable[[], torch.nn.Module]:
    """A builder of the same (randomly initialised) architecture as the encoder ``info`` describes."""
    from selfsup.config import BackboneConfig, from_dict
    from selfsup.models.backbones import build_backbone

    if "external" in info:
        from selfsup.models.external import build_external

        return lambda: build_external(dict(info["external"]))
    return lambda: build_backbone(from_dict(BackboneConfig, info["backbone"]), int(info["image_size"]))


def evaluate(
    protocol: str,
    *,
    checkpoint: str,
    train: str,
    test: str,
    backbone: str | None = None,
    batch_size: int = 256,
    precision: str = "auto",
    baselines: bool = True,
    strict: bool = False,
    progress: bool = True,
    **protocol_kwargs: Any,
) -> dict[str, Any]:
    """Evaluate the encoder in ``checkpoint`` with ``protocol`` ('knn' or 'linear') on labelled folders.

    Returns ``{"encoder": result, "pixels": result, "random": result, "settings": {...}}`` (baselines
    omitted when ``baselines=False``); each result has ``top1`` and ``top5`` in percent.
    """
    from selfsup.checkpoint import load_encoder
    from selfsup.eval.baselines import evaluate_with_baselines

    if protocol not in ("knn", "linear"):
        raise ConfigError(f"unknown protocol '{protocol}'; choose knn or linear")
    encoder, info = load_encoder(checkpoint, expect_backbone=backbone)
    image_size = int(info["image_size"])
    train_ds = load_labelled(train, image_size, strict=strict)
    test_ds = load_labelled(test, image_size, strict=strict)
    if train_ds.classes and test_ds.classes and train_ds.classes != test_ds.classes:
        raise ConfigError(
            f"class folders differ between --train {train} ({len(train_ds.classes)} classes) and --test {test} "
            f"({len(test_ds.classes)} classes); both need the same class sub-folders"
        )
    factory = encoder_factory(info)

    results: dict[str, Any] = evaluate_with_baselines(
        protocol,
        encoder=encoder,
        train=train_ds,
        test=test_ds,
        image_size=image_size,
        baselines=("pixels", "random") if baselines else (),
        encoder_factory=factory,
        batch_size=batch_size,
        precision=precision,
        progress=progress,
        **protocol_kwargs,
    )
    results["settings"] = {
        "protocol": protocol, "checkpoint": info["source"], "backbone": info["backbone"]["name"], "image_size": image_size,
        "train": train, "test": test, "n_train": len(train_ds), "n_test": len(test_ds), **protocol_kwargs,
    }
    return results
