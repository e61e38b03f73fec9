"""``selfsup embed``: write the features of every image in a folder, with the file path of each row."""

from __future__ import annotations

import argparse
from typing import Any

from selfsup.config.validate import int_range

EXAMPLE = """example:
  selfsup embed --checkpoint runs/a --data ~/photos --out photos.safetensors
  selfsup embed --checkpoint runs/a --data ~/photos --out photos.npz

The .safetensors file holds a float32 tensor `features` [N, F] (and `labels` for class folders); the row
paths are in its metadata (`paths`, JSON). The .npz file holds `features`, `paths` (and `labels`)."""


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("embed", help="embed a folder of images with a pretrained encoder", epilog=EXAMPLE,
                       formatter_class=formatter)
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint.pt or encoder.safetensors")
    p.add_argument("--data", required=True, help="image folder (labelled or not) or builtin:NAME")
    p.add_argument("--out", required=True, help="output file: .safetensors or .npz")
    p.add_argument("--batch-size", type=int_range(1), default=256, help="images per forward pass")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the hardware has it natively, else fp32")
    p.add_argument("--strict", action="store_true", help="fail on the first corrupt image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfsup.embed import embed_folder

    out = embed_folder(args.checkpoint, args.data, args.out, batch_size=args.batch_size,
                       precision=args.precision, strict=args.strict)
    print(f"wrote {out['n']} x {out['dim']} features to {out['path']}"
          + (f" ({out['skipped']} unreadable images skipped)" if out["skipped"] else ""))
    return 0
