"""Typed, visible configuration.

One dataclass per concern. Every field has its default written next to it, with the paper it comes
from where that applies. A run's configuration is built from layers by ``selfsup.config.build.build_config``
(defaults -> method recipe -> preset -> file -> flags -> ``--set``); the resolved result is printed at the
start of every run and saved as ``RUN/config.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError


def rule(default: Any, *, min: float | None = None, max: float | None = None, gt: float | None = None,
         lt: float | None = None, choices: tuple[str, ...] | None = None, pattern: str | None = None,
         nonempty: bool = False, hint: str = "") -> Any:
    """A dataclass field with its allowed range in ``metadata``; checked by
    :func:`selfsup.config.validate.validate_config` (min/max inclusive, gt/lt exclusive; None always allowed
    where the type says ``| None``)."""
    meta = {k: v for k, v in {"min": min, "max": max, "gt": gt, "lt": lt, "choices": choices, "pattern": pattern,
                              "nonempty": nonempty or None, "hint": hint or None}.items() if v is not None}
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    path: str = rule("", nonempty=True, hint="pass --data PATH (a folder of images or builtin:NAME)")  # image folder, class-folder tree, or builtin:NAME (see `selfsup datasets`)
    val: str | None = None  # labelled folder (or builtin:NAME:test) for the online kNN monitor
    image_size: int = rule(32, min=8, max=2048)  # side of the square views fed to the encoder
    cache_size: int | None = rule(None, min=8, max=4096)  # stored shorter side (native aspect); None = image_size
    # up to 96 px, else round(image_size * 8 / 7) (torchvision's 256 for 224); >= image_size. Disk: h * w * 3 B/image
    eval_crop_fraction: float = rule(1.0, gt=0.0, max=1.0)  # eval view: shorter side -> image_size / this, centre
    # crop (0.875: ImageNet's)
    cache_dir: str | None = None  # None = $SELFSUP_CACHE or ~/.cache/selfsup
    strict: bool = False  # fail on the first corrupt image instead of skipping and counting it
    grayscale: bool = False  # images are grayscale (MNIST): skip colour ops in the views
    colour: str = rule("exact", choices=("exact", "linear"))  # colour jitter + grayscale: exact (torchvision's) | linear (one affine map; faster on GPUs)
    view_backend: str = rule("auto", choices=("auto", "torch", "numba"))  # auto (fused numba kernel for exact colour on CPU, else torch ops) | torch | numba
    low_res_size: int = rule(0, min=0, max=2048)  # > 0: views this many px (local crops scaled alike) for the first low_res_fraction of
    low_res_fraction: float = rule(0.5, gt=0.0, lt=1.0)  # the steps, then image_size (cheaper early steps; convolutional backbones only)


@dataclass
class BackboneConfig:
    name: str = "resnet18"  # see `selfsup backbones`
    small_stem: bool | None = None  # 3x3 stride-1 stem without max-pool; None = auto (image_size <= 96)
    patch_size: int | None = rule(None, min=1, max=1024)  # ViT only; None = image_size // 8
    width: int = rule(32, min=1, max=4096)  # compact CNN only: channels of the first stage (doubled each stage)
    init: str | None = None  # start from these weights: a selfsup run folder / encoder.safetensors, or
    # torchvision:NAME:/path/w.pth / timm:NAME:/path (local files only); must fit `name`; ignored on --resume


@dataclass
class OptimConfig:
    name: str | None = rule(None, choices=("sgd", "lars", "adamw"))  # sgd | lars | adamw; None = the method's recipe
    lr: float | None = rule(None, gt=0.0)  # absolute learning rate; None = base_lr * batch_size / 256
    base_lr: float | None = rule(None, gt=0.0)  # None = the method's recipe
    weight_decay: float | None = rule(None, min=0.0)  # None = the method's recipe
    momentum: float = rule(0.9, min=0.0, lt=1.0)  # SGD and LARS
    betas: tuple[float, float] | None = rule(None, min=0.0, lt=1.0)  # AdamW; None = the method's recipe (MAE: 0.9, 0.95)
    warmup_epochs: float | None = rule(None, min=0.0)  # linear warmup, then cosine to min_lr; None = the method's recipe
    min_lr: float = rule(0.0, min=0.0)
    clip_grad: float | None = rule(None, gt=0.0)  # max global gradient norm; None = no clipping
    exclude_norm_bias: bool = True  # no weight decay (and no LARS adaptation) on norms and biases


@dataclass
class TrainConfig:
    epochs: int = rule(100, min=1)
    batch_size: int = rule(256, min=2)  # global batch (summed over processes when distributed)
    # > 1: each optimizer step sums the gradients of this many micro-batches of batch_size / N images (the global
    # batch, LR rule and schedule stay those of batch_size). Exact only for losses that are a mean of per-sample
    # terms on modules without BatchNorm: mae, simmim, famt-mae, famt-simmim, rotnet (linear head) on a ViT.
    # Refused: simclr, mocov3, nnclr (in-batch negatives), mocov2 (queue filled per forward), byol, simsiam
    # (BatchNorm heads), dino (batch centering), barlowtwins, vicreg (batch statistics), swav (Sinkhorn), and
    # any BatchNorm backbone (resnet*, cnn-compact). See docs/design.md, "Gradient accumulation".
    accumulate_steps: int = rule(1, min=1, max=4096)
    max_steps: int | None = rule(None, min=1)  # stop after this many optimizer steps (the schedule still spans `epochs`)
    precision: str = rule("auto", choices=("auto", "bf16", "fp16", "fp32"))  # auto | bf16 | fp16 | fp32; auto = bf16 where the hardware supports it
    channels_last: bool = True
    compile: bool = False  # torch.compile the method (and the torch colour ops: CUDA, data.view_backend=torch)
    seed: int = rule(0, min=0, max=2**31 - 1)
    device: str = rule("auto", pattern=r"auto|cpu|mps|cuda(:\d+)?",
                       hint="use auto, cpu, cuda or cuda:N")  # auto | cpu | cuda | cuda:N
    threads: int | None = rule(None, min=1, max=4096)  # intra-op threads; None = all cores of this process's share
    log_every: int = rule(10, min=1)  # steps between metrics.jsonl rows
    save_every: int = rule(1, min=0)  # epochs between checkpoints (also saved at the end, on Ctrl-C and SIGTERM)
    knn_every: int = rule(5, min=0)  # epochs between online kNN evaluations (needs data.val); 0 = never
    knn_k: int = rule(200, min=1)
    knn_t: float = rule(0.1, gt=0.0)
    time_budget: float | None = rule(None, gt=0.0)  # minutes for the whole run; fits the schedule to what fits
    progress: bool = True  # show a progress bar
    log: str = rule("jsonl", choices=("jsonl", "tensorboard"))  # metrics.jsonl always; tensorboard: also RUN/tensorboard/
    sync_bn: bool = False  # distributed on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)


@dataclass
class PretrainConfig:
    out: str = rule("runs/run", nonempty=True, hint="pass --out RUN_DIR")
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "simclr"})
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def to_dict(cfg: Any) -> Any:
    """Dataclass (or nested) -> plain dict/list/scalars, for YAML and JSON."""
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


_NULLS = ("null", "none", "~", "")  # an empty or null text means None for an optional number or flag
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def config_error(key: str, value: Any, problem: str, source: str = "", flag: str = "") -> ConfigError:
    """The one format of a configuration error: ``key=value (from SOURCE, FLAG): problem``."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    where = ", ".join(w for w in (f"from {source}" if source else "", flag) if w)
    return ConfigError(f"{key}={shown}{f' ({where})' if where else ''}: {problem}")


