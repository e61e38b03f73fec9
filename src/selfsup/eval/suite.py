"""One evaluation suite: every protocol on one encoder, beside the raw-pixel and random-encoder baselines.

``evaluate_suite`` loads the encoder (a selfsup checkpoint or ``torchvision:``/``timm:`` name with local
weights), extracts train/test features once, runs the requested protocols and returns (and optionally
writes as ``eval.json``)::

    {"meta": {checkpoint, backbone, image_size, train, test, n_train, n_test, num_classes, device, ...,
              "features_time_s", "total_time_s"},
     "<protocol>": {"encoder": {...}, "pixels": {...}, "random": {...},
                    "settings": {every argument the protocol ran with}, "time_s": seconds}, ...}

Protocols (train = ``--train`` split, test = ``--test`` split):

| name        | data used                           | headline metrics |
|-------------|-------------------------------------|------------------|
| knn         | train features vote for test        | top1, top5 |
| linear      | L-BFGS probe on train, test         | top1, top5 |
| finetune    | label fraction of train, test       | top1, top5 (key ``finetune@10%`` ...) |
| fewshot     | episodes drawn from test            | {1,5}shot_{prototype,logistic} +- ci95 |
| retrieval   | test queries vs train gallery       | mAP, recall@1/5/10 |
| clustering  | k-means on test                     | nmi, ari, accuracy |
| diagnostics | test images (+ 2 augmented views)   | rankme, alignment, uniformity, feature_std |

Fine-tuning trains the encoder, so it is run for the encoder only (no baselines) unless asked.

Features of the encoder and of the random baseline are cached on disk (see
:func:`selfsup.eval.features.cached_features`), so a second ``selfsup eval`` or ``selfsup report`` on the same
checkpoint and data does not extract them again; ``eval.json`` is rewritten after every protocol.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.errors import ConfigError

PROTOCOLS = ("knn", "linear", "finetune", "fewshot", "retrieval", "clustering", "diagnostics")

DEFAULTS: dict[str, dict[str, Any]] = {
    "knn": {"k": 200, "temperature": 0.1},
    "linear": {"epochs": 100, "weight_decay": 1e-4},
    "finetune": {"labels": "10%", "blocks": "all", "epochs": 10, "min_steps": 100, "batch_size": 64, "lr": 1e-3,
                 "seed": 0},
    "fewshot": {"n_way": 5, "k_shots": [1, 5], "n_query": 15, "episodes": 600, "seed": 0},
    "retrieval": {"ks": [1, 5, 10]},
    "clustering": {"seed": 0, "n_init": 10},
    "diagnostics": {"seed": 0, "max_points": 2000, "alpha": 2.0, "t": 2.0},
}

HEADLINE: dict[str, tuple[str, ...]] = {
    "knn": ("top1", "top5"),
    "linear": ("top1", "top5"),
    "finetune": ("top1", "top5"),
    "fewshot": ("1shot_prototype", "1shot_logistic", "5shot_prototype", "5shot_logistic"),
    "retrieval": ("mAP", "recall@1", "recall@5", "recall@10"),
    "clustering": ("nmi", "ari", "accuracy"),
    "diagnostics": ("rankme", "alignment", "uniformity", "feature_std"),
}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_on_features(protocol: str, ftr: torch.Tensor, ytr: torch.Tensor, fte: torch.Tensor, yte: torch.Tensor,
                    num_classes: int, options: dict[str, Any]) -> dict[str, Any]:
    """A feature-level protocol (knn, linear, fewshot, retrieval, clustering) on precomputed features."""
    from selfsup.eval.clustering import clustering_metrics
    from selfsup.eval.fewshot import fewshot_eval
    from selfsup.eval.knn import knn_accuracy
    from selfsup.eval.linear import linear_probe
    from selfsup.eval.retrieval import retrieval_metrics

    if protocol == "knn":
        return knn_accuracy(ftr, ytr, fte, yte, num_classes=num_classes, **options)
    if protocol == "linear":
        return linear_probe(ftr, ytr, fte, yte, num_classes=num_classes, **options)
    if protocol == "fewshot":
        return fewshot_eval(fte, yte, **options)
    if protocol == "retrieval":
        return retrieval_metrics(ftr, ytr, fte, yte, **options)
    if protocol == "clustering":
        return clustering_metrics(fte, yte, **options)
    raise ConfigError(f"'{protocol}' is not a feature-level protocol")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


class _FeatureStore:
    """Train/test features per source ("encoder", "pixels", "random"), computed on first use and, for the two
    encoders, kept in the on-disk feature cache (:func:`selfsup.eval.features.cached_features`)."""

    def __init__(self, *, encoder: nn.Module, info: dict[str, Any], train_ds: Any, test_ds: Any, fx: dict[str, Any],
                 baselines: bool, cache: bool, cache_dir: str | Path | None, device: torch.device) -> None:
        self.encoder, self.info, self.train_ds, self.test_ds, self.fx = encoder, info, train_ds, test_ds, fx
        self.baselines, self.cache, self.cache_dir, self.device = baselines, cache, cache_dir, device
        self.random: nn.Module | None = None
        self._feats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.time_s = 0.0

    def names(self) -> list[str]:
        return ["encoder", "pixels", "random"] if self.baselines else ["encoder"]

    def random_encoder(self) -> nn.Module:
        from selfsup.eval.api import encoder_factory
        from selfsup.eval.baselines import random_encoder_like

        if self.random is None:
            self.random = random_encoder_like(encoder_factory(self.info), seed=0).to(self.device)
        return self.random

    def _encode(self, enc: nn.Module, key: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        from selfsup.eval.features import cached_features, extract_features

        out = []
        for ds, split in ((self.train_ds, "train"), (self.test_ds, "test")):
            desc = f"{what} {split} features"
            if self.cache:
                out.append(cached_features(enc, ds, key=key, cache_dir=self.cache_dir, desc=desc, **self.fx))
            else:
                out.append(extract_features(enc, ds.images, desc=desc, **self.fx))
        return out[0], out[1]

    def get(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        from selfsup.eval.features import encoder_key, random_encoder_key, raw_pixels

        if name not in self._feats:
            t0 = time.perf_counter()
            if name == "encoder":
                self._feats[name] = self._encode(self.encoder, encoder_key(self.info), "encoder")
            elif name == "random":
                self._feats[name] = self._encode(self.random_encoder(), random_encoder_key(self.info, 0), "random-init")
            else:  # raw pixels: cheap, never cached
                side = int(self.train_ds.images.shape[1])
                psize = None if side <= 32 else 32
                ptr = raw_pixels(self.train_ds.images, psize)
                mean = ptr.mean(0)
                self._feats[name] = (ptr - mean, raw_pixels(self.test_ds.images, psize) - mean)
            self.time_s += time.perf_counter() - t0
        return self._feats[name]


def evaluate_suite(
    checkpoint: str,
    train: str,
    test: str,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    options: dict[str, dict[str, Any]] | None = None,
    baselines: bool = True,
    finetune_labels: Sequence[str] = ("10%",),
    backbone: str | None = None,
    batch_size: int = 256,
    precision: str = "auto",
    device: str = "auto",
    strict: bool = False,
    progress: bool = True,
    out: str | Path | None = None,
    log: Any = None,
    on_result: Any = None,
    cache: bool = True,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run ``protocols`` on the encoder in ``checkpoint``; see the module docstring for the result layout.

    ``options[protocol]`` overrides that protocol's :data:`DEFAULTS` (its settings are recorded in full).
    ``finetune_labels`` lists the label fractions to fine-tune with (one result key each).

    The work is kept: features come from the on-disk feature cache (``cache=False`` turns it off;
    ``cache_dir`` defaults to :func:`selfsup.eval.features.feature_cache_dir`), and ``out`` (e.g.
    ``RUN/eval.json``) is rewritten atomically after every protocol, so an interrupted suite (Ctrl-C) leaves
    the finished protocols on disk with ``meta.complete = false``. ``log`` (e.g. ``print``) gets one progress
    line per protocol (count, time, ETA); ``on_result(key, results)`` is called as each protocol finishes.
    """
    from selfsup.checkpoint import atomic_write_text, load_encoder
    from selfsup.eval.api import load_labelled
    from selfsup.eval.diagnostics import diagnostics_from_features, representation_diagnostics
    from selfsup.eval.finetune import finetune

    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"unknown protocol '{unknown[0]}'; choose from: {', '.join(PROTOCOLS)}, all")
    options = options or {}
    bad = [p for p in options if p not in PROTOCOLS]
    if bad:
        raise ConfigError(f"options given for unknown protocol '{bad[0]}'")
    t_all = time.perf_counter()
    dev = resolve_device(device)
    encoder, info = load_encoder(checkpoint, expect_backbone=backbone)
    encoder = encoder.to(dev)
    size = int(info["image_size"])
    train_ds = load_labelled(train, size, strict=strict)
    test_ds = load_labelled(test, size, strict=strict)
    if train_ds.classes and test_ds.classes and train_ds.classes != test_ds.classes:
        raise ConfigError(f"class folders differ between --train {train} and --test {test}; both need the same "
                          "class sub-folders")
    ytr = torch.tensor(train_ds.labels).long()
    yte = torch.tensor(test_ds.labels).long()
    num_classes = int(max(train_ds.num_classes, int(ytr.max()) + 1, int(yte.max()) + 1))
    fx: dict[str, Any] = {"image_size": size, "batch_size": batch_size, "precision": precision, "progress": progress}
    store = _FeatureStore(encoder=encoder, info=info, train_ds=train_ds, test_ds=test_ds, fx=fx, baselines=baselines,
                          cache=cache, cache_dir=cache_dir, device=dev)

    # the work list: one entry per result key (finetune gives one per label fraction)
    jobs: list[tuple[str, str, dict[str, Any]]] = []
    for protocol in protocols:
        opts = {**DEFAULTS[protocol], **options.get(protocol, {})}
        if protocol == "finetune":
            given = options.get("finetune", {})
            for frac in [given["labels"]] if "labels" in given else list(finetune_labels):
                jobs.append((protocol, f"finetune@{frac}", {**opts, "labels": frac}))
        else:
            jobs.append((protocol, protocol, opts))

    results: dict[str, Any] = {"meta": {
        "checkpoint": str(info["source"]), "backbone": info["backbone"].get("name"), "image_size": size,
        "train": train, "test": test, "n_train": len(train_ds), "n_test": len(test_ds), "num_classes": num_classes,
        "device": str(dev), "precision": precision, "batch_size": batch_size, "baselines": bool(baselines),
        "baseline_settings": {"pixels": "raw pixels in [0,1], resized to 32 px when larger, centred with the "
                              "train mean", "random": "same architecture, torch.manual_seed(0) init"},
        "protocols": [key for _, key, _ in jobs], "complete": False, "feature_cache": bool(cache),
    }}

    def save() -> None:
        results["meta"]["features_time_s"] = round(store.time_s, 3)
        results["meta"]["total_time_s"] = round(time.perf_counter() - t_all, 3)
        if out is not None:
            atomic_write_text(out, json.dumps(_jsonable(results), indent=2))

    spent: list[float] = []  # protocol times without feature extraction, for the ETA
    for i, (protocol, key, opts) in enumerate(jobs):
        t1 = time.perf_counter()
        feat_before = store.time_s
        entry: dict[str, Any] = {}
        if protocol == "finetune":
            r = finetune(encoder, train_ds.images, ytr, test_ds.images, yte, image_size=size,
                         num_classes=num_classes, precision=precision, **opts)
            key = f"finetune@{r['labels']}"
            entry = {"encoder": r, "settings": {**opts, "labels": r["labels"]}}
        elif protocol == "diagnostics":
            entry["encoder"] = representation_diagnostics(encoder, test_ds.images, image_size=size,
                                                          features=store.get("encoder")[1], batch_size=batch_size,
                                                          **opts)
            if baselines:
                entry["random"] = representation_diagnostics(store.random_encoder(), test_ds.images, image_size=size,
                                                             features=store.get("random")[1], batch_size=batch_size,
                                                             **opts)
                entry["pixels"] = diagnostics_from_features(store.get("pixels")[1], **opts)
            entry["settings"] = opts
        else:
            for name in store.names():
                ftr, fte = store.get(name)
                entry[name] = run_on_features(protocol, ftr, ytr, fte, yte, num_classes, dict(opts))
            entry["settings"] = opts
        # time_s is the protocol's own time; features extracted on its first use are counted apart
        feat_s = store.time_s - feat_before
        entry["time_s"] = round(time.perf_counter() - t1 - feat_s, 3)
        results[key] = _jsonable(entry)
        results["meta"]["complete"] = i == len(jobs) - 1
        save()
        spent.append(entry["time_s"])
        left = len(jobs) - i - 1
        eta = f"; about {sum(spent) / len(spent) * left:.0f}s left" if left else ""
        if log is not None:
            feats = f" (+{feat_s:.1f}s features)" if feat_s >= 0.05 else ""
            log(f"[{i + 1}/{len(jobs)}] {key}: done in {entry['time_s']:.1f}s{feats}{eta}")
        if on_result is not None:
            on_result(key, results)
    if not jobs:
        results["meta"]["complete"] = True
        save()
    return _jsonable(results)


