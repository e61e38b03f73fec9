"""``selfsup pretrain``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from selfsup import distributed
from selfsup.config import PretrainConfig, dump_yaml
from selfsup.config.build import FLAG_FIELDS, build_config
from selfsup.errors import ConfigError
from selfsup.training import loop

EXAMPLE = """example:
  selfsup pretrain --data ~/photos --method simclr --backbone resnet18 --epochs 100 --batch-size 256 --out runs/photos
  selfsup pretrain --data builtin:mnist --val builtin:mnist:test --method byol --backbone cnn-compact \\
      --epochs 10 --batch-size 128 --out runs/mnist-byol
  selfsup pretrain --config configs/cifar10_simclr.yaml --data cifar10/train --out runs/c   # configs/ in the repo
  selfsup pretrain --config configs/photos_simclr.yaml --data ~/photos --set optim.lr=0.5 --out runs/p
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
    p.add_argument("--init", metavar="SPEC",
                   help="start from these weights instead of random ones: a selfsup run folder or encoder.safetensors, "
                        "or torchvision:NAME:/path/w.pth / timm:NAME:/path (local files); must fit --backbone")
    p.add_argument("--epochs", type=int, help=f"passes over the training data (default: the config's, {PretrainConfig().train.epochs})")
    p.add_argument("--batch-size", type=int, help="global batch size (summed over processes)")
    p.add_argument("--max-steps", type=int, help="stop after this many steps (the LR schedule still spans --epochs)")
    p.add_argument("--image-size", type=int, help="side of the square views fed to the encoder")
    p.add_argument("--lr", type=float, help="absolute peak learning rate (default: the method's base_lr x B/256)")
    p.add_argument("--optimizer", choices=["sgd", "lars", "adamw"], help="optimizer (default: the method's)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto: bf16 where the hardware has it natively, else fp32 (fp16: CUDA only)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, help=f"seed of every random draw (default: the config's, {PretrainConfig().train.seed}); same seed, same run")
    p.add_argument("--knn-every", type=int, help="epochs between online kNN evaluations on --val")
    p.add_argument("--time-budget", type=float, help="minutes for the whole run (fits the schedule to it)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model (and the colour augmentation where it runs as torch ops: CUDA, data.view_backend=torch)")
    p.add_argument("--strict", action="store_true", default=None, help="fail on the first corrupt image")
    p.add_argument("--log", choices=["jsonl", "tensorboard"],
                   help="metrics.jsonl is always written; tensorboard also writes RUN/tensorboard/ "
                        "(pip install 'selfsup[tensorboard]')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--preset", help="a packaged CPU recipe (see `selfsup presets`); --config and flags override it")
    p.add_argument("--config", help="YAML file with any PretrainConfig fields; flags override it")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field, e.g. optim.clip_grad=1.0")
    p.add_argument("--out", help="run folder (checkpoint, metrics.jsonl, config.yaml, summary.json)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--json", action="store_true", help="print the run summary (summary.json) as JSON on stdout")
    p.add_argument("--check", action="store_true", help="validate the configuration, print it and exit (creates nothing)")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The run's configuration from the parsed flags, through the one builder the API also uses."""
    flags = {name: getattr(args, name, None) for name in FLAG_FIELDS if name != "progress"}
    return build_config(preset=getattr(args, "preset", None), config=args.config, method=args.method,
                        out=args.out, set=args.set, resume=args.resume,
                        progress=False if args.no_progress else None, **flags)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if not args.out and not args.config:
        raise ConfigError("pass --out RUN_DIR for the run folder")
    if args.check:
        print(dump_yaml(cfg), end="")
        return 0
    summary = loop.pretrain(cfg, resume=args.resume)
    # the training loop prints the end-of-run summary (selfsup.summary) on stderr
    if getattr(args, "json", False) and distributed.env_info().is_main:
        print(json.dumps(summary, indent=2))
    return 0