def _kinds(annotation: Any) -> tuple[set[Any], bool]:
    """(the non-None types of an annotation, whether None is allowed): ``int | None`` -> ({int}, True)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = {a for a in args if a is not type(None)}
        return kinds, type(None) in args
    return {annotation}, False


def _scalar(value: Any, kind: Any, key: str, source: str) -> Any:
    """Coerce one YAML/CLI value to ``kind`` (bool, int, float, str); strings are parsed, never ``eval``ed."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise config_error(key, value, "expected true or false", source)
    if kind is int:
        if isinstance(value, bool):
            raise config_error(key, value, "expected an integer", source)
        if isinstance(value, int):
            return value
        number = value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
            try:
                number = float(value.strip())  # 1e3
            except ValueError:
                raise config_error(key, value, "expected an integer", source) from None
        if isinstance(number, float) and math.isfinite(number) and number == int(number):
            return int(number)
        raise config_error(key, value, "expected an integer", source)
    if kind is float:
        if isinstance(value, bool):
            raise config_error(key, value, "expected a number", source)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise config_error(key, value, "expected a number", source)
    if kind is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # YAML reads `val: 123` as a number; a path or name is meant
        raise config_error(key, value, "expected a string", source)
    return value


def coerce(value: Any, annotation: Any, key: str, source: str = "") -> Any:
    """Coerce a YAML/CLI value to a field's declared type; raise a one-line :class:`ConfigError` otherwise.

    The declared type decides, never the current value or YAML's guess (YAML 1.1 reads ``1e-6`` as a string
    and ``ten`` stays a string: both must become a number or an error).
    """
    kinds, nullable = _kinds(annotation)
    if isinstance(value, str) and nullable:
        word = value.strip().lower()
        # a path or name field keeps "none" and "" as text; only YAML's own nulls mean None there
        if word in (("null", "~") if str in kinds else _NULLS):
            return None
    if value is None:
        if nullable:
            return None
        raise config_error(key, value, "must be set (null is not allowed here)", source)
    for kind in kinds:
        if typing.get_origin(kind) is tuple:
            items = value
            if isinstance(items, str):
                items = [v for v in items.strip().strip("[]()").split(",") if v.strip()]
            if not isinstance(items, (list, tuple)):
                raise config_error(key, value, "expected a list of numbers, e.g. 0.9,0.95", source)
            elem = typing.get_args(kind)
            if len(elem) == 2 and elem[1] is Ellipsis:
                elem = (elem[0],) * len(items)
            if len(items) != len(elem):
                raise config_error(key, value, f"expected {len(elem)} values, e.g. 0.9,0.95", source)
            return tuple(_scalar(v, t, key, source) for v, t in zip(items, elem))
    for kind in (bool, int, float, str):  # the order matters: bool before int, int before float
        if kind in kinds:
            if kind is int and float in kinds:
                kind = float
            return _scalar(value, kind, key, source)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(cfg: Any, data: dict[str, Any], where: str = "config", prefix: str = "") -> Any:
    """Recursively merge ``data`` (from YAML, flags or ``--set``) into the dataclass ``cfg`` in place.

    Every value is coerced to its field's declared type here (one-line :class:`ConfigError` naming the key,
    the value and ``where`` it came from otherwise); ranges are checked by
    :func:`selfsup.config.validate.validate_config` once the whole configuration is built.
    """
    if not isinstance(data, dict):
        raise config_error(prefix or "config", data, f"expected a mapping of keys, got {type(data).__name__}", where)
    hints = _hints(type(cfg)) if is_dataclass(cfg) else {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(cfg, dict):
            # free-form section (method.*): kept as given, coerced by the method's own dataclass at validation
            cfg[key] = value
            continue
        names = {f.name for f in fields(cfg)}
        if key not in names:
            src = f" (from {where})" if where else ""
            raise ConfigError(f"{path}{src}: unknown key '{key}'; known: {', '.join(sorted(names))}")
        current = getattr(cfg, key)
        if is_dataclass(current) or isinstance(current, dict):
            apply_overrides(current, value, where, path)
        else:
            setattr(cfg, key, coerce(value, hints[key], path, where))
    return cfg


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["optim.lr=0.1", "method.temperature=0.2"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.1")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"--set {item!r}: the key must be SECTION.FIELD, e.g. --set optim.lr=0.1")
        node = out
        for i, p in enumerate(parts[:-1]):
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[: i + 1])} was set to a value by another --set "
                                  "and cannot also hold fields; drop one of them")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"--set {item!r}: {key.strip()} is a section; set one of its fields, "
                              f"e.g. --set {key.strip()}.FIELD=VALUE")
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (pass an existing YAML file to --config)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{p}: not valid YAML ({first})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read it as a YAML text file ({type(exc).__name__}); pass a UTF-8 YAML "
                          "file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a YAML mapping at the top level")
    return data


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


def from_dict(cls: type, data: dict[str, Any], where: str | None = None) -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, e.g. a checkpoint's saved config."""
    return apply_overrides(cls(), data, where or cls.__name__)


__all__ = [
    "DataConfig",
    "BackboneConfig",
    "OptimConfig",
    "TrainConfig",
    "PretrainConfig",
    "apply_overrides",
    "coerce",
    "config_error",
    "rule",
    "parse_set",
    "load_yaml",
    "dump_yaml",
    "to_dict",
    "from_dict",
    "asdict",
]
