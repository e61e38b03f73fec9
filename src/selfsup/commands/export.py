"""``selfsup export``: the encoder as a TorchScript or ONNX file, checked against PyTorch."""

from __future__ import annotations

import argparse
import json
from typing import Any

EXAMPLE = """example:
  selfsup export --checkpoint runs/a --format onnx --out encoder.onnx
  selfsup export --checkpoint runs/a --format torchscript --out encoder.pt

The exported model takes float32 images [B, 3, S, S] (RGB in [0, 1], normalised with the ImageNet mean/std;
S = the run's image size) and returns features [B, F]; FILE.json beside it records S, mean, std and F.
The file is loaded back and compared with the PyTorch encoder before the command succeeds (ONNX: with
onnxruntime when installed). ONNX needs `pip install 'selfsup[onnx]'`."""


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("export", help="export an encoder to ONNX or TorchScript (checked against PyTorch)",
                       epilog=EXAMPLE, formatter_class=formatter)
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint.pt or encoder.safetensors")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="file format")
    p.add_argument("--out", required=True, help="output file, e.g. encoder.onnx or encoder.pt")
    p.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the check")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from selfsup.export import export_encoder

    res = export_encoder(args.checkpoint, args.out, format=args.format, atol=args.atol)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    check = (f"checked with {res['checked_with']}: max |difference| {res['max_abs_diff']:.2g}"
             if res["max_abs_diff"] is not None else res["checked_with"])
    print(f"wrote {res['path']} ({res['format']}: images [B, 3, {res['image_size']}, {res['image_size']}] -> "
          f"features [B, {res['num_features']}]; {check}); metadata {res['metadata']}")
    return 0
