"""``selfsup report RUN_DIR``: a self-contained HTML report of a run (curves, evaluation, embeddings)."""

from __future__ import annotations

import argparse
from pathlib import Path
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


def check_run_folder(run: Path) -> None:
    """Refuse anything but a run folder, and name any of its files that cannot be read, before writing."""
    import json

    from selfsup.errors import DataError
    from selfsup.runlock import is_run_folder

    if not run.is_dir():
        raise DataError(f"run folder not found: {run} (pass the --out folder of `selfsup pretrain`)")
    if not is_run_folder(run):
        raise DataError(f"{run} is not a selfsup run folder (no config.yaml, checkpoint.pt or metrics.jsonl); pass "
                        "the --out folder of `selfsup pretrain`")
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "eval.json"):
        f = run / name
        if not f.exists():
            continue
        try:
            text = f.read_text(encoding="utf-8")
            if name.endswith(".json") and not isinstance(json.loads(text), dict):
                raise ValueError("not a JSON object")
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
            raise DataError(f"{f}: cannot read it ({reason}); delete or restore it and rerun") from None


def run(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from selfsup.config.validate import check_output_file
    from selfsup.report import write_report
    from selfsup.runlock import run_folder_lock

    run_dir = Path(args.run)
    check_run_folder(run_dir)
    out = check_output_file(args.out or run_dir / "report.html", "--out", (".html", ".htm"))
    into_run = out.absolute().parent == run_dir.absolute()
    # writing into the run folder: hold it, so no pretrain writes there meanwhile
    with run_folder_lock(run_dir, "run folder") if into_run else nullcontext():
        path = write_report(run_dir, out, test=args.test, max_points=args.max_points)
    print(f"wrote {path}")
    return 0
