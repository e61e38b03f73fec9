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
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

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
) -> dict[str, Any]:
    """Run ``protocols`` on the encoder in ``checkpoint``; see the module docstring for the result layout.

    ``options[protocol]`` overrides that protocol's :data:`DEFAULTS` (its settings are recorded in full).
    ``finetune_labels`` lists the label fractions to fine-tune with (one result key each). ``out`` writes
    the result as JSON (e.g. ``RUN/eval.json``). ``log`` (e.g. ``print``) gets one line per finished protocol.
    """
    from selfsup.checkpoint import atomic_write_text, load_encoder
    from selfsup.eval.api import encoder_factory, load_labelled
    from selfsup.eval.baselines import random_encoder_like
    from selfsup.eval.diagnostics import diagnostics_from_features, representation_diagnostics
    from selfsup.eval.features import extract_features, raw_pixels
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

    t0 = time.perf_counter()
    feats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        "encoder": (extract_features(encoder, train_ds.images, desc="train features", **fx),
                    extract_features(encoder, test_ds.images, desc="test features", **fx))}
    rnd = None
    if baselines:
        side = int(train_ds.images.shape[1])
        psize = None if side <= 32 else 32
        ptr = raw_pixels(train_ds.images, psize)
        mean = ptr.mean(0)
        feats["pixels"] = (ptr - mean, raw_pixels(test_ds.images, psize) - mean)
        rnd = random_encoder_like(encoder_factory(info), seed=0).to(dev)
        feats["random"] = (extract_features(rnd, train_ds.images, desc="random-init train", **fx),
                           extract_features(rnd, test_ds.images, desc="random-init test", **fx))
    t_feat = time.perf_counter() - t0

    results: dict[str, Any] = {"meta": {
        "checkpoint": str(info["source"]), "backbone": info["backbone"].get("name"), "image_size": size,
        "train": train, "test": test, "n_train": len(train_ds), "n_test": len(test_ds), "num_classes": num_classes,
        "device": str(dev), "precision": precision, "batch_size": batch_size, "baselines": bool(baselines),
        "baseline_settings": {"pixels": "raw pixels in [0,1], resized to 32 px when larger, centred with the "
                              "train mean", "random": "same architecture, torch.manual_seed(0) init"},
        "features_time_s": round(t_feat, 3),
    }}
    for protocol in protocols:
        opts = {**DEFAULTS[protocol], **options.get(protocol, {})}
        if protocol == "finetune":
            given = options.get("finetune", {})
            for frac in [given["labels"]] if "labels" in given else list(finetune_labels):
                o = {**opts, "labels": frac}
                t1 = time.perf_counter()
                r = finetune(encoder, train_ds.images, ytr, test_ds.images, yte, image_size=size,
                             num_classes=num_classes, precision=precision, **o)
                key = f"finetune@{r['labels']}"
                results[key] = {"encoder": r, "settings": {**o, "labels": r["labels"]},
                                "time_s": round(time.perf_counter() - t1, 3)}
                _log(log, key, results[key])
            continue
        t1 = time.perf_counter()
        entry: dict[str, Any] = {}
        if protocol == "diagnostics":
            entry["encoder"] = representation_diagnostics(encoder, test_ds.images, image_size=size,
                                                          features=feats["encoder"][1], batch_size=batch_size, **opts)
            if rnd is not None:
                entry["random"] = representation_diagnostics(rnd, test_ds.images, image_size=size,
                                                             features=feats["random"][1], batch_size=batch_size,
                                                             **opts)
            if "pixels" in feats:
                entry["pixels"] = diagnostics_from_features(feats["pixels"][1], **opts)
        else:
            for name, (ftr, fte) in feats.items():
                entry[name] = run_on_features(protocol, ftr, ytr, fte, yte, num_classes, dict(opts))
        entry["settings"] = opts
        entry["time_s"] = round(time.perf_counter() - t1, 3)
        results[protocol] = entry
        _log(log, protocol, entry)
    results["meta"]["total_time_s"] = round(time.perf_counter() - t_all, 3)
    results = _jsonable(results)
    if out is not None:
        atomic_write_text(out, json.dumps(results, indent=2))
    return results


def _log(log: Any, key: str, entry: dict[str, Any]) -> None:
    if log is not None:
        log(f"{key}: done in {entry['time_s']:.1f}s")


def _fmt(v: Any, ci: Any = None) -> str:
    if not isinstance(v, int | float):
        return "-"
    s = f"{v:.2f}" if abs(v) < 1e4 else f"{v:.3g}"
    if isinstance(ci, int | float) and ci == ci:
        s += f" ±{ci:.2f}"
    return s


def table_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per (protocol, headline metric): protocol, metric, encoder, pixels, random, time_s."""
    rows = []
    for key, entry in results.items():
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


def format_suite_table(results: dict[str, Any]) -> str:
    rows = table_rows(results)
    cols = ["protocol", "metric", "encoder", "pixels", "random", "time_s"]
    width = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) if i < 2 else c.rjust(width[c]) for i, c in enumerate(cols))]
    for r in rows:
        lines.append("  ".join(r[c].ljust(width[c]) if i < 2 else r[c].rjust(width[c]) for i, c in enumerate(cols)))
    meta = results.get("meta", {})
    if meta:
        lines.append(f"\n{meta.get('checkpoint')} ({meta.get('backbone')}, {meta.get('image_size')} px); "
                     f"train {meta.get('n_train')}, test {meta.get('n_test')} images; "
                     f"features {meta.get('features_time_s', 0):.1f}s, total {meta.get('total_time_s', 0):.1f}s")
    return "\n".join(lines)
