"""Packaged CPU presets: YAML layers chosen for the best accuracy per CPU-minute (see each file's comments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.config.schema import load_yaml
from selfsup.errors import ConfigError

PRESET_DIR = Path(__file__).parent


def list_presets() -> dict[str, str]:
    """name -> first comment line of the preset file."""
    out = {}
    for p in sorted(PRESET_DIR.glob("*.yaml")):
        first = next((ln[1:].strip() for ln in p.read_text().splitlines() if ln.startswith("#")), "")
        out[p.stem] = first
    return out


def preset_path(name: str) -> Path:
    p = PRESET_DIR / f"{name}.yaml"
    if not p.is_file():
        known = ", ".join(list_presets()) or "none"
        raise ConfigError(f"unknown preset '{name}'; choose one of: {known}")
    return p


# Optimiser fields that belong to a preset's method; another method keeps its own paper recipe for them.
_METHOD_OPTIM_KEYS = ("name", "base_lr", "lr", "weight_decay", "betas")
# Data fields measured with the preset's method only (the resolution schedule; ViT methods cannot use it).
_METHOD_DATA_KEYS = ("low_res_size", "low_res_fraction")


def preset_layer(preset: dict[str, Any], method: str | None) -> dict[str, Any]:
    """A preset's YAML layer for ``--method``.

    A preset is tuned for one method (its ``method`` section). With another method, keep the preset's
    size-specific choices (backbone, batch, precision, warm-up length) but drop the method's
    hyper-parameters, its optimiser/LR and its resolution schedule, so the other method runs with its own paper recipe
    (``methods/<name>.py``) on the preset's hardware settings. The optional ``methods:`` mapping then adds
    per-method CPU adjustments (e.g. narrower projectors), each explained in the preset file.
    """
    per_method = preset.get("methods") or {}
    if not isinstance(per_method, dict):
        raise ConfigError("a preset's 'methods' section must map method names to config layers")
    layer = {k: v for k, v in preset.items() if k != "methods"}
    own = (layer.get("method") or {}).get("name")
    chosen = method or own
    if method is not None and own not in (None, method):
        layer.pop("method", None)
        layer["optim"] = {k: v for k, v in (layer.get("optim") or {}).items() if k not in _METHOD_OPTIM_KEYS}
        layer["data"] = {k: v for k, v in (layer.get("data") or {}).items() if k not in _METHOD_DATA_KEYS}
    extra = per_method.get(chosen) if chosen else None
    if extra:
        for section, values in extra.items():
            merged = dict(layer.get(section) or {})
            merged.update(values)
            layer[section] = merged
        if method is not None:
            layer.setdefault("method", {})["name"] = method
    return layer


def load_preset(name: str, method: str | None) -> dict[str, Any]:
    """The packaged preset ``name`` as a config layer for ``method`` (see ``preset_layer``)."""
    return preset_layer(load_yaml(preset_path(name)), method)


def config_file_layer(layer: dict[str, Any], method: str | None) -> dict[str, Any]:
    """A ``--config`` YAML layer; a copied preset file (it has a ``methods:`` section) goes through ``preset_layer``.

    Plain config files pass through unchanged, so their optimiser settings stay even with ``--method``.
    """
    return preset_layer(layer, method) if "methods" in layer else layer
