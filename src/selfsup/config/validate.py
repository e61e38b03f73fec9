"""Validation at the boundary: the one place a configuration's values and a command's outputs are checked.

- :func:`validate_config` checks every field of a built :class:`PretrainConfig` against the range written in
  its dataclass field metadata (``rule(...)`` in :mod:`selfsup.config.schema`), every float for being finite,
  the method's own hyper-parameters (coerced by the method's dataclass), and the few cross-field rules.
  Types were already coerced by :func:`selfsup.config.schema.apply_overrides` when the layers were merged.
- ``int_range`` / ``float_range`` / ``int_list``: argparse ``type=`` callables for the flags of commands
  that have no config dataclass (eval, embed, search, report, audit, masks, demo), so a flag is checked when
  it is parsed, with the same wording.
- :func:`check_output_file` / :func:`check_output_dir`: an output path is checked before any work starts
  (an existing file where a folder is expected, a folder where a file is expected, a folder that cannot be
  written).

Every failure raises :class:`selfsup.errors.ConfigError` with one line ``key=value: problem``; the CLI exits
with code 2. Nothing here creates a file or folder.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import tempfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from selfsup.config.schema import PretrainConfig, apply_overrides, config_error, to_dict
from selfsup.errors import ConfigError

# the CLI flag that sets a field, named in the message beside the key
FLAGS = {
    "out": "--out", "data.path": "--data", "data.val": "--val", "data.image_size": "--image-size",
    "backbone.name": "--backbone", "method.name": "--method", "optim.lr": "--lr", "optim.name": "--optimizer",
    "train.epochs": "--epochs", "train.batch_size": "--batch-size", "train.max_steps": "--max-steps",
    "train.precision": "--precision", "train.device": "--device", "train.seed": "--seed",
    "train.knn_every": "--knn-every", "train.time_budget": "--time-budget",
}

_INT_MAX = 2**31 - 1


def _describe(meta: dict[str, Any]) -> str:
    ops = {"min": ">=", "gt": ">", "max": "<=", "lt": "<"}
    parts = [f"{op} {meta[k] if isinstance(meta[k], int) else format(meta[k], 'g')}" for k, op in ops.items()
             if k in meta]
    return "must be " + " and ".join(parts)


def check_value(key: str, value: Any, meta: dict[str, Any]) -> None:
    """Check one coerced value against a field's ``rule(...)`` metadata (and finiteness for every float)."""
    flag = FLAGS.get(key, "")
    hint = f"; {meta['hint']}" if meta.get("hint") else ""
    if value is None:
        return
    if isinstance(value, tuple):
        for v in value:
            check_value(key, v, {k: m for k, m in meta.items() if k not in ("nonempty",)})
        return
    if isinstance(value, str):
        if meta.get("nonempty") and not value.strip():
            raise config_error(key, value, f"must not be empty{hint}", flag=flag)
        if "choices" in meta and value not in meta["choices"]:
            raise config_error(key, value, f"choose one of: {', '.join(meta['choices'])}", flag=flag)
        if "pattern" in meta and not re.fullmatch(meta["pattern"], value):
            raise config_error(key, value, meta.get("hint") or f"must match {meta['pattern']}", flag=flag)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise config_error(key, value, f"must be a finite number{hint}", flag=flag)
    if isinstance(value, int) and abs(value) > _INT_MAX and "max" not in meta:
        raise config_error(key, value, f"must be at most {_INT_MAX}", flag=flag)
    ok = (("min" not in meta or value >= meta["min"]) and ("max" not in meta or value <= meta["max"])
          and ("gt" not in meta or value > meta["gt"]) and ("lt" not in meta or value < meta["lt"]))
    if not ok:
        raise config_error(key, value, _describe(meta) + hint, flag=flag)


