"""``selfsup eval PROTOCOL``: evaluate a pretrained encoder on labelled data."""

from __future__ import annotations

import argparse
import json
from typing import Any

EXAMPLE = """example:
  selfsup eval knn --checkpoint runs/a --train data/train --test data/test
  selfsup eval linear --checkpoint runs/a/checkpoint.pt --train builtin:mnist:train --test builtin:mnist:test

Each result is printed beside two baselines: the same protocol on raw pixels and on a randomly
initialised encoder of the same architecture, so that you see what pretraining bought."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="run folder, checkpoint.pt or encoder.safetensors")
    p.add_argument("--train", required=True, help="labelled class-folder tree (or builtin:NAME:train)")
    p.add_argument("--test", required=True, help="labelled class-folder tree (or builtin:NAME:test)")
    p.add_argument("--backbone", help="assert the checkpoint holds this backbone")
    p.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch size")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--no-baselines", action="store_true", help="skip the raw-pixel and random-encoder baselines")
    p.add_argument("--strict", action="store_true", help="fail on the first corrupt image")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("eval", help="evaluate an encoder (knn, linear)", epilog=EXAMPLE, formatter_class=formatter)
    proto = p.add_subparsers(dest="protocol", metavar="PROTOCOL")
    proto.required = True
    k = proto.add_parser("knn", help="weighted kNN (Wu et al. 2018): cosine, k=200, T=0.1",
                         epilog=EXAMPLE, formatter_class=formatter)
    _common(k)
    k.add_argument("--k", type=int, default=200)
    k.add_argument("--temperature", type=float, default=0.1)
    k.set_defaults(func=run)
    lin = proto.add_parser("linear", help="linear probe on frozen, cached features; top-1 and top-5",
                           epilog=EXAMPLE, formatter_class=formatter)
    _common(lin)
    lin.add_argument("--epochs", type=int, default=100)
    lin.set_defaults(func=run)


def format_table(protocol: str, results: dict[str, dict[str, Any]]) -> str:
    names = {"encoder": "pretrained encoder", "pixels": "raw pixels (baseline)", "random": "random encoder (baseline)"}
    lines = [f"{protocol:<28}{'top-1 %':>10}{'top-5 %':>10}"]
    for key, res in results.items():
        if isinstance(res, dict) and "top1" in res:
            lines.append(f"{names.get(key, key):<28}{res['top1']:>10.2f}{res.get('top5', float('nan')):>10.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..eval.api import evaluate

    kwargs: dict[str, Any] = {}
    if args.protocol == "knn":
        kwargs = {"k": args.k, "temperature": args.temperature}
    elif args.protocol == "linear":
        kwargs = {"epochs": args.epochs}
    results = evaluate(args.protocol, checkpoint=args.checkpoint, train=args.train, test=args.test,
                       backbone=args.backbone, batch_size=args.batch_size, precision=args.precision,
                       baselines=not args.no_baselines, strict=args.strict, **kwargs)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_table(args.protocol, results))
    return 0
