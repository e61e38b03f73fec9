"""Does a refactor change what a run computes? Run every registered method for a few tiny steps and print, per
method, every logged loss and the sum of every floating-point tensor of the final checkpoint's method state.

Run it under two source trees and compare the JSON (issue 24, "behaviour does not change")::

    .venv/bin/python benchmarks/check_same_trajectory.py --src /tmp/base --out /tmp/cmp-base > base.json
    .venv/bin/python benchmarks/check_same_trajectory.py --src . --out /tmp/cmp-new > new.json
    cmp base.json new.json

fp32, one thread, cnn-compact width 4 (vit-tiny patch 4 for the masked methods), 16 px, batch 8, 4 steps on
2 x 8 synthetic class-folder images (the test helpers' ``tiny_config``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=".", help="the checkout to run (its src/ and tests/helpers.py)")
    ap.add_argument("--out", required=True, help="scratch folder for the runs")
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    root = Path(args.src).resolve()
    sys.path[:0] = [str(root / "src"), str(root)]
    import torch

    torch.set_num_threads(1)
    from tests.helpers import make_class_folder, tiny_config

    from selfsup.methods import registry
    from selfsup.training.loop import pretrain

    out = Path(args.out)
    data = out / "data"
    if not data.exists():
        make_class_folder(data, classes=2, per_class=8)
    res: dict[str, list[float]] = {}
    for name in sorted(registry()):
        run = out / name
        shutil.rmtree(run, ignore_errors=True)
        cfg = tiny_config(str(data), str(run), method=name, max_steps=args.steps, epochs=2)
        cfg.train.precision = "fp32"
        if registry()[name].family == "masked":
            cfg.backbone.name, cfg.backbone.patch_size = "vit-tiny", 4
        pretrain(cfg)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        res[name] = [r["loss"] for r in rows if "loss" in r]
        sd = torch.load(run / "checkpoint.pt", weights_only=True)["method"]
        res[name].append(float(sum(v.double().sum() for v in sd.values() if v.is_floating_point())))
        res[name + ":keys"] = list(sd)  # type: ignore[assignment]
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