def _check_section(section: Any, prefix: str) -> None:
    for f in fields(section):
        value = getattr(section, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if is_dataclass(value):
            _check_section(value, key)
        elif not isinstance(value, dict):
            check_value(key, value, dict(f.metadata))


# Method hyper-parameters live in each method's own dataclass; where it declares no ``rule(...)`` metadata,
# these rules by name apply (they hold for every method in the registry).
_POSITIVE = re.compile(r"(^|_)(temperature|temp|epsilon|eps)$")
_UNIT = re.compile(r"(scale|ratio|momentum|momentum_base|_p)$")
_AT_LEAST_ONE = re.compile(r"(_dim|_layers|_heads|_depth|_iterations|_splits|_size|_crops|prototypes)$")


def _method_meta(name: str, default: Any, meta: dict[str, Any]) -> dict[str, Any]:
    if meta:
        return meta
    if isinstance(default, bool):
        return {}
    if _POSITIVE.search(name):
        return {"gt": 0.0}
    if _UNIT.search(name):
        return {"min": 0.0, "max": 1.0}
    if isinstance(default, int) or default is None:
        # a default of 0 means "off" or "automatic" for these fields, so 0 stays allowed (None is "automatic"
        # where the default is None: 0 is not)
        lo = 1 if _AT_LEAST_ONE.search(name) and default != 0 else 0
        return {"min": lo, "max": _INT_MAX}
    return {}


def _validate_method(cfg: PretrainConfig, specs: Mapping[str, Any]) -> None:
    if not isinstance(cfg.method, dict):
        raise config_error("method", cfg.method, "expected a mapping with a name, e.g. method: {name: simclr}")
    name = cfg.method.get("name")
    if not isinstance(name, str) or not name:
        raise config_error("method.name", name, "missing; pass --method NAME (see `selfsup methods`)", flag="--method")
    if name not in specs:
        raise config_error("method.name", name, f"unknown method; choose one of: {', '.join(sorted(specs))}",
                           flag="--method")
    given = {k: v for k, v in cfg.method.items() if k != "name"}
    mcfg = apply_overrides(specs[name].config_cls(), given, "", "method")
    for f in fields(mcfg):
        check_value(f"method.{f.name}", getattr(mcfg, f.name), _method_meta(f.name, f.default, dict(f.metadata)))
    # keep the user's keys, now with their declared types (the saved config.yaml shows numbers, not strings)
    typed = to_dict(mcfg)
    cfg.method = {"name": name, **{k: typed[k] for k in given}}


def validate_config(cfg: PretrainConfig, *, methods: Mapping[str, Any], backbones: Collection[str]) -> None:
    """Check every field of ``cfg`` (types, ranges, finiteness, known names); normalises ``cfg.method`` in place.

    ``methods``: the method registry (name -> spec with ``config_cls``); ``backbones``: the known backbone names.
    They are passed in by the builder, which sits above the methods and models (the configuration schema sits
    below them). Raises :class:`ConfigError` (``key=value (flag): problem``) on the first bad value. Creates nothing.
    """
    _check_section(cfg, "")
    if cfg.backbone.name not in backbones:
        raise config_error("backbone.name", cfg.backbone.name,
                           f"unknown backbone; choose one of: {', '.join(backbones)}", flag="--backbone")
    _validate_method(cfg, methods)
    d = cfg.data
    if d.cache_size is not None and d.cache_size < d.image_size:
        raise config_error("data.cache_size", d.cache_size, f"must be >= data.image_size ({d.image_size})")
    if d.low_res_size and not 4 <= d.low_res_size < d.image_size:
        raise config_error("data.low_res_size", d.low_res_size,
                           f"must be between 4 and data.image_size - 1 ({d.image_size - 1}); 0 turns it off")
    o = cfg.optim
    if o.lr is not None and o.min_lr > o.lr:
        raise config_error("optim.min_lr", o.min_lr, f"must not exceed optim.lr ({o.lr:g})")
    check_accumulation(cfg, methods[cfg.method["name"]])


def check_accumulation(cfg: PretrainConfig, spec: Any) -> None:
    """``train.accumulate_steps`` > 1 only for a method that declares a per-sample loss (``spec.accumulates``), on
    a backbone without BatchNorm, with a batch it divides. The method's own modules are checked once built."""
    n, b = cfg.train.accumulate_steps, cfg.train.batch_size
    if n == 1:
        return
    key, drop = "train.accumulate_steps", "drop train.accumulate_steps"
    if not spec.accumulates:
        raise config_error(key, n, f"method {spec.name} cannot accumulate gradients: {spec.coupling}, so {n} x {b // n} "
                           f"is not {b}; {drop} or use mae/simmim")
    if not cfg.backbone.name.startswith("vit"):
        raise config_error(key, n, f"backbone {cfg.backbone.name} has BatchNorm, whose statistics over {b // n} "
                           f"images are not those over {b}; {drop} or use --backbone vit-tiny")
    if b % n:
        raise config_error(key, n, f"must divide train.batch_size ({b}) into equal micro-batches; e.g. "
                           f"{max(d for d in range(1, n + 1) if b % d == 0)}", flag="")


# ----------------------------------------------------------------------------------------------------
# Flags of commands without a config dataclass: argparse `type=` callables (argparse prints one line).


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """``type=int_range(1)``: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = " and ".join(b for b in (f">= {lo}" if lo is not None else "",
                                              f"<= {hi}" if hi is not None else "") if b)
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, *, open_lo: bool = False,
                open_hi: bool = False) -> Callable[[str], float]:
    """``type=float_range(0, open_lo=True)``: a finite number in the range (open ends exclusive)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(value)
        bad |= lo is not None and (value <= lo if open_lo else value < lo)
        bad |= hi is not None and (value >= hi if open_hi else value > hi)
        if bad:
            parts = []
            if lo is not None:
                parts.append(f"{'>' if open_lo else '>='} {lo:g}")
            if hi is not None:
                parts.append(f"{'<' if open_hi else '<='} {hi:g}")
            raise argparse.ArgumentTypeError(f"must be a finite number{' ' if parts else ''}{' and '.join(parts)}, "
                                             f"got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def device_name(text: str) -> str:
    """``type=device_name``: auto, cpu, mps, cuda or cuda:N."""
    if not re.fullmatch(DEVICE_PATTERN, text.strip()):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text.strip()


def int_list(lo: int = 1) -> Callable[[str], list[int]]:
    """``type=int_list()``: comma-separated integers >= lo, e.g. ``1,5``."""
    one = int_range(lo)

    def parse(text: str) -> list[int]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,5, got {text!r}")
        return [one(t) for t in items]

    parse.__name__ = "list"
    return parse


# ----------------------------------------------------------------------------------------------------
# Output paths, checked before any work starts


def _writable_ancestor(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder this process can create files in."""
    anc = path.parent if path.parent != path else path
    while not anc.exists() and anc.parent != anc:
        anc = anc.parent
    if not anc.is_dir():
        raise ConfigError(f"{flag} {path}: {anc} is a file, not a folder; choose another {flag}")
    try:  # a probe, not os.access: access() says yes to root on a read-only mount and to ACL-denied folders
        with tempfile.TemporaryFile(dir=anc):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write in {anc} ({exc.strerror or type(exc).__name__}); "
                          f"choose a writable {flag}") from None


def check_output_file(path: str | os.PathLike[str], flag: str = "--out",
                      suffixes: tuple[str, ...] | None = None) -> Path:
    """An output file: not an existing folder, with a writable (possibly not yet existing) parent folder."""
    p = Path(path)
    if not str(path).strip():
        raise ConfigError(f"{flag}: empty path; pass a file name")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise ConfigError(f"{flag} {p}: use a file name ending in {' or '.join(suffixes)}")
    if p.is_dir():
        raise ConfigError(f"{flag} {p} is a folder; pass a file name, e.g. {p / ('out' + (suffixes or ('',))[0])}")
    if p.exists() and not p.is_file():
        raise ConfigError(f"{flag} {p} exists and is not a regular file; choose another {flag}")
    _writable_ancestor(p, flag=flag)
    return p


def check_output_dir(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """An output folder: not an existing file, inside a writable folder (it may not exist yet)."""
    p = Path(path)
    if not str(path).strip():
        raise ConfigError(f"{flag}: empty path; pass a folder")
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {p} is a file, not a folder; choose another {flag}")
    if p.is_dir():
        try:
            with tempfile.TemporaryFile(dir=p):
                pass
        except OSError as exc:
            raise ConfigError(f"{flag} {p}: cannot write in it ({exc.strerror or type(exc).__name__}); choose a "
                              f"writable {flag}") from None
    else:
        _writable_ancestor(p, flag=flag)
    return p


__all__ = ["validate_config", "check_accumulation", "check_value", "int_range", "float_range", "int_list", "device_name", "check_output_file",
           "check_output_dir", "FLAGS"]
