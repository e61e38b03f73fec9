"""The Python API; it mirrors the CLI one to one.

    import selfsup
    summary = selfsup.pretrain("builtin:mnist", method="simclr", backbone="cnn-compact", epochs=5, out="runs/a")
    knn = selfsup.evaluate("knn", checkpoint="runs/a", train="builtin:mnist:train", test="builtin:mnist:test")
    selfsup.embed("runs/a", "photos/", "photos.safetensors")
    encoder, info = selfsup.load_encoder("runs/a")       # a plain nn.Module: encoder(x) -> [B, num_features]
"""

from __future__ import annotations

from typing import Any

from selfsup.checkpoint import load_encoder
from selfsup.config import PretrainConfig, apply_overrides, load_yaml, parse_set
from selfsup.config.validate import validate_config
from selfsup.embed import embed_folder as embed
from selfsup.eval.api import evaluate


def pretrain(
    data: str | None = None,
    *,
    method: str | None = None,
    backbone: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    out: str | None = None,
    val: str | None = None,
    max_steps: int | None = None,
    config: str | dict[str, Any] | PretrainConfig | None = None,
    set: list[str] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Same as ``selfsup pretrain``: returns the run summary (also in ``OUT/summary.json``).

    ``config`` is a YAML path, a dict of PretrainConfig fields, or a PretrainConfig; the keyword arguments
    and ``set`` (``["optim.lr=0.1", ...]``) override it, like CLI flags override ``--config``.
    """
    from selfsup.training.loop import pretrain as _pretrain

    if isinstance(config, PretrainConfig):
        cfg = config
    else:
        cfg = PretrainConfig()
        if isinstance(config, str):
            from selfsup.config.presets import config_file_layer

            apply_overrides(cfg, config_file_layer(load_yaml(config), method), config)
        elif isinstance(config, dict):
            apply_overrides(cfg, config, "config")
    flags: dict[str, dict[str, Any]] = {
        "data": {"path": data, "val": val},
        "backbone": {"name": backbone},
        "train": {"epochs": epochs, "batch_size": batch_size, "max_steps": max_steps},
    }
    for section, values in flags.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            apply_overrides(cfg, {section: values}, "arguments")
    if method is not None and cfg.method.get("name") != method:
        cfg.method = {"name": method}
    if out is not None:
        cfg.out = out
    apply_overrides(cfg, parse_set(set), "set")
    validate_config(cfg)
    return _pretrain(cfg, resume=resume)


__all__ = ["pretrain", "evaluate", "embed", "load_encoder", "PretrainConfig"]
