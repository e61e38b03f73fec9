"""``selfsup report RUN_DIR``: a self-contained HTML report of a run (curves, evaluation, embeddings)."""

from __future__ import annotations

import argparse
from typing import Any

from selfsup.config.validate import int_range

EXAMPLE = """example:
  selfsup report runs/demo                       # -> runs/demo/report.html
  selfsup report runs/a --test data/test --out a.html
  selfsup report runs/photos --test ~/more-photos     # a plain folder: no labels needed

The HTML file needs no network (inline CSS, figures as embedded PNG). It shows the run summary, the resolved
config, loss / learning-rate / throughput curves, the online kNN curve, the table of RUN/eval.json
(`selfsup eval all`), a 2-D map of the embeddings (UMAP if installed, else t-SNE, else PCA; coloured by class
folder, or by k-means cluster when the folder has no labels), a nearest-neighbour image grid and, for FAMT
runs, RUN/masks.png. Images for the map and grid: --test, else the run config's data.val, else its data.path."""


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a run folder", epilog=EXAMPLE,
                       formatter_class=formatter)
    p.add_argument("run", metavar="RUN_DIR", help="run folder written by `selfsup pretrain`")
    p.add_argument("--out", help="HTML file (default RUN_DIR/report.html)")
    p.add_argument("--test", help="image folder for the embedding map and neighbour grid, labelled or not "
                   "(default: the run's data.val, else its training data)")
    p.add_argument("--max-points", type=int_range(2), default=1500, help="images sampled for the map and the grid")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfsup.report import report

    print(f"wrote {report(args.run, args.out, test=args.test, max_points=args.max_points)}")
    return 0
