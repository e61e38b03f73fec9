"""``selfsup eval PROTOCOL``: evaluate a pretrained encoder on labelled data."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EXAMPLE = """example:
  selfsup eval knn --checkpoint runs/a --train data/train --test data/test
  selfsup eval linear --checkpoint runs/a/checkpoint.pt --train builtin:mnist:train --test builtin:mnist:test
  selfsup eval all --checkpoint runs/a --train builtin:mnist:train --test builtin:mnist:test   # -> runs/a/eval.json
  selfsup eval all --full ...            # also fine-tunes (slow); --labels 1%,10% picks the label fractions
  selfsup eval finetune --labels 1%,10% --checkpoint torchvision:resnet18:/models/r18.pth --train ... --test ...

--checkpoint takes a run folder, checkpoint.pt, encoder.safetensors, or a torchvision/timm model with LOCAL
weights: torchvision:NAME:/path/weights.pth or timm:NAME:/path/weights.safetensors (optional :SIZE suffix).

Each result is printed beside two baselines: the same protocol on raw pixels and on a randomly
initialised encoder of the same architecture, so that you see what pretraining bought.
Features are cached on disk ($SELFSUP_CACHE/features, default ~/.cache/selfsup/features), keyed by the
checkpoint file, the data and the eval transform: a second eval (or `selfsup report`) reuses them.
`eval all` rewrites its JSON after every protocol, so Ctrl-C keeps the finished ones."""

QUICK = ("knn", "linear", "fewshot", "retrieval", "clustering", "diagnostics")


def _common(p: argparse.ArgumentParser, protocol: str) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="run folder, checkpoint.pt, encoder.safetensors, torchvision:NAME:WEIGHTS or timm:NAME:WEIGHTS")
    p.add_argument("--train", required=True, help="labelled class-folder tree (or builtin:NAME:train)")
    p.add_argument("--test", required=True, help="labelled class-folder tree (or builtin:NAME:test)")
    p.add_argument("--backbone", help="assert the checkpoint holds this backbone")
    p.add_argument("--batch-size", type=int, default=256, help="feature-extraction batch size")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 where the hardware has it natively, else fp32")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    out_default = "RUN/eval.json for a run folder, else ./eval.json" if protocol == "all" else "not written"
    p.add_argument("--out", help=f"write the result JSON to this file (default: {out_default})")
    p.add_argument("--no-baselines", action="store_true", help="skip the raw-pixel and random-encoder baselines")
    p.add_argument("--no-cache", action="store_true", help="extract features afresh and do not cache them")
    p.add_argument("--strict", action="store_true", help="fail on the first corrupt image")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _linear_iters(p: argparse.ArgumentParser, flag: str = "--iters") -> None:
    p.add_argument(flag, dest="iters", type=int, default=100,
                   help="linear probe: L-BFGS iterations over the full training set")
    # the old spelling; it always meant L-BFGS iterations, not passes of minibatch SGD
    p.add_argument("--epochs", dest="epochs_old", type=int, help=argparse.SUPPRESS)


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("eval", help="evaluate an encoder (knn, linear, finetune, fewshot, retrieval, clustering, "
                       "diagnostics, all)", epilog=EXAMPLE, formatter_class=formatter)
    proto = p.add_subparsers(dest="protocol", metavar="PROTOCOL")  # bare `selfsup eval` prints this help
    helps = {
        "knn": "weighted kNN (Wu et al. 2018): cosine similarity, k=200, T=0.1; top-1 and top-5",
        "linear": "linear probe (L-BFGS) on frozen, cached features; top-1 and top-5",
        "finetune": "fine-tune encoder + linear head on a stratified label fraction (SimCLR v2 / BYOL semi-sup.)",
        "fewshot": "N-way K-shot episodes on test features: prototype + logistic regression, mean and 95%% CI",
        "retrieval": "test queries vs train gallery by cosine similarity: mAP, recall@1/5/10",
        "clustering": "k-means on test features: NMI, ARI, Hungarian-matched accuracy",
        "diagnostics": "RankMe, alignment/uniformity (two augmented views), feature std",
        "all": "every protocol but fine-tuning (add --full for it); one table per protocol as it finishes; "
               "writes eval.json",
    }
    for name, text in helps.items():
        q = proto.add_parser(name, help=text, description=text, epilog=EXAMPLE, formatter_class=formatter)
        _common(q, name)
        if name in ("knn", "all"):
            q.add_argument("--k", type=int, default=200, help="kNN: neighbours that vote")
            q.add_argument("--temperature", type=float, default=0.1, help="kNN: softmax temperature of the votes")
        if name in ("linear", "all"):
            _linear_iters(q, "--iters" if name == "linear" else "--linear-iters")
        if name in ("finetune", "all"):
            q.add_argument("--labels", default=None,
                           help="label fraction(s), comma-separated: 1%%,10%%,100%% (default 10%%; with `all`, "
                                "giving --labels runs fine-tuning as --full does)")
            q.add_argument("--blocks", default="all", help="'all' or k = fine-tune only the last k blocks")
            q.add_argument("--ft-epochs", type=int, default=10, help="fine-tuning epochs over the labelled subset")
            q.add_argument("--ft-min-steps", type=int, default=100, help="at least this many fine-tuning steps")
            q.add_argument("--ft-lr", type=float, default=1e-3, help="fine-tuning learning rate (AdamW)")
        if name in ("fewshot", "all"):
            q.add_argument("--n-way", type=int, default=5, help="classes per episode")
            q.add_argument("--k-shots", default="1,5", help="comma-separated shots per class")
            q.add_argument("--n-query", type=int, default=15, help="query images per class per episode")
            q.add_argument("--episodes", type=int, default=600, help="episodes (the 95%% CI shrinks with more)")
        if name == "all":
            q.add_argument("--full", action="store_true", help="also fine-tune (the slow protocol)")
            q.add_argument("--skip", default="", help="comma-separated protocols to leave out")
        q.set_defaults(func=run_suite)


def format_table(protocol: str, results: dict[str, dict[str, Any]]) -> str:
    """One protocol's top-1/top-5 for the encoder and its baselines (knn, linear)."""
    names = {"encoder": "pretrained encoder", "pixels": "raw pixels (baseline)", "random": "random encoder (baseline)"}
    lines = [f"{protocol:<28}{'top-1 %':>10}{'top-5 %':>10}"]
    for key, res in results.items():
        if isinstance(res, dict) and "top1" in res:
            lines.append(f"{names.get(key, key):<28}{res['top1']:>10.2f}{res.get('top5', float('nan')):>10.2f}")
    return "\n".join(lines)