def _fmt(v: Any, ci: Any = None) -> str:
    if not isinstance(v, int | float):
        return "-"
    s = f"{v:.2f}" if abs(v) < 1e4 else f"{v:.3g}"
    if isinstance(ci, int | float) and ci == ci:
        s += f" ±{ci:.2f}"
    return s


def table_rows(results: dict[str, Any], keys: Sequence[str] | None = None) -> list[dict[str, str]]:
    """One row per (protocol, headline metric): protocol, metric, encoder, pixels, random, time_s.
    ``keys`` restricts the rows to those result keys (e.g. the protocol that just finished)."""
    rows = []
    for key, entry in results.items():
        if keys is not None and key not in keys:
            continue
        if not isinstance(entry, dict) or "encoder" not in entry:
            continue
        proto = key.split("@", 1)[0]
        metrics = HEADLINE.get(proto) or tuple(k for k, v in entry["encoder"].items() if isinstance(v, float))
        first = True
        for m in metrics:
            if m not in entry["encoder"]:
                continue
            row = {"protocol": key if first else "", "metric": m}
            for col in ("encoder", "pixels", "random"):
                r = entry.get(col) or {}
                row[col] = _fmt(r.get(m), r.get(f"{m}_ci95"))
            t = entry.get("time_s")
            row["time_s"] = f"{t:.1f}" if first and isinstance(t, int | float) else ""
            rows.append(row)
            first = False
    return rows


