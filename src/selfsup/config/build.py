"""The one place a run's configuration is built: CLI, Python API, audit and demo all call ``build_config``.

Layers, each overriding the last:

1. the dataclass defaults (``schema.py``), or the run's own saved ``config.yaml`` when resuming without a file;
2. the method's recipe: optimiser fields left at ``None`` mean "the method's paper recipe" and are filled in
   when the run starts (``selfsup.training.setup.resolve_config``), so a later layer always wins over them;
3. a packaged preset (``preset=``, ``--preset``);
4. a config file or mapping (``config=``, ``--config``);
5. the flags (``method=``, ``epochs=``, ... / ``--method``, ``--epochs``, ...); another ``method`` than the one
   the lower layers name drops their method parameters, so it runs with its own paper defaults;
6. ``set`` (``--set KEY=VALUE``).

When no layer names a training size (``data.image_size``) and the data is a local folder, the size is chosen from
the data (:mod:`selfsup.data.probe`: the median shorter side of a sample of image headers, mapped to 32/64/96 px on
a CPU, also 224 px on a GPU), and photo-sized data on a CPU gets the matching packaged preset (``cpu-64px``,
``cpu-96px``) under the other layers, unless a preset or a config was given. The choice is printed, and saved
with the run like every other field.

The result is a new ``PretrainConfig``; nothing passed in is changed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from selfsup import console
from selfsup.config.presets import config_file_layer, list_presets, load_preset
from selfsup.config.schema import PretrainConfig, apply_overrides, load_yaml, parse_set
from selfsup.config.validate import validate_config
from selfsup.errors import ConfigError
from selfsup.methods import registry
from selfsup.models.backbones import BACKBONES

# flag name (CLI ``--batch-size`` / API ``batch_size=``) -> (config section, field)
FLAG_FIELDS: dict[str, tuple[str, str]] = {
    "data": ("data", "path"),
    "val": ("data", "val"),
    "image_size": ("data", "image_size"),
    "strict": ("data", "strict"),
    "backbone": ("backbone", "name"),
    "init": ("backbone", "init"),
    "lr": ("optim", "lr"),
    "optimizer": ("optim", "name"),
    "epochs": ("train", "epochs"),
    "batch_size": ("train", "batch_size"),
    "max_steps": ("train", "max_steps"),
    "precision": ("train", "precision"),
    "device": ("train", "device"),
    "seed": ("train", "seed"),
    "knn_every": ("train", "knn_every"),
    "time_budget": ("train", "time_budget"),
    "compile": ("train", "compile"),
    "progress": ("train", "progress"),
    "log": ("train", "log"),
}

ConfigSource = str | Path | Mapping[str, Any] | PretrainConfig
SetSource = Sequence[str] | Mapping[str, Any]


def flag_layer(flags: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"epochs": 5, "lr": None}`` -> ``{"train": {"epochs": 5}}``: flags left at ``None`` are not given."""
    layer: dict[str, dict[str, Any]] = {}
    for name, value in flags.items():
        if name not in FLAG_FIELDS:
            raise ConfigError(f"unknown pretrain option '{name}' (known: {', '.join(sorted(FLAG_FIELDS))}, "
                              "method, preset, config, out, set, resume)")
        if value is not None:
            section, key = FLAG_FIELDS[name]
            layer.setdefault(section, {})[key] = value
    return layer


def _names_size(layer: Mapping[str, Any] | None) -> bool:
    data = (layer or {}).get("data")
    return isinstance(data, Mapping) and data.get("image_size") is not None


def _size_from_data(cfg: PretrainConfig) -> tuple[int, str] | None:
    """(size, why) for a local image folder whose size no layer gave; None to keep the default."""
    from selfsup.data.probe import suggest_image_size  # reads image headers: only when it is needed

    path = cfg.data.path
    if not path or str(path).startswith(("builtin:", "wds:")) or not Path(path).is_dir():
        return None
    gpu = cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and _cuda())
    found = suggest_image_size(path, gpu=gpu)
    if found is None:
        return None
    size, shape = found
    return size, (f"median image {shape.median_short}x{shape.median_long} px over {shape.probed} of the "
                  f"folder's files")


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def build_config(
    *,
    preset: str | None = None,
    config: ConfigSource | None = None,
    method: str | None = None,
    out: str | None = None,
    set: SetSource | None = None,  # noqa: A002 (the CLI's --set)
    resume: bool = False,
    **flags: Any,
) -> PretrainConfig:
    """Build a run's configuration from its layers (module docstring); returns a new, validated PretrainConfig.

    ``config``: a YAML path, a mapping of PretrainConfig fields, or a whole PretrainConfig (copied; it then
    replaces the defaults and a preset, so passing both is refused). ``set``: ``["optim.lr=0.1", ...]`` or the
    same as a nested mapping. ``flags``: the names in ``FLAG_FIELDS``; ``None`` means "not given".
    """
    cfg = PretrainConfig()
    if isinstance(config, PretrainConfig):
        if preset:
            raise ConfigError(f"preset '{preset}' and a ready PretrainConfig were both given; pass one of them")
        cfg = copy.deepcopy(config)
    elif resume and out and config is None:
        saved = Path(out) / "config.yaml"  # resuming: the run's own config, so nothing needs repeating
        if saved.is_file():
            apply_overrides(cfg, load_yaml(saved), str(saved))
    if preset:
        apply_overrides(cfg, load_preset(preset, method), f"preset {preset}")
    if isinstance(config, (str, Path)):
        apply_overrides(cfg, config_file_layer(load_yaml(config), method), str(config))
    elif isinstance(config, Mapping):
        apply_overrides(cfg, config_file_layer(copy.deepcopy(dict(config)), method), "config")
    if method is not None and cfg.method.get("name") != method:
        cfg.method = {"name": method}  # another method: drop the previous method's parameters
    apply_overrides(cfg, flag_layer(flags), "flags")
    if out is not None:
        cfg.out = str(out)
    apply_overrides(cfg, copy.deepcopy(dict(set)) if isinstance(set, Mapping) else parse_set(list(set or [])),
                    "--set")
    validate_config(cfg, methods=registry(), backbones=BACKBONES)
    size_given = (isinstance(config, PretrainConfig) or (resume and out is not None and config is None)
                  or flags.get("image_size") is not None or _names_size(load_preset(preset, method) if preset else None)
                  or (isinstance(config, (str, Path)) and _names_size(load_yaml(config)))
                  or (isinstance(config, Mapping) and _names_size(config))
                  or _names_size(set if isinstance(set, Mapping) else parse_set(list(set or []))))
    auto = None if size_given else _size_from_data(cfg)
    if auto is None or auto[0] == cfg.data.image_size:
        return cfg
    size, why = auto
    photo_preset = f"cpu-{size}px"
    if not preset and config is None and size > 32 and size != 224 and photo_preset in list_presets():
        cfg = build_config(preset=photo_preset, method=method, out=out, set=set, resume=resume, **flags)
        console.info(f"image size: {size} px views ({why}; preset {photo_preset}); pass --image-size to choose")
        return cfg
    cfg = build_config(preset=preset, config=config, method=method, out=out, set=set, resume=resume,
                       **{**flags, "image_size": size})
    console.info(f"image size: {size} px views ({why}); pass --image-size to choose")
    return cfg


__all__ = ["FLAG_FIELDS", "build_config", "flag_layer"]
