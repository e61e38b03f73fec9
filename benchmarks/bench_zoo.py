"""CIFAR-10 kNN top-1 for every joint-embedding method under the same CPU wall-clock budget (issue 4).

Each method runs ``selfsup pretrain --preset cpu-32px --method NAME --time-budget MIN --val test`` in its own
process, one after the other on an otherwise idle machine. The budget covers everything after the process
starts (imports, pretraining, the final kNN with k=200, T=0.1 on the test split, train split as the bank).
The preset fixes the hardware choices (compact CNN width 32, batch 256, bf16, channels_last, short warm-up);
each method keeps its own paper recipe for the optimiser, LR and views (``commands/pretrain.py:preset_layer``).

Results are saved per method under --out as they finish (a cut-off run keeps what it measured);
``--render`` rebuilds the RESULTS.md section from them.

    mkdir -p /tmp/cifar && tar -xzf ../shared/data/cifar10-jpg.tar.gz -C /tmp/cifar
    .venv/bin/python benchmarks/bench_zoo.py --minutes 4
    .venv/bin/python benchmarks/bench_zoo.py --minutes 1 --methods simclr,byol --no-write   # smoke check
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

METHODS = ["simclr", "mocov2", "mocov3", "nnclr", "byol", "simsiam", "dino", "barlowtwins", "vicreg", "swav",
           "rotnet"]

# Published CIFAR-10 numbers on GPUs, ResNet-18 with the CIFAR stem, for scale only (hours of GPU time, not
# comparable with minutes of CPU). None = the project does not report that method.
# lightly: docs/source/getting_started/benchmarks.rst, CIFAR-10 table, kNN (k=200) test accuracy, batch 512,
#   200 epochs, best epoch ("Moco" there is a MoCo-v2-style memory-bank model).
# solo-learn: README "CIFAR-10" table, Acc@1 of the online linear probe, 1000 epochs ("MoCo V2+").
PUBLISHED: dict[str, dict[str, float | None]] = {
    "simclr": {"lightly_knn_200ep": 84.8, "solo_linear_1000ep": 90.74},
    "mocov2": {"lightly_knn_200ep": 84.7, "solo_linear_1000ep": 92.94},
    "mocov3": {"lightly_knn_200ep": None, "solo_linear_1000ep": 93.10},
    "nnclr": {"lightly_knn_200ep": 81.5, "solo_linear_1000ep": 91.88},
    "byol": {"lightly_knn_200ep": 86.8, "solo_linear_1000ep": 92.58},
    "simsiam": {"lightly_knn_200ep": 76.4, "solo_linear_1000ep": 90.51},
    "dino": {"lightly_knn_200ep": 81.3, "solo_linear_1000ep": 89.52},
    "barlowtwins": {"lightly_knn_200ep": 81.9, "solo_linear_1000ep": 92.10},
    "vicreg": {"lightly_knn_200ep": None, "solo_linear_1000ep": 92.07},
    "swav": {"lightly_knn_200ep": 84.2, "solo_linear_1000ep": 89.17},
    "rotnet": {"lightly_knn_200ep": None, "solo_linear_1000ep": None},
}


def run_method(method: str, root: Path, minutes: float, out: Path, preset: str) -> dict[str, Any]:
    run = out / method
    if run.exists():
        import shutil

        shutil.rmtree(run)
    cmd = [sys.executable, "-m", "selfsup", "pretrain", "--preset", preset, "--method", method,
           "--data", str(root / "train"), "--val", str(root / "test"), "--time-budget", str(minutes),
           "--knn-every", "0", "--no-progress", "--out", str(run)]
    before = common.load()
    t0 = time.perf_counter()
    with common.note(" ".join(cmd[2:])):
        proc = subprocess.run(cmd, cwd=common.ROOT, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    s = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    err = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]
    return {"method": method, "knn_top1": s.get("knn_top1"), "steps": s.get("steps"),
            "epochs": s.get("epochs_completed"), "images_per_s": s.get("images_per_s"),
            "final_loss": s.get("final_loss", s.get("loss")), "rankme": s.get("rankme"),
            "wall_s": round(wall, 1), "rc": proc.returncode, "error": err,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "load_before": before, "load_after": common.load(), "minutes": minutes}


def render(out: Path, preset: str) -> str:
    rows = []
    results = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    minutes = {r["minutes"] for r in results.values()}
    for m in METHODS:
        r = results.get(m)
        if r is None:
            continue
        pub = PUBLISHED.get(m, {})
        rows.append({
            "method": m,
            "kNN top-1 %": round(r["knn_top1"], 2) if r["knn_top1"] is not None else f"FAILED ({r['error']})",
            "steps": r["steps"], "epochs": r["epochs"], "img/s": r["images_per_s"], "wall s": r["wall_s"],
            "load before/after": f"{r['load_before']} / {r['load_after']}",
            "lightly kNN (GPU, 200 ep)": pub.get("lightly_knn_200ep") or "-",
            "solo-learn linear (GPU, 1000 ep)": pub.get("solo_linear_1000ep") or "-",
        })
    cols = ["method", "kNN top-1 %", "steps", "epochs", "img/s", "wall s", "load before/after",
            "lightly kNN (GPU, 200 ep)", "solo-learn linear (GPU, 1000 ep)"]
    budget = ", ".join(f"{x:g}" for x in sorted(minutes))
    return common.header({
        "budget": f"{budget} min per method, covering process start -> pretraining -> final kNN "
                  "(k=200, T=0.1, CIFAR-10 test, 50,000 train images as the bank)",
        "recipe": f"--preset {preset} --method NAME: compact CNN width 32, 32 px, batch 256, bf16, warm-up 0.25 "
                  "epoch; optimiser/LR/views from each method's paper recipe",
    }) + "\n\n" + common.table(rows, cols)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="wall-clock budget per method")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--preset", default="cpu-32px")
    ap.add_argument("--out", default="/tmp/selfsup-zoo", help="run folders and per-method results")
    ap.add_argument("--render", action="store_true", help="only rebuild the RESULTS.md section from --out")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    title = "Method zoo: CIFAR-10 kNN under an equal CPU budget (bench_zoo.py)"
    if not args.render:
        root = common.ensure_cifar()
        if root is None:
            sys.exit(f"CIFAR-10 not found: extract {common.CIFAR_TAR} to {common.CIFAR_DIR.parent}")
        out.mkdir(parents=True, exist_ok=True)
        from selfsup.data import open_dataset

        with common.note("uint8 cache of CIFAR-10 (one-off, outside the budget)"):
            open_dataset(str(root / "train"), 32, progress=False)
            open_dataset(str(root / "test"), 32, progress=False)
        for m in [x.strip() for x in args.methods.split(",") if x.strip()]:
            r = run_method(m, root, args.minutes, out, args.preset)
            common.write_text(out / f"{m}.json", json.dumps(r, indent=2))
            print(json.dumps(r), flush=True)
            if not args.no_write:
                common.update_section(title, render(out, args.preset))
    text = render(out, args.preset)
    print(text)
    if not args.no_write:
        common.update_section(title, text)


if __name__ == "__main__":
    main()
