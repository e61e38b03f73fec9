"""DDP scaling benchmark: SimCLR on a small backbone, 1 process vs 2 processes (torchrun, gloo, CPU).

Runs the real CLI (``selfsup pretrain``) three times on the same data, global batch and steps:

- ``1p x 1t``: one process, one intra-op thread (the per-process unit of work);
- ``1p x Nt``: one process using every core (what a single process can do on this machine);
- ``Np x 1t``: ``torchrun --nproc_per_node N``, one thread each (no oversubscription).

Throughput is the median of the per-step ``images_per_s`` rows of ``metrics.jsonl`` after ``--warmup``
steps (start-up, data loading and the first allocations are excluded). Scaling efficiency is
``ips(Np x 1t) / (N * ips(1p x 1t))``; ``ips(Np x 1t) / ips(1p x Nt)`` says whether DDP beats intra-op
threading for the same cores. Run on an otherwise idle machine; the load average is recorded because a
shared machine distorts every number.

    .venv/bin/python benchmarks/bench_ddp.py --steps 30 --batch-size 128 --out bench_ddp.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_one(nproc: int, threads: int, args: argparse.Namespace, workdir: Path) -> dict:
    out = workdir / f"run_{nproc}p{threads}t"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [*(launcher if nproc > 1 else [sys.executable]), "-m", "selfsup", "pretrain", "--data", args.data,
           "--method", "simclr", "--backbone", args.backbone, "--image-size", str(args.image_size),
           "--batch-size", str(args.batch_size), "--epochs", "1000", "--max-steps", str(args.steps),
           "--device", "cpu", "--precision", args.precision, "--no-progress", "--out", str(out),
           "--set", f"train.threads={threads}", "--set", f"backbone.width={args.width}",
           "--set", "train.log_every=1", "--set", "train.knn_every=0", "--set", "train.save_every=0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{nproc}p x {threads}t failed:\n{r.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ips = [x["images_per_s"] for x in rows if "loss" in x and x["step"] > args.warmup]
    return {"processes": nproc, "threads_per_process": threads, "images_per_s": round(statistics.median(ips), 1),
            "images_per_s_p90": round(sorted(ips)[int(0.9 * (len(ips) - 1))], 1), "steps_timed": len(ips),
            "wall_s_incl_startup": round(wall, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="builtin:synthetic")
    p.add_argument("--backbone", default="cnn-compact")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=128, help="GLOBAL batch (split over processes)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        one_1 = run_one(1, 1, args, Path(tmp))
        one_n = run_one(1, args.nproc, args, Path(tmp))
        many = run_one(args.nproc, 1, args, Path(tmp))
    res = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "cores": os.cpu_count(), "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "runs": [one_1, one_n, many],
        "scaling_efficiency": round(many["images_per_s"] / (args.nproc * one_1["images_per_s"]), 3),
        "ddp_vs_threads": round(many["images_per_s"] / one_n["images_per_s"], 3),
    }
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
