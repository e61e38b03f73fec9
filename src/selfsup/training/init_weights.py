"""``backbone.init`` (``--init``): the weights a new run's encoder starts from instead of a random draw.

Accepted: a selfsup run folder, its ``checkpoint.pt`` or ``encoder.safetensors`` (read by
:func:`selfsup.checkpoint.load_encoder`), or ``torchvision:NAME:/path/w.pth`` / ``timm:NAME:/path`` (read by
:func:`selfsup.models.external.read_weights`: a local file, safetensors or a ``weights_only`` torch load, nothing
downloaded). The weights go strictly into the backbone named in the config: every key and shape must match, or a
one-line :class:`CheckpointError` names the file and the first mismatch. Classifier weights in a torchvision/timm
file (``fc.``, ``head.``, ...) are dropped, since selfsup's encoders end at the pooled features. Applied once, when a
run starts: on ``--resume`` the checkpoint's weights win.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from selfsup.checkpoint import load_encoder
from selfsup.config import PretrainConfig
from selfsup.errors import CheckpointError
from selfsup.models.backbones import build_backbone
from selfsup.models.external import is_external, parse_spec, read_weights

_CLASSIFIERS = ("fc.", "head.", "heads.", "classifier.")


def _fit_keys(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A library's state dict in the keys of selfsup's wrapper around that library's model: selfsup's encoders
    hold the torchvision/timm model as one attribute (``net.``), so its keys gain that prefix; classifier keys
    the encoder does not have are dropped."""
    prefixes = {k.split(".", 1)[0] for k in own}
    if len(prefixes) == 1 and not any(k in own for k in state):
        (p,) = prefixes
        state = {f"{p}.{k}": v for k, v in state.items()}
    return {k: v for k, v in state.items()
            if k in own or not k.split(".", 1)[-1].startswith(_CLASSIFIERS) and not k.startswith(_CLASSIFIERS)}


def _hint(cfg: PretrainConfig, key: str) -> str:
    b = cfg.backbone
    if b.name.startswith("resnet") and b.small_stem and key.endswith("conv1.weight"):
        return ("the run's small 3x3 stem (used at --image-size <= 96) does not fit weights trained with the standard "
                "7x7 stem: add --set backbone.small_stem=false or use an --image-size above 96")
    if b.name.startswith("vit") and ("patch_embed" in key or "pos_embed" in key):
        return ("the weights were trained with another patch size or image size: set --set backbone.patch_size=P "
                f"and --image-size to theirs (this run: patch {b.patch_size}, {cfg.data.image_size} px)")
    return f"use the --backbone these weights were trained with (this run builds '{b.name}')"


def load_init_state(cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """``cfg.backbone.init``'s weights, checked against a freshly built ``cfg.backbone`` (keys and shapes)."""
    spec = str(cfg.backbone.init)
    if is_external(spec) and not Path(spec).exists():
        state = read_weights(parse_spec(spec)["weights"])
    else:
        encoder, _ = load_encoder(spec)
        state = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    own = build_backbone(cfg.backbone, cfg.data.image_size).state_dict()
    state = _fit_keys(state, own)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if shape:
        k = shape[0]
        raise CheckpointError(f"--init {spec}: {k} has shape {tuple(state[k].shape)} in the file but "
                              f"{tuple(own[k].shape)} in this run's {cfg.backbone.name}; {_hint(cfg, k)}")
    if missing or unexpected:
        what = (f"{len(missing)} of the {cfg.backbone.name}'s weights are missing (e.g. {missing[0]})" if missing
                else f"{len(unexpected)} weights do not belong to a {cfg.backbone.name} (e.g. {unexpected[0]})")
        raise CheckpointError(f"--init {spec}: {what}; {_hint(cfg, '')}")
    return state


def apply_init(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy the checked ``state`` (from :func:`load_init_state`) into ``backbone``."""
    backbone.load_state_dict(state, strict=True)
