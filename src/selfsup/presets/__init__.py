"""Packaged CPU presets: YAML layers chosen for the best accuracy per CPU-minute (see each file's comments)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

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