#: fixed column widths, so the tables printed one protocol at a time line up
WIDTHS = {"protocol": 14, "metric": 16, "encoder": 12, "pixels": 12, "random": 12, "time_s": 8}


def format_suite_table(results: dict[str, Any], keys: Sequence[str] | None = None, *, header: bool = True,
                       footer: bool = True) -> str:
    """The results as a text table (``keys``: only those protocols); ``footer`` adds the meta line."""
    rows = table_rows(results, keys)
    cols = ["protocol", "metric", "encoder", "pixels", "random", "time_s"]
    width = {c: max([WIDTHS[c], len(c)] + [len(r[c]) for r in rows]) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) if i < 2 else c.rjust(width[c]) for i, c in enumerate(cols))] if header else []
    for r in rows:
        lines.append("  ".join(r[c].ljust(width[c]) if i < 2 else r[c].rjust(width[c]) for i, c in enumerate(cols)))
    meta = results.get("meta", {})
    if meta and footer:
        lines.append(f"\n{meta.get('checkpoint')} ({meta.get('backbone')}, {meta.get('image_size')} px); "
                     f"train {meta.get('n_train')}, test {meta.get('n_test')} images; "
                     f"features {meta.get('features_time_s', 0):.1f}s, total {meta.get('total_time_s', 0):.1f}s")
    return "\n".join(lines)
