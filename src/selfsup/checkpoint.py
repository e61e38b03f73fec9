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
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.config import BackboneConfig, from_dict
from selfsup.errors import CheckpointError, ConfigError, TrainingDiverged
from selfsup.models.backbones import build_backbone
from selfsup.models.external import is_external, load_external
from selfsup.models.state import load_state_strict

FORMAT = "selfsup-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    with _UMASK_LOCK:  # os.umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file.

    The file gets the mode a plain ``open()`` would give (0666 minus the umask), not mkstemp's private 0600.
    A temporary file left by a killed process is named ``.NAME.*.tmp`` (see :func:`clean_stale_temp`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text))


def clean_stale_temp(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files :func:`atomic_write` leaves when its process is killed mid-write.

    Call it only while holding the folder's run lock (:mod:`selfsup.runlock`): then no live writer owns them.
    """
    removed = []
    for stale in Path(folder).glob(".*.tmp"):
        if stale.is_file() and stale.name.count(".") >= 3:
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


# ----------------------------------------------------------------------------------------------------
# Finite-state guarantee: nothing non-finite is ever written


def first_nonfinite(state: dict[str, Any]) -> str | None:
    """The first key of a (nested) state dict whose floating tensor holds NaN or inf; None if all are finite.

    One device sync for the whole dict: the per-tensor flags are stacked before they are read.
    """
    items: list[tuple[str, torch.Tensor]] = []

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() or obj.is_complex():
                items.append((prefix, obj))
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)

    walk("", state)
    if not items:
        return None
    by_device: dict[torch.device, list[int]] = {}
    for i, (_, t) in enumerate(items):
        by_device.setdefault(t.device, []).append(i)
    ok = torch.ones(len(items), dtype=torch.bool)
    for idx in by_device.values():  # one transfer (one sync) per device, not one per tensor
        # min and max are finite iff every element is (both propagate NaN): one pass, no copy, and much cheaper
        # on the CPU than isfinite().all()'s boolean reduction
        ok[idx] = torch.stack([_all_finite(items[i][1]) for i in idx]).cpu()
    if bool(ok.all()):
        return None
    return items[int((~ok).nonzero()[0])][0]


def _all_finite(t: torch.Tensor) -> torch.Tensor:
    """A 0-d bool tensor on ``t``'s device: every element of ``t`` is finite (complex: both parts)."""
    t = t.detach()
    if t.numel() == 0:
        return torch.ones((), dtype=torch.bool, device=t.device)
    if t.is_complex():
        t = torch.view_as_real(t)
    return torch.isfinite(torch.stack(torch.aminmax(t))).all()


def ensure_finite(module: nn.Module, step: int, last_checkpoint: str | Path) -> None:
    """Stop a run whose parameters or buffers (BatchNorm statistics) became NaN/inf, naming the last checkpoint.

    Every checkpoint is finite by construction (:func:`save_checkpoint` refuses others), so the one named is a
    safe place to resume from.
    """
    from selfsup import distributed

    bad = first_nonfinite(module.state_dict())
    if not distributed.any_true(bad is not None):  # a collective: every rank stops at the same step
        return
    bad = bad or "another process's weights"
    last = Path(last_checkpoint)
    if last.is_file():
        advice = (f"the last checkpoint {last} is finite: rerun the same command with --resume and a lower --lr "
                  "(or add --set optim.clip_grad=1.0)")
    else:
        advice = ("no checkpoint was saved yet: rerun the same command with a lower --lr (or add --set "
                  "optim.clip_grad=1.0, or --precision fp32)")
    raise TrainingDiverged(f"the model's weights became NaN or infinite by step {step} ({bad}); nothing was saved "
                           f"from this step on; {advice}")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically; refuse (keeping the previous file) if any tensor is NaN or inf."""
    bad = first_nonfinite({k: payload[k] for k in ("method", "optimizer") if k in payload})
    if bad is not None:
        raise TrainingDiverged(f"refusing to write {path}: {bad} holds NaN or infinite values (the previous "
                               "checkpoint, if any, is kept); lower the learning rate (--lr) and rerun")
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
    except MemoryError:
        raise
    except Exception as exc:  # any failure of the unpickler on a user's file: KeyError, IndexError, Unpickling...
        raise CheckpointError(
            f"{p} is not a readable selfsup checkpoint ({_reason(exc)}); pass a checkpoint.pt written by "
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


def _reason(exc: BaseException) -> str:
    """A short reason for a failed load, cut at a word boundary (torch's messages run to many lines)."""
    if isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc).lower().replace(" ", "_"):
        return "it holds Python objects that a safe load refuses to create, so it was not unpickled"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join((str(exc).strip().splitlines() or [""])[0].split())
    if not text:
        return type(exc).__name__
    if len(text) > 100:
        text = text[:100].rsplit(" ", 1)[0] + " ..."
    return f"{type(exc).__name__}: {text}"


def backbone_state(method_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's weights inside a method state dict (keys under ``backbone.``)."""
    prefix = "backbone."
    return {k[len(prefix) :]: v for k, v in method_state.items() if isinstance(k, str) and k.startswith(prefix)}


def export_encoder(run_dir: str | Path, encoder: nn.Module, info: dict[str, Any]) -> Path:
    """Write ``encoder.safetensors`` + ``encoder.json`` (the config needed to rebuild it)."""
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    out = run_dir / "encoder.safetensors"
    bad = first_nonfinite(state)
    if bad is not None:
        raise TrainingDiverged(f"refusing to write {out}: {bad} holds NaN or infinite values; lower the learning "
                               "rate (--lr) and rerun")
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
            raise CheckpointError(f"{st} is not a valid safetensors file ({_reason(exc)}); pass the "
                                  "encoder.safetensors written by `selfsup pretrain`") from None
        try:
            info = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"{meta_path} is not valid JSON ({_reason(exc)}); it must be the encoder.json "
                                  "written beside encoder.safetensors by `selfsup pretrain`") from None
        if not isinstance(info, dict) or not isinstance(info.get("backbone"), dict) or "image_size" not in info:
            raise CheckpointError(f"{meta_path} lacks the 'backbone' and 'image_size' entries; it must be the "
                                  "encoder.json written by `selfsup pretrain`")
        source: Path = st
    else:
        source = resolve_checkpoint_path(p)
        payload = load_checkpoint(source)
        cfg = payload.get("config", {})
        if not isinstance(cfg, dict) or not isinstance(payload.get("method", {}), dict):
            raise CheckpointError(f"{source}: its config or weights are not mappings; pass a checkpoint.pt "
                                  "written by `selfsup pretrain`")
        data_cfg = cfg.get("data", {}) if isinstance(cfg.get("data", {}), dict) else {}
        info = {"backbone": cfg.get("backbone", {}), "image_size": data_cfg.get("image_size", 32)}
        state = backbone_state(payload.get("method", {}))
    try:
        bcfg = from_dict(BackboneConfig, info["backbone"], str(source))
        image_size = int(info["image_size"])
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: its saved encoder settings are invalid ({exc})") from None
    if expect_backbone and bcfg.name != expect_backbone:
        raise CheckpointError(
            f"{source} holds a '{bcfg.name}' encoder, not '{expect_backbone}'; drop --backbone or pass a "
            f"{expect_backbone} checkpoint"
        )
    encoder = build_backbone(bcfg, image_size)
    load_state_strict(encoder, state, f"{bcfg.name} encoder", source)
    encoder.eval()
    info = {**info, "source": str(source)}
    return encoder, info
