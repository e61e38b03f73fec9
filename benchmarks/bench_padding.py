"""Mixed orientations in one batch: memory and time of the views and of the eval transform on a padded frame.

A native-aspect batch is padded to its tallest and widest image; panoramas beside portraits make that frame
about 10x the images' pixels. The torch view path and ``eval_transform`` now resample one group of similar
shapes at a time (``selfsup.augment.sampling.frame_chunks``) instead of converting the whole frame to float.
This script measures both ways side by side, each in its own child process (peak RSS is per process):
the whole-frame way is today's code with ``frame_chunks`` forced to return None.

    .venv/bin/python benchmarks/bench_padding.py [--side 96] [--batch 64] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
import selfsup.augment.views as views
from selfsup.augment.ops import eval_transform, to_float_nchw
from selfsup.augment.recipes import simclr_recipe
from selfsup.data.images import pad_rows
mode, what, side, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "whole":
    views.frame_chunks = lambda sizes: None
shapes = [(side, 10 * side), (10 * side, side), (side, side), (side, 4 * side // 3), (4 * side // 3, side)]
rng = np.random.default_rng(0)
rows = [rng.integers(0, 256, shapes[i % len(shapes)] + (3,), dtype=np.uint8) for i in range(batch)]
x, sz = pad_rows(rows)
x, sz = torch.from_numpy(x), torch.from_numpy(sz)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
if what == "views":
    views.make_views(x, simclr_recipe(side), torch.Generator().manual_seed(0), sizes=sz, backend="torch")
else:  # "whole": the frame made float first, as eval_transform did before
    eval_transform(to_float_nchw(x, torch.float32) if mode == "whole" else x, side, sizes=sz)
sec = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
own = float((sz[:, 0] * sz[:, 1]).sum() * 3) / 2**20
print(json.dumps({"frame_mib": x.numel() / 2**20, "own_mib": own, "added_mib": peak - before, "sec": sec}))
"""


def child(mode: str, what: str, side: int, batch: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(common.ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, what, str(side), str(batch)], env=env,
                         capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=96, help="shorter side of every image (px)")
    ap.add_argument("--batch", type=int, default=64, help="images in the batch (10:1, 1:10, 1:1, 4:3, 3:4 in turn)")
    ap.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = ap.parse_args()
    common.set_threads()
    rows = []
    for what in ("views", "eval"):
        for mode in ("whole", "groups"):
            r = child(mode, what, args.side, args.batch)
            rows.append({"step": "2 SimCLR views (torch path)" if what == "views" else "eval_transform",
                         "frame": "whole padded frame" if mode == "whole" else "groups (this)",
                         "padded batch MiB": r["frame_mib"], "images' own MiB": r["own_mib"],
                         "peak RSS added MiB": r["added_mib"], "seconds": r["sec"]})
            print(rows[-1], flush=True)
    cols = ["step", "frame", "padded batch MiB", "images' own MiB", "peak RSS added MiB", "seconds"]
    body = "\n\n".join([common.header(), (
        f"One uint8 batch of {args.batch} images, shorter side {args.side} px, shapes 10:1, 1:10, 1:1, 4:3 and 3:4 "
        "in turn, padded to its tallest and widest image (the frame). Each row is its own child process; "
        "'peak RSS added' is the process's peak during the call minus its peak before it."), common.table(rows, cols),
        "The uint8 padded batch itself (what `gather` builds, and what the CPU kernel path reads in place) is "
        "unchanged; the groups remove the float copies of the frame that the torch path (CUDA, `--colour "
        "linear`, `view_backend torch`) and every native-aspect evaluation made."])
    print(body)
    if not args.no_write:
        common.update_section("Mixed orientations in one batch (bench_padding.py)", body)


if __name__ == "__main__":
    main()
