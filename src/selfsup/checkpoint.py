"""Checkpoints: written atomically, loaded without unpickling arbitrary objects.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings, lists and dicts, and is
always read back with ``torch.load(..., weights_only=True)``: a malicious file cannot run code. The
encoder alone is also exported as ``encoder.safetensors`` (+ ``encoder.json``) for sharing.

Layout of ``checkpoint.pt``::

    {"format": "selfsup-checkpoint", "version": 1,
     "config": <resolved PretrainConfig as a dict>,
     "method": <method state_dict: backbone, heads, teachers, queues ...>,
     "optimizer": <optimizer state_dict> (absent in exported files),
     "step": int, "epoch": int, "rng": <torch CPU RNG state>, "extra": {...}}
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.config import BackboneConfig, from_dict
from selfsup.errors import CheckpointError
from selfsup.models.backbones import build_backbone
from selfsup.models.external import is_external, load_external
from selfsup.models.state import load_state_strict

FORMAT = "selfsup-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text))


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(path, lambda p: torch.save(payload, p))


def resolve_checkpoint_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
        if not p.is_file():
            raise CheckpointError(
                f"no {CHECKPOINT_NAME} in run folder {path}; pass a run folder that finished at least "
                "one epoch, or the checkpoint file itself"
            )
    elif not p.exists():
        raise CheckpointError(f"checkpoint not found: {p} (pass a run folder or a checkpoint.pt file)")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a selfsup checkpoint (a file or a run folder) safely."""
    p = resolve_checkpoint_path(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{p} is not a readable selfsup checkpoint ({first[:120]}); pass a checkpoint.pt written by "
            "`selfsup pretrain`"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{p} is not a selfsup checkpoint (no '{FORMAT}' marker); pass a checkpoint.pt written by "
            "`selfsup pretrain`"
        )
    if int(payload.get("version", 0)) > VERSION:
        raise CheckpointError(f"{p} was written by a newer selfsup (format v{payload['version']}); upgrade selfsup")
    return payload


def backbone_state(method_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights inside a method state dict (keys under ``backbone.``)."""
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in method_state.items() if k.startswith(prefix)}


def export_encoder(run_dir: str | Path, encoder: nn.Module, info: dict[str, Any]) -> Path:
    """Write ``encoder.safetensors`` + ``encoder.json`` (the config needed to rebuild it)."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    out = run_dir / "encoder.safetensors"
    atomic_write(out, lambda p: save_file(state, p))
    atomic_write_text(run_dir / "encoder.json", json.dumps(info, indent=2))
    return out


def load_encoder(path: str | Path, expect_backbone: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the pretrained encoder from a run folder, ``checkpoint.pt`` or ``encoder.safetensors``,
    or build a torchvision/timm model with local weights from ``torchvision:NAME:WEIGHTS`` /
    ``timm:NAME:WEIGHTS`` (see :mod:`selfsup.models.external`; info then also has ``external``).

    Returns ``(encoder in eval mode, info)`` where info holds ``backbone`` (a BackboneConfig dict),
    ``image_size`` and ``source``. Raises :class:`CheckpointError` with a one-line message otherwise.
    """
    if is_external(str(path)) and not Path(path).exists():  # torchvision:NAME:WEIGHTS / timm:NAME:WEIGHTS
        net, ext_info = load_external(str(path))
        if expect_backbone and ext_info["backbone"]["name"] != expect_backbone:
            raise CheckpointError(f"{path} is a '{ext_info['backbone']['name']}' encoder, not '{expect_backbone}'")
        return net, ext_info
    p = Path(path)
    if p.suffix == ".safetensors" or (p.is_dir() and not (p / CHECKPOINT_NAME).exists()
                                       and (p / "encoder.safetensors").exists()):
        st = p if p.suffix == ".safetensors" else p / "encoder.safetensors"
        meta_path = st.with_suffix(".json")
        if not st.is_file() or not meta_path.is_file():
            raise CheckpointError(f"{st}: needs {meta_path.name} beside it (written by `selfsup pretrain`)")
        from safetensors.torch import load_file

        try:
            state = load_file(str(st))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{st} is not a valid safetensors file ({exc})") from None
        info = json.loads(meta_path.read_text())
        source: Path = st
    else:
        source = resolve_checkpoint_path(p)
        payload = load_checkpoint(source)
        cfg = payload.get("config", {})
        info = {"backbone": cfg.get("backbone", {}), "image_size": cfg.get("data", {}).get("image_size", 32)}
        state = backbone_state(payload.get("method", {}))
    bcfg = from_dict(BackboneConfig, info["backbone"])
    if expect_backbone and bcfg.name != expect_backbone:
        raise CheckpointError(
            f"{source} holds a '{bcfg.name}' encoder, not '{expect_backbone}'; drop --backbone or pass a "
            f"{expect_backbone} checkpoint"
        )
    encoder = build_backbone(bcfg, int(info["image_size"]))
    load_state_strict(encoder, state, f"{bcfg.name} encoder", source)
    encoder.eval()
    info = {**info, "source": str(source)}
    return encoder, info
