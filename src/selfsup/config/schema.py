"""Typed, visible configuration.

One dataclass per concern. Every field has its default written next to it, with the paper it comes
from where that applies. A run's configuration is built from layers by ``selfsup.config.build.build_config``
(defaults -> method recipe -> preset -> file -> flags -> ``--set``); the resolved result is printed at the
start of every run and saved as ``RUN/config.yaml``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError


@dataclass
class DataConfig:
    path: str = ""  # image folder, class-folder tree, or builtin:NAME (see `selfsup datasets`)
    val: str | None = None  # labelled folder (or builtin:NAME:test) for the online kNN monitor
    image_size: int = 32  # side of the square views fed to the encoder
    cache_size: int | None = None  # stored shorter side (native aspect); None = image_size up to 96 px, else
    # round(image_size * 8 / 7) (torchvision's 256 for 224); >= image_size. Disk: h * w * 3 bytes per image
    eval_crop_fraction: float = 1.0  # eval view: shorter side -> image_size / this, centre crop (0.875: ImageNet's)
    cache_dir: str | None = None  # None = $SELFSUP_CACHE or ~/.cache/selfsup
    strict: bool = False  # fail on the first corrupt image instead of skipping and counting it
    grayscale: bool = False  # images are grayscale (MNIST): skip colour ops in the views
    colour: str = "exact"  # colour jitter + grayscale: exact (torchvision's) | linear (one affine map; faster on GPUs)
    view_backend: str = "auto"  # auto (fused numba kernel for exact colour on CPU, else torch ops) | torch | numba
    low_res_size: int = 0  # > 0: views this many px (local crops scaled alike) for the first low_res_fraction of
    low_res_fraction: float = 0.5  # the steps, then image_size (cheaper early steps; convolutional backbones only)


@dataclass
class BackboneConfig:
    name: str = "resnet18"  # see `selfsup backbones`
    small_stem: bool | None = None  # 3x3 stride-1 stem without max-pool; None = auto (image_size <= 96)
    patch_size: int | None = None  # ViT only; None = image_size // 8
    width: int = 32  # compact CNN only: channels of the first stage (doubled each stage)


@dataclass
class OptimConfig:
    name: str | None = None  # sgd | lars | adamw; None = the method's recipe
    lr: float | None = None  # absolute learning rate; None = base_lr * batch_size / 256
    base_lr: float | None = None  # None = the method's recipe
    weight_decay: float | None = None  # None = the method's recipe
    momentum: float = 0.9  # SGD and LARS
    betas: tuple[float, float] | None = None  # AdamW; None = the method's recipe (MAE: 0.9, 0.95)
    warmup_epochs: float | None = None  # linear warmup, then cosine to min_lr; None = the method's recipe
    min_lr: float = 0.0
    clip_grad: float | None = None  # max global gradient norm; None = no clipping
    exclude_norm_bias: bool = True  # no weight decay (and no LARS adaptation) on norms and biases


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 256  # global batch (summed over processes when distributed)
    max_steps: int | None = None  # stop after this many optimizer steps (the schedule still spans `epochs`)
    precision: str = "auto"  # auto | bf16 | fp16 | fp32; auto = bf16 where the hardware supports it
    channels_last: bool = True
    compile: bool = False  # torch.compile the method (and the torch colour ops: CUDA, data.view_backend=torch)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # intra-op threads; None = all cores of this process's share
    log_every: int = 10  # steps between metrics.jsonl rows
    save_every: int = 1  # epochs between checkpoints (also saved at the end, on Ctrl-C and SIGTERM)
    knn_every: int = 5  # epochs between online kNN evaluations (needs data.val); 0 = never
    knn_k: int = 200
    knn_t: float = 0.1
    time_budget: float | None = None  # minutes for the whole run; fits the schedule to what fits
    progress: bool = True  # show a progress bar
    sync_bn: bool = False  # distributed on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)


@dataclass
class PretrainConfig:
    out: str = "runs/run"
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


def _coerce(value: Any, current: Any, where: str) -> Any:
    """Coerce a YAML/CLI value to the type of the field's current value where that is unambiguous."""
    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: cannot parse {value!r}: {exc}") from None
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
        if value != int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    return value


def _coerce_by_annotation(value: Any, annotation: str, where: str) -> Any:
    """For fields that default to None (``float | None`` ...): parse by the declared type, not by YAML's guess
    (YAML 1.1 reads ``1e-6`` as a string)."""
    kinds = {k.strip() for k in annotation.split("|")}
    if "str" in kinds:
        return value
    if isinstance(value, str) and not ({"float", "int", "bool"} & kinds):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: cannot parse {value!r}: {exc}") from None
    if isinstance(value, list) and annotation.startswith("tuple"):
        return tuple(value)
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return value
    try:
        if "float" in kinds:
            return float(value)
        if "int" in kinds and not isinstance(value, float):
            return int(value)
        if "bool" in kinds and isinstance(value, str):
            return {"true": True, "false": False}[value.lower()]
    except (ValueError, KeyError):
        raise ConfigError(f"{where}: expected {annotation}, got {value!r}") from None
    return value


def apply_overrides(cfg: Any, data: dict[str, Any], where: str = "config") -> Any:
    """Recursively merge ``data`` (from YAML or ``--set``) into the dataclass ``cfg`` in place."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key, value in data.items():
        key = key.replace("-", "_")
        if isinstance(cfg, dict):
            cfg[key] = value if not isinstance(value, str) else _coerce(value, cfg.get(key, 0.0), where)
            continue
        names = {f.name for f in fields(cfg)}
        if key not in names:
            raise ConfigError(
                f"{where}: unknown key '{key}' (known: {', '.join(sorted(names))})"
            )
        current = getattr(cfg, key)
        if is_dataclass(current) or isinstance(current, dict):
            apply_overrides(current, value, f"{where}.{key}")
        else:
            if current is None and value is not None:
                value = _coerce_by_annotation(value, str(cfg.__dataclass_fields__[key].type), f"{where}.{key}")
            else:
                value = _coerce(value, current, f"{where}.{key}")
            setattr(cfg, key, value)
    return cfg


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["optim.lr=0.1", "method.temperature=0.2"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set optim.lr=0.1")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} (pass an existing YAML file to --config)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a YAML mapping at the top level")
    return data


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a (possibly partial) dict, e.g. a checkpoint's saved config."""
    return apply_overrides(cls(), data, cls.__name__)


__all__ = [
    "DataConfig",
    "BackboneConfig",
    "OptimConfig",
    "TrainConfig",
    "PretrainConfig",
    "apply_overrides",
    "parse_set",
    "load_yaml",
    "dump_yaml",
    "to_dict",
    "from_dict",
    "asdict",
]
