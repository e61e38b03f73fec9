"""What a finished run says: readable numbers, the result against its baselines, the files, the next commands.

``end_of_run`` is called by the training loop once a run has finished: it adds the raw-pixel kNN baseline
of the online monitor to the summary (when the run has labelled ``data.val`` and the baseline is cheap or
already cached) and returns the text printed at the end of ``selfsup pretrain``::

    finished simclr on cnn-compact: 31 steps (2.6 epochs) in 4 min 3 s, 123 images/s
    online kNN top-1 on data/val: 41.08%  (raw pixels 41.25%: not beaten yet; train longer or try --preset)
    run folder runs/a: checkpoint.pt (resume), encoder.safetensors (the encoder), metrics.jsonl, summary.json
    next:
      selfsup eval all --checkpoint runs/a --train data/train --test data/val
      selfsup embed --checkpoint runs/a --data data/train --out runs/a/embeddings.safetensors
      selfsup report runs/a

``summary_rows`` turns a ``summary.json`` into (label, text) rows for the HTML report, without internal
fields.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import time
from pathlib import Path
from typing import Any

#: summary.json fields shown to people, in order, with their labels; the others are internal bookkeeping
FIELDS: tuple[tuple[str, str], ...] = (
    ("method", "method"),
    ("backbone", "backbone"),
    ("steps", "steps"),
    ("epochs_completed", "epochs"),
    ("final_loss", "final loss"),
    ("knn_top1", "online kNN top-1"),
    ("knn_baselines", "kNN baselines"),
    ("wall_time_s", "training time"),
    ("total_wall_time_s", "total time"),
    ("time_budget_min", "time budget"),
    ("images_per_s", "throughput"),
    ("skipped_images", "unreadable images skipped"),
    ("checkpoint", "checkpoint"),
)

#: above this many multiply-adds the raw-pixel kNN baseline is left to `selfsup eval` (unless cached)
BASELINE_MAX_MACS = 2e11


def fmt_duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 3 s``, ``1 h 02 min``."""
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60))} s"
    return f"{int(s // 3600)} h {int(round((s % 3600) / 60)):02d} min"


def fmt_number(v: Any) -> str:
    """Integers with thousands separators, floats with 4 significant digits (never ``3.206101655960083``)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if not math.isfinite(v):
        return str(v)
    if v == int(v) and abs(v) < 1e6:
        return f"{int(v):,}"
    return f"{v:.4g}"


def _field_text(key: str, v: Any, summary: dict[str, Any]) -> str:
    if key == "steps" and isinstance(summary.get("total_steps"), int) and summary["total_steps"] != v:
        return f"{v:,} of {summary['total_steps']:,} planned"
    if key in ("wall_time_s", "total_wall_time_s"):
        return fmt_duration(v)
    if key == "time_budget_min":
        return f"{fmt_number(v)} min"
    if key == "images_per_s":
        return f"{v:,.0f} images/s"
    if key == "knn_top1":
        return f"{v:.2f}%"
    if key == "knn_baselines" and isinstance(v, dict):
        return ", ".join(f"{name} {x:.2f}%" for name, x in v.items() if isinstance(x, int | float))
    if key == "epochs_completed":
        return f"{v:.1f}"
    return fmt_number(v)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, readable value) for the fields of :data:`FIELDS` present in ``summary``."""
    return [(label, _field_text(key, summary[key], summary)) for key, label in FIELDS
            if key in summary and summary[key] is not None]


# ------------------------------------------------------------------------------------------ baseline


def _baseline_cache_file(train: Any, val: Any, k: int, t: float) -> Path:
    from selfsup.eval.features import dataset_fingerprint, feature_cache_dir

    ident = json.dumps({"v": 1, "train": dataset_fingerprint(train), "val": dataset_fingerprint(val), "k": int(k),
                        "t": float(t), "pixels": "<=32px, train-mean centred"}, sort_keys=True)
    return feature_cache_dir() / f"pixel-knn-{hashlib.sha256(ident.encode()).hexdigest()[:20]}.json"


