"""``selfsup report RUN_DIR``: a self-contained HTML report of a run (curves, evaluation, embeddings)."""

from __future__ import annotations

import argparse
from typing import Any

EXAMPLE = """example:
  selfsup report runs/demo                       # -> runs/demo/report.html
  selfsup report runs/a --test data/test --out a.html

The HTML file needs no network (inline CSS, figures as embedded PNG). It shows the resolved config, loss /
learning-rate / throughput curves, the online kNN curve, the table of RUN/eval.json (`selfsup eval all`),
a 2-D map of the test embeddings (UMAP if installed, else t-SNE), a nearest-neighbour image grid and,
for FAMT runs, RUN/masks.png. Test data: --test, else the run config's data.val."""


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a run folder", epilog=EXAMPLE,
                       formatter_class=formatter)
    p.add_argument("run", metavar="RUN_DIR", help="run folder written by `selfsup pretrain`")
    p.add_argument("--out", help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--test", help="labelled test data for the embedding map and neighbour grid (default: data.val)")
    p.add_argument("--max-points", type=int, default=1500, help="test images used for the map and the grid")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfsup.report import write_report

    path = write_report(args.run, args.out, test=args.test, max_points=args.max_points)
    print(f"wrote {path}")
    return 0
