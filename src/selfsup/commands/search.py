"""``selfsup search``: nearest neighbours of query images in an embeddings file from ``selfsup embed``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from selfsup.config.validate import int_range
from selfsup.search import search

EXAMPLE = """example:
  selfsup embed --checkpoint runs/a --data ~/photos --out photos.safetensors
  selfsup search --index photos.safetensors --query ~/query.jpg -k 10
  selfsup search --index photos.safetensors --query ~/queries/ -k 5 --json

The query images are embedded with the encoder that wrote the index (its path is stored in the
.safetensors metadata; pass --checkpoint for .npz indexes or to override). Scores are cosine similarities."""


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("search", help="nearest neighbours of images in an embeddings index", epilog=EXAMPLE,
                       formatter_class=formatter)
    p.add_argument("--index", required=True, help="embeddings file written by `selfsup embed` (.safetensors/.npz)")
    p.add_argument("--query", required=True, help="an image file or a folder of images")
    p.add_argument("-k", type=int_range(1), default=10, help="neighbours per query")
    p.add_argument("--checkpoint", help="encoder to embed the queries (default: the one recorded in the index)")
    p.add_argument("--batch-size", type=int_range(1), default=256, help="images per forward pass (query folders)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the hardware has it natively, else fp32")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    res = search(args.index, args.query, k=args.k, checkpoint=args.checkpoint, batch_size=args.batch_size,
                 precision=args.precision)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    for item in res:
        print(f"query: {item['query']}")
        print(f"  {'rank':>4}  {'score':>7}  path")
        for n in item["neighbours"]:
            cls = f"  [{n['class']}]" if "class" in n else ""
            print(f"  {n['rank']:>4}  {n['score']:>7.4f}  {n['path']}{cls}")
    return 0