def pixel_knn_baseline(train: Any, val: Any, *, k: int, temperature: float, max_macs: float = BASELINE_MAX_MACS,
                       ) -> float | None:
    """Raw-pixel kNN top-1 (%) of ``val`` against ``train``, as ``selfsup eval knn`` computes it (pixels resized
    to 32 px when larger, centred with the train mean). Cached per (train, val, k, T) beside the feature cache;
    None when the data are unlabelled, or the search would take more than ``max_macs`` multiply-adds and is
    not cached yet (so a run's end is never held up by tens of seconds)."""
    import torch

    from selfsup.checkpoint import atomic_write_text
    from selfsup.eval.features import raw_pixels
    from selfsup.eval.knn import knn_accuracy

    if getattr(train, "labels", None) is None or getattr(val, "labels", None) is None or not hasattr(train, "images"):
        return None
    path = _baseline_cache_file(train, val, k, temperature)
    try:
        return float(json.loads(path.read_text())["top1"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    side = int(train.images.shape[1])
    psize = side if side <= 32 else 32
    macs = float(len(train)) * float(len(val)) * psize * psize * 3
    if macs > max_macs:
        return None
    ptr = raw_pixels(train.images, None if side <= 32 else 32)
    mean = ptr.mean(0)
    pte = raw_pixels(val.images, None if side <= 32 else 32) - mean
    num_classes = max(train.num_classes, val.num_classes)
    top1 = float(knn_accuracy(ptr - mean, torch.tensor(train.labels), pte, torch.tensor(val.labels), k=k,
                              temperature=temperature, num_classes=num_classes)["top1"])
    try:
        atomic_write_text(path, json.dumps({"top1": top1, "time": time.time()}))
    except OSError:
        pass
    return top1


# ------------------------------------------------------------------------------------------ text


def _q(x: Any) -> str:
    return shlex.quote(str(x))


def next_commands(run_dir: str | Path, data: str | None, val: str | None, *, data_labelled: bool = True) -> list[str]:
    """The commands worth running after a pretraining run (``eval`` only when there are labelled folders to
    give it: the training data for the classifiers and ``val`` to score them)."""
    run = _q(run_dir)
    cmds = []
    if val and data and data_labelled and not str(data).startswith("wds:"):
        cmds.append(f"selfsup eval all --checkpoint {run} --train {_q(data)} --test {_q(val)}")
    if data and not str(data).startswith("wds:"):
        cmds.append(f"selfsup embed --checkpoint {run} --data {_q(data)} --out {_q(Path(run_dir) / 'embeddings.safetensors')}")
    cmds.append(f"selfsup report {run}")
    return cmds


def format_end_of_run(summary: dict[str, Any], run_dir: str | Path, *, data: str | None = None,
                      val: str | None = None, data_labelled: bool = True) -> str:
    """The end-of-run text (see the module docstring) from a run's summary dict."""
    steps, epochs = summary.get("steps", 0), summary.get("epochs_completed")
    head = f"finished {summary.get('method', '?')} on {summary.get('backbone', '?')}: {fmt_number(steps)} steps"
    if isinstance(epochs, int | float):
        head += f" ({epochs:.1f} epochs)"
    if isinstance(summary.get("wall_time_s"), int | float):
        head += f" in {fmt_duration(summary['wall_time_s'])}"
    if isinstance(summary.get("images_per_s"), int | float):
        head += f", {summary['images_per_s']:,.0f} images/s"
    lines = [head]
    knn = summary.get("knn_top1")
    if isinstance(knn, int | float):
        line = f"online kNN top-1 on {val or 'data.val'}: {knn:.2f}%"
        pix = (summary.get("knn_baselines") or {}).get("raw pixels")
        if isinstance(pix, int | float):
            verdict = (f"+{knn - pix:.2f} points over raw pixels ({pix:.2f}%)" if knn > pix
                       else f"raw pixels score {pix:.2f}%: not beaten yet; train longer, or try a --preset")
            line += f"  ({verdict})"
        else:
            line += "  (`selfsup eval knn` prints it beside the raw-pixel and random-encoder baselines)"
        lines.append(line)
    run = Path(run_dir)
    extra = ", tensorboard/ (tensorboard --logdir)" if (run / "tensorboard").is_dir() else ""
    lines.append(f"run folder {run}: checkpoint.pt (resume with --resume), encoder.safetensors (the encoder alone), "
                 f"metrics.jsonl, summary.json, config.yaml{extra}")
    lines.append("next:")
    lines.extend(f"  {c}" for c in next_commands(run, data, val, data_labelled=data_labelled))
    return "\n".join(lines)


def end_of_run(summary: dict[str, Any], cfg: Any, train: Any, val: Any) -> str:
    """Add the raw-pixel kNN baseline to ``summary`` (key ``knn_baselines``) when the run has an online kNN and
    the baseline is cheap or cached, and return the end-of-run text. ``cfg`` is the run's PretrainConfig."""
    if "knn_top1" in summary and val is not None:
        try:
            pix = pixel_knn_baseline(train, val, k=int(cfg.train.knn_k), temperature=float(cfg.train.knn_t))
        except Exception:  # a baseline must never cost a finished run: skip it
            pix = None
        if pix is not None:
            summary["knn_baselines"] = {"raw pixels": round(pix, 4)}
    return format_end_of_run(summary, cfg.out, data=cfg.data.path, val=cfg.data.val,
                             data_labelled=getattr(train, "labels", None) is not None)