def suite_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    opts: dict[str, dict[str, Any]] = {}
    if hasattr(args, "blocks"):
        blocks = args.blocks if args.blocks == "all" else int(args.blocks)
        opts["finetune"] = {"blocks": blocks, "epochs": args.ft_epochs, "min_steps": args.ft_min_steps,
                            "lr": args.ft_lr}
    if hasattr(args, "n_way"):
        opts["fewshot"] = {"n_way": args.n_way, "k_shots": [int(k) for k in str(args.k_shots).split(",") if k],
                           "n_query": args.n_query, "episodes": args.episodes}
    if hasattr(args, "k"):
        opts["knn"] = {"k": args.k, "temperature": args.temperature}
    if hasattr(args, "iters"):
        iters = args.iters
        if getattr(args, "epochs_old", None) is not None:
            from selfsup import console

            flag = "--iters" if args.protocol == "linear" else "--linear-iters"
            console.info(f"note: --epochs is the old name of {flag} (L-BFGS iterations of the linear probe); "
                         f"using {flag} {args.epochs_old}")
            iters = args.epochs_old
        opts["linear"] = {"epochs": iters}
    return opts


def _protocols(args: argparse.Namespace) -> list[str]:
    from selfsup.errors import ConfigError
    from selfsup.eval.suite import PROTOCOLS

    if args.protocol != "all":
        return [args.protocol]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    bad = skip - set(PROTOCOLS)
    if bad:
        raise ConfigError(f"--skip {sorted(bad)[0]}: not a protocol; choose from {', '.join(PROTOCOLS)}")
    wanted = set(PROTOCOLS) if args.full or args.labels else set(QUICK)
    return [p for p in PROTOCOLS if p in wanted and p not in skip]


def run_suite(args: argparse.Namespace) -> int:
    from pathlib import Path

    from selfsup import console
    from selfsup.eval.suite import evaluate_suite, format_suite_table

    protocols = _protocols(args)
    out = args.out
    if out is None and args.protocol == "all":
        ck = Path(args.checkpoint)
        out = str(ck / "eval.json") if ck.is_dir() else "eval.json"
    labels = [s.strip() for s in str(getattr(args, "labels", None) or "10%").split(",") if s.strip()]
    single = args.protocol in ("knn", "linear")
    first = [True]

    def show(key: str, results: dict[str, Any]) -> None:
        """Print each protocol's table as soon as it finishes (stdout; nothing with --json)."""
        if args.json:
            return
        if single:
            print(format_table(args.protocol, results[key]), flush=True)
        else:
            print(format_suite_table(results, [key], header=first[0], footer=False), flush=True)
        first[0] = False

    log = None if args.json or console.verbosity() < console.NORMAL else console.info
    try:
        results = evaluate_suite(
            args.checkpoint, args.train, args.test, protocols=protocols, options=suite_options(args),
            baselines=not args.no_baselines, finetune_labels=labels, backbone=args.backbone,
            batch_size=args.batch_size, precision=args.precision, device=args.device, strict=args.strict, out=out,
            log=log if len(protocols) > 1 else None, on_result=show, cache=not args.no_cache,
            progress=console.verbosity() >= console.NORMAL,
        )
    except KeyboardInterrupt:
        if out and Path(out).is_file():
            try:
                done = [k for k in json.loads(Path(out).read_text()) if k != "meta"]
            except (OSError, json.JSONDecodeError):
                done = []
            if done:
                sys.stderr.write(f"\ninterrupted: {out} keeps the finished protocols ({', '.join(done)})\n")
        raise
    if args.json:
        print(json.dumps({**results[args.protocol], "meta": results["meta"]} if single else results, indent=2))
    else:
        if not single:
            meta = format_suite_table(results, [], header=False).strip()
            print(f"\n{meta}")
        if out:
            print(f"wrote {out}")
    return 0
