"""The Python API; it mirrors the CLI one to one.

    import selfsup
    summary = selfsup.pretrain("builtin:mnist", method="simclr", backbone="cnn-compact", epochs=5, out="runs/a")
    knn = selfsup.evaluate("knn", checkpoint="runs/a", train="builtin:mnist:train", test="builtin:mnist:test")
    res = selfsup.embed("runs/a", "photos/", "photos.safetensors")   # res["features"] [N, F], res["paths"]
    hits = selfsup.search("photos.safetensors", "query.jpg", k=5)   # [{"query", "neighbours": [...]}]
    selfsup.report("runs/a")                                         # runs/a/report.html
    encoder, info = selfsup.load_encoder("runs/a")       # a plain nn.Module: encoder(x) -> [B, num_features]
"""

from __future__ import annotations

from typing import Any

from selfsup.checkpoint import load_encoder
from selfsup.config import PretrainConfig
from selfsup.config.build import ConfigSource, SetSource, build_config
from selfsup.embed import embed_folder as embed
from selfsup.eval.api import evaluate
from selfsup.report import report
from selfsup.search import search
from selfsup.training import loop


def pretrain(
    data: str | None = None, *, val: str | None = None, preset: str | None = None, config: ConfigSource | None = None,
    set: SetSource | None = None,  # noqa: A002 (the CLI's --set)
    method: str | None = None, backbone: str | None = None, init: str | None = None, image_size: int | None = None,
    epochs: int | None = None, batch_size: int | None = None, max_steps: int | None = None,
    time_budget: float | None = None, lr: float | None = None, optimizer: str | None = None,
    precision: str | None = None, device: str | None = None, seed: int | None = None,
    compile: bool | None = None,  # noqa: A002 (the CLI's --compile)
    knn_every: int | None = None, strict: bool | None = None, progress: bool | None = None, log: str | None = None,
    out: str | None = None, resume: bool = False,
) -> dict[str, Any]:
    """Same as ``selfsup pretrain``, keyword for flag (``--batch-size`` -> ``batch_size=``, ``--no-progress`` ->
    ``progress=False``); returns the run summary (also in ``OUT/summary.json``).

    ``config`` is a YAML path, a dict of PretrainConfig fields, or a PretrainConfig (never modified);
    ``preset``, ``config``, the keywords and ``set`` (``["optim.lr=0.1", ...]``) are layered exactly as the
    CLI layers ``--preset``, ``--config``, its flags and ``--set`` (``selfsup.config.build``).
    """
    cfg = build_config(
        preset=preset, config=config, method=method, out=out, set=set, resume=resume,
        data=data, val=val, backbone=backbone, epochs=epochs, batch_size=batch_size, max_steps=max_steps,
        image_size=image_size, lr=lr, optimizer=optimizer, precision=precision, device=device, seed=seed,
        knn_every=knn_every, time_budget=time_budget, compile=compile, strict=strict, progress=progress,
        init=init, log=log,
    )
    return loop.pretrain(cfg, resume=resume)


__all__ = ["pretrain", "evaluate", "embed", "search", "report", "load_encoder", "PretrainConfig"]
