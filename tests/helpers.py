"""Small shared test utilities (image folders, tiny configs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_class_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 20, seed: int = 0) -> Path:
    """Class-folder tree of coloured, class-dependent images (learnable structure, tiny)."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            img[..., c % 3] += np.uint8(150)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    return root


def tiny_config(data: str, out: str, method: str = "simclr", **train):
    from selfsup.config import PretrainConfig

    cfg = PretrainConfig(out=out)
    cfg.data.path = data
    cfg.data.image_size = 16
    cfg.backbone.name = "cnn-compact"
    cfg.backbone.width = 4
    cfg.method = {"name": method, **tiny_method_overrides(method)}
    cfg.train.epochs = train.pop("epochs", 2)
    cfg.train.batch_size = train.pop("batch_size", 8)
    cfg.train.progress = False
    cfg.train.log_every = 1
    cfg.train.threads = 1
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def tiny_method_overrides(method: str) -> dict:
    """Shrink head widths, queues and prototype counts so a step takes milliseconds."""
    import dataclasses

    from selfsup.methods import registry

    spec = registry()[method]
    out = {}
    for f in dataclasses.fields(spec.config_cls):
        if isinstance(f.default, bool) or not isinstance(f.default, int):
            continue
        name = f.name
        if name.endswith("_dim") or "hidden" in name:
            out[name] = 16
        elif "queue" in name:
            out[name] = 32
        elif "prototypes" in name:
            out[name] = 8
    return out


def tiny_cli_run(root: Path, *, val: bool = False) -> tuple[Path, Path]:
    """Pretrain SimCLR for 2 epochs through the real CLI on a 3-class x 10-image folder; returns (data, run)."""
    from selfsup.cli import main

    data = make_class_folder(root / "data", classes=3, per_class=10)
    run = root / "run"
    args = ["pretrain", "--data", str(data), "--method", "simclr", "--epochs", "2", "--batch-size", "10",
            "--out", str(run), "--image-size", "16", "--backbone", "cnn-compact", "--set", "backbone.width=4",
            "--set", "train.threads=1", "--no-progress"]
    if val:
        args += ["--set", f"data.val={data}"]
    assert main(args) == 0
    return data, run
