"""``selfsup eval PROTOCOL``: evaluate a pretrained encoder on labelled data."""

from __future__ import annotations

import argparse
import json
from typing import Any

from selfsup.config.validate import device_name, float_range, int_list, int_range

EXAMPLE = """example:
  selfsup eval knn --checkpoint runs/a --train data/train --test data/test
  selfsup eval linear --checkpoint runs/a/checkpoint.pt --train builtin:mnist:train --test builtin:mnist:test
  selfsup eval all --checkpoint runs/a --train builtin:mnist:train --test builtin:mnist:test   # -> runs/a/eval.json
  selfsup eval finetune --labels 1%,10% --checkpoint torchvision:resnet18:/models/r18.pth --train ... --test ...

--checkpoint takes a run folder, checkpoint.pt, encoder.safetensors, or a torchvision/timm model with LOCAL
weights: torchvision:NAME:/path/weights.pth or timm:NAME:/path/weights.safetensors (optional :SIZE suffix).

Each result is printed beside two baselines: the same protocol on raw pixels and on a randomly
initialised encoder of the same architecture, so that you see what pretraining bought."""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="run folder, checkpoint.pt, encoder.safetensors, torchvision:NAME:WEIGHTS or timm:NAME:WEIGHTS")
    p.add_argument("--train", required=True, help="labelled class-folder tree (or builtin:NAME:train)")
    p.add_argument("--test", required=True, help="labelled class-folder tree (or builtin:NAME:test)")
    p.add_argument("--backbone", help="assert the checkpoint holds this backbone")
    p.add_argument("--batch-size", type=int_range(1), default=256, help="feature-extraction batch size")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--no-baselines", action="store_true", help="skip the raw-pixel and random-encoder baselines")
    p.add_argument("--strict", action="store_true", help="fail on the first corrupt image")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("eval", help="evaluate an encoder (knn, linear, finetune, fewshot, retrieval, clustering, "
                       "diagnostics, all)", epilog=EXAMPLE, formatter_class=formatter)
    proto = p.add_subparsers(dest="protocol", metavar="PROTOCOL")
    proto.required = True
    k = proto.add_parser("knn", help="weighted kNN (Wu et al. 2018): cosine, k=200, T=0.1",
                         epilog=EXAMPLE, formatter_class=formatter)
    _common(k)
    k.add_argument("--k", type=int_range(1), default=200)
    k.add_argument("--temperature", type=float_range(0, open_lo=True), default=0.1)
    k.set_defaults(func=run)
    lin = proto.add_parser("linear", help="linear probe on frozen, cached features; top-1 and top-5",
                           epilog=EXAMPLE, formatter_class=formatter)
    _common(lin)
    lin.add_argument("--epochs", type=int_range(1), default=100)
    lin.set_defaults(func=run)
    helps = {
        "finetune": "fine-tune encoder + linear head on a stratified label fraction (SimCLR v2 / BYOL semi-sup.)",
        "fewshot": "N-way K-shot episodes on test features: prototype + logistic regression, mean and 95%% CI",
        "retrieval": "test queries vs train gallery by cosine similarity: mAP, recall@1/5/10",
        "clustering": "k-means on test features: NMI, ARI, Hungarian-matched accuracy",
        "diagnostics": "RankMe, alignment/uniformity (two augmented views), feature std",
        "all": "every protocol; one table; writes eval.json with full settings and timings",
    }
    for name, text in helps.items():
        q = proto.add_parser(name, help=text, epilog=EXAMPLE, formatter_class=formatter)
        _common(q)
        q.add_argument("--device", type=device_name, default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
        q.add_argument("--out", help="write the result JSON here (eval all: default RUN/eval.json for a run "
                       "folder, else ./eval.json)")
        if name in ("finetune", "all"):
            q.add_argument("--labels", default="10%", help="label fraction(s), comma-separated: 1%%,10%%,100%%")
            q.add_argument("--blocks", type=_blocks, default="all",
                           help="'all' or k = fine-tune only the last k blocks")
            q.add_argument("--ft-epochs", type=int_range(1), default=10, help="fine-tuning epochs over the labelled subset")
            q.add_argument("--ft-min-steps", type=int_range(0), default=100, help="at least this many fine-tuning steps")
            q.add_argument("--ft-lr", type=float_range(0, open_lo=True), default=1e-3)
        if name in ("fewshot", "all"):
            q.add_argument("--n-way", type=int_range(2), default=5)
            q.add_argument("--k-shots", type=int_list(1), default="1,5", help="comma-separated shots per class")
            q.add_argument("--n-query", type=int_range(1), default=15)
            q.add_argument("--episodes", type=int_range(1), default=600)
        if name == "all":
            q.add_argument("--k", type=int_range(1), default=200, help="kNN neighbours")
            q.add_argument("--temperature", type=float_range(0, open_lo=True), default=0.1, help="kNN temperature")
            q.add_argument("--epochs", type=int_range(1), default=100, help="linear-probe L-BFGS iterations")
            q.add_argument("--skip", default="", help="comma-separated protocols to leave out of 'all'")
        q.set_defaults(func=run_suite)


def _blocks(text: str) -> str | int:
    """``--blocks``: 'all' or a positive integer."""
    return "all" if text.strip() == "all" else int_range(1)(text)


def format_table(protocol: str, results: dict[str, dict[str, Any]]) -> str:
    names = {"encoder": "pretrained encoder", "pixels": "raw pixels (baseline)", "random": "random encoder (baseline)"}
    lines = [f"{protocol:<28}{'top-1 %':>10}{'top-5 %':>10}"]
    for key, res in results.items():
        if isinstance(res, dict) and "top1" in res:
            lines.append(f"{names.get(key, key):<28}{res['top1']:>10.2f}{res.get('top5', float('nan')):>10.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from selfsup.eval.api import evaluate

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


def suite_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    opts: dict[str, dict[str, Any]] = {}
    if hasattr(args, "blocks"):
        blocks = args.blocks
        opts["finetune"] = {"blocks": blocks, "epochs": args.ft_epochs, "min_steps": args.ft_min_steps,
                            "lr": args.ft_lr}
    if hasattr(args, "n_way"):
        shots = args.k_shots if isinstance(args.k_shots, list) else int_list(1)(str(args.k_shots))
        opts["fewshot"] = {"n_way": args.n_way, "k_shots": shots,
                           "n_query": args.n_query, "episodes": args.episodes}
    if args.protocol == "all":
        opts["knn"] = {"k": args.k, "temperature": args.temperature}
        opts["linear"] = {"epochs": args.epochs}
    return opts


def run_suite(args: argparse.Namespace) -> int:
    import sys
    from contextlib import nullcontext
    from pathlib import Path

    from selfsup.config.validate import check_output_file
    from selfsup.errors import ConfigError
    from selfsup.eval.suite import PROTOCOLS, evaluate_suite, format_suite_table
    from selfsup.runlock import run_folder_lock

    if args.protocol == "all":
        skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        bad = skip - set(PROTOCOLS)
        if bad:
            raise ConfigError(f"--skip {sorted(bad)[0]}: not a protocol; choose from {', '.join(PROTOCOLS)}")
        protocols = [p for p in PROTOCOLS if p not in skip]
        if not protocols:
            raise ConfigError(f"--skip {args.skip}: leaves no protocol to run")
        out = args.out
        if out is None:
            ck = Path(args.checkpoint)
            out = str(ck / "eval.json") if ck.is_dir() else "eval.json"
    else:
        protocols, out = [args.protocol], args.out
    labels = [s.strip() for s in str(getattr(args, "labels", "10%")).split(",") if s.strip()]
    if "finetune" in protocols:
        from selfsup.eval.finetune import parse_fraction

        if not labels:
            raise ConfigError(f"--labels {args.labels!r}: give at least one label fraction, e.g. 10%")
        for frac in labels:
            parse_fraction(frac)  # before any work: a bad fraction fails now, not after the other protocols
    # the output is checked (and a run folder it goes into is held) before any work starts
    lock_dir = None
    if out:
        check_output_file(out, "--out")
        parent = Path(out).absolute().parent
        lock_dir = parent if (parent / "config.yaml").is_file() else None  # writing into a run folder
    with run_folder_lock(lock_dir, "run folder") if lock_dir is not None else nullcontext():
        results = evaluate_suite(
        args.checkpoint, args.train, args.test, protocols=protocols, options=suite_options(args),
            baselines=not args.no_baselines, finetune_labels=labels, backbone=args.backbone,
            batch_size=args.batch_size, precision=args.precision, device=args.device, strict=args.strict, out=out,
            log=None if args.json else (lambda line: print(line, file=sys.stderr)),
        )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(format_suite_table(results))
        if out:
            print(f"wrote {out}")
    return 0
