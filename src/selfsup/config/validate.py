"""Whole-config checks run at the end of ``build_config`` (placeholder: the reliability work fills it in)."""

from __future__ import annotations

from typing import Any


def validate_config(cfg: Any) -> None:
    """Raise ``ConfigError`` for an inconsistent configuration; nothing is checked here yet."""
    return None
