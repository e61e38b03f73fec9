"""``selfsup pretrain``."""

from __future__ import annotations

import argparse
from typing import Any

from selfsup.config import PretrainConfig, apply_overrides, load_yaml, parse_set
from selfsup.config.validate import validate_config

EXAMPLE = """example:
  selfsup pretrain --data ~/photos --method simclr --backbone resnet18 --epochs 100 --batch-size 256 --out runs/photos
  selfsup pretrain --data builtin:mnist --val builtin:mnist:test --method byol --backbone cnn-compact \\
      --epochs 10 --batch-size 128 --out runs/mnist-byol
  selfsup pretrain --config configs/cifar10_simclr.yaml --set optim.lr=0.5 --set method.temperature=0.3
  selfsup pretrain --out runs/photos --resume        # continue an interrupted run exactly

tuning advice: contrastive methods (simclr) want large batches and many epochs; if the loss becomes NaN,
lower --lr or add --set optim.clip_grad=1.0. Method hyper-parameters are under `method.` (see
`selfsup methods --verbose`), e.g. --set method.temperature=0.5."""


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder on unlabelled images", description=__doc__,
                       epilog=EXAMPLE, formatter_class=formatter)
    p.add_argument("--data", help="image folder, class-folder tree, or builtin:NAME")
    p.add_argument("--val", help="labelled folder for the online kNN monitor (every --knn-every epochs)")
    p.add_argument("--method", help="pretraining method (see `selfsup methods`)")
    p.add_argument("--backbone", help="encoder architecture (see `selfsup backbones`)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (summed over processes)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (the LR schedule still spans --epochs)")
    p.add_argument("--image-size", type=int, help="side of the square views fed to the encoder")
    p.add_argument("--lr", type=float, help="absolute peak learning rate (default: the method's base_lr x B/256)")
    p.add_argument("--optimizer", choices=["sgd", "lars", "adamw"])
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int)
    p.add_argument("--knn-every", type=int, help="epochs between online kNN evaluations on --val")
    p.add_argument("--time-budget", type=float, help="minutes for the whole run (fits the schedule to it)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (and the colour augmentation where it runs as torch ops: CUDA, data.view_backend=torch)")
    p.add_argument("--strict", action="store_true", default=None, help="fail on the first corrupt image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--preset", help="a packaged CPU recipe (see `selfsup presets`); --config and flags override it")
    p.add_argument("--config", help="YAML file with any PretrainConfig fields; flags override it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field, e.g. optim.clip_grad=1.0")
    p.add_argument("--out", help="run folder (checkpoint, metrics.jsonl, config.yaml, summary.json)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--check", action="store_true", help="validate the configuration, print it and exit (creates nothing)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    cfg = PretrainConfig()
    if args.resume and args.out and not args.config:
        # resuming: start from the run's own saved config so nothing needs repeating
        from pathlib import Path

        saved = Path(args.out) / "config.yaml"
        if saved.is_file():
            apply_overrides(cfg, load_yaml(saved), str(saved))
    if getattr(args, "preset", None):
        from selfsup.config.presets import load_preset

        apply_overrides(cfg, load_preset(args.preset, args.method), f"preset {args.preset}")
    if args.config:
        from selfsup.config.presets import config_file_layer

        apply_overrides(cfg, config_file_layer(load_yaml(args.config), args.method), args.config)
    flags: dict[str, dict[str, Any]] = {
        "data": {"path": args.data, "val": args.val, "image_size": args.image_size, "strict": args.strict},
        "backbone": {"name": args.backbone},
        "method": {"name": args.method},
        "optim": {"lr": args.lr, "name": args.optimizer},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "max_steps": args.max_steps,
                  "precision": args.precision, "device": args.device, "seed": args.seed,
                  "knn_every": args.knn_every, "time_budget": args.time_budget, "compile": args.compile,
                  "progress": False if args.no_progress else None},
    }
    if args.method and cfg.method.get("name") not in (None, args.method):
        cfg.method = {"name": args.method}  # another method: drop the previous method's parameters
    for section, values in flags.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            apply_overrides(cfg, {section: values}, "flags")
    if args.out:
        cfg.out = args.out
    apply_overrides(cfg, parse_set(args.set), "--set")
    validate_config(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    from selfsup.errors import ConfigError
    from selfsup.training.loop import pretrain

    cfg = config_from_args(args)
    if not args.out and not args.config:
        raise ConfigError("pass --out RUN_DIR for the run folder")
    if args.check:
        from selfsup.config import dump_yaml

        print(dump_yaml(cfg), end="")
        return 0
    summary = pretrain(cfg, resume=args.resume)
    from selfsup import distributed

    if not distributed.env_info().is_main:
        return 0
    print(f"done: {summary['steps']} steps in {summary['wall_time_s']:.0f}s; checkpoint {summary['checkpoint']}")
    if "knn_top1" in summary:
        print(f"online kNN top-1: {summary['knn_top1']:.2f}%")
    return 0
