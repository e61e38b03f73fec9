"""Encoders from torchvision or timm by name, with weights from a LOCAL file (never downloaded).

Spec strings (accepted wherever a ``--checkpoint`` is)::

    torchvision:resnet18:/path/resnet18.pth
    timm:vit_tiny_patch16_224:/path/model.safetensors
    timm:resnet50:/path/w.pth:160          # optional trailing :SIZE = input side (default 224)

The weights file is a ``.safetensors`` file or a ``torch.save`` state dict (read with
``weights_only=True``: no code runs); state dicts nested under ``state_dict``/``model``/``module`` and
``module.`` key prefixes (DataParallel) are unwrapped. The classifier is removed, so the encoder returns
pooled features ``[B, F]``: timm models are built with ``num_classes=0``; for torchvision models the
last of ``fc``/``classifier``/``heads``/``head`` is replaced by ``nn.Identity``, and its weights in the
file are ignored. Inputs are normalised with the ImageNet mean/std (what both libraries' weights expect).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.errors import CheckpointError, ConfigError
from selfsup.models.state import load_state_strict

PREFIXES = ("torchvision", "timm")
DEFAULT_SIZE = 224
_CLASSIFIERS = ("fc", "classifier", "heads", "head")


def is_external(spec: str | Path) -> bool:
    """True for ``torchvision:...`` / ``timm:...`` spec strings."""
    return isinstance(spec, str) and spec.split(":", 1)[0] in PREFIXES and spec.count(":") >= 2


def parse_spec(spec: str) -> dict[str, Any]:
    """``"lib:name:path[:size]"`` -> ``{"library", "model", "weights", "image_size"}``."""
    lib, rest = spec.split(":", 1)
    name, _, tail = rest.partition(":")
    size = DEFAULT_SIZE
    m = re.fullmatch(r"(.*):(\d+)", tail)
    if m and not Path(tail).exists():
        tail, size = m.group(1), int(m.group(2))
    if not name or not tail:
        raise ConfigError(f"'{spec}': use {lib}:MODEL:/path/to/weights(.pth|.safetensors)[:SIZE]")
    return {"library": lib, "model": name, "weights": tail, "image_size": size}


def _strip_classifier(net: nn.Module) -> str | None:
    for attr in _CLASSIFIERS:
        if isinstance(getattr(net, attr, None), nn.Module):
            setattr(net, attr, nn.Identity())
            return attr
    return None


def build_external(info: dict[str, Any]) -> nn.Module:
    """The architecture named in ``info`` (from :func:`parse_spec`), randomly initialised, no classifier."""
    lib, name, size = info["library"], info["model"], int(info["image_size"])
    if lib == "torchvision":
        import torchvision

        try:
            net = torchvision.models.get_model(name, weights=None)
        except (ValueError, KeyError):
            raise ConfigError(f"torchvision has no model '{name}'; see torchvision.models.list_models()") from None
        info["classifier"] = _strip_classifier(net)
        return net
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"timm has no model '{name}'; see timm.list_models()")
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    try:
        return timm.create_model(name, img_size=size, **kwargs)
    except TypeError:  # convolutional models take no img_size
        return timm.create_model(name, **kwargs)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path} (external encoders need LOCAL weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path} is not a readable weights file ({first[:120]})") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a local weights file (safetensors or a ``weights_only`` torch load), unwrapped as above."""
    return _read_state(Path(path))


def load_external(spec: str) -> tuple[nn.Module, dict[str, Any]]:
    """Build and load the encoder named by ``spec``; returns ``(encoder in eval mode, info)`` like
    :func:`selfsup.checkpoint.load_encoder` (``info["external"]`` holds the parsed spec)."""
    ext = parse_spec(spec)
    net = build_external(ext)
    state = _read_state(Path(ext["weights"]))
    own = net.state_dict()
    head = ext.get("classifier")
    drop = [k for k in state if k not in own and (
        (head and k.startswith(f"{head}.")) or k.startswith(("fc.", "head.", "classifier.", "heads.")))]
    state = {k: v for k, v in state.items() if k not in drop}
    load_state_strict(net, state, f"{ext['library']} {ext['model']}", ext["weights"])
    net.eval()
    with torch.no_grad():
        nf = int(net(torch.zeros(1, 3, ext["image_size"], ext["image_size"])).reshape(1, -1).shape[1])
    net.num_features = nf  # type: ignore[assignment]
    info = {"backbone": {"name": f"{ext['library']}:{ext['model']}"}, "image_size": int(ext["image_size"]),
            "source": spec, "external": ext, "num_features": nf}
    return net, info
