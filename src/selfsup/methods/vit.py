"""What the masked-image-modelling methods (MAE, SimMIM and their FAMT variants) share: the ViT's patch layout
and the one full-size view they train on."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.augment.masking import require_vit
from selfsup.errors import ConfigError
from selfsup.methods.api import Batch, MethodModule


def vit_layout(backbone: nn.Module, method: str, image_size: int) -> tuple[int, int, int]:
    """(patch size, patches per side, patches per image) of a ViT ``backbone`` at ``image_size``; ConfigError for
    another backbone."""
    patch, grid = require_vit(backbone, method, image_size)
    return patch, grid, grid * grid


def full_view(batch: Batch, image_size: int, method: str) -> torch.Tensor:
    """The step's one view [B, 3, S, S]; it must have the backbone's size (its position embeddings are fixed)."""
    x = batch.views[0]
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        raise ConfigError(f"{method}: views must be {image_size} px, got {tuple(x.shape[-2:])}")
    return x


class MaskedViTMethod(MethodModule):
    """The base of MAE and SimMIM: needs a ViT backbone (``vit-tiny`` / ``vit-small``; ConfigError otherwise) and
    keeps its patch layout at ``image_size`` (``patch``, ``grid`` patches per side, ``num_patches``)."""

    method_name = ""

    def __init__(self, backbone: nn.Module, cfg: object, image_size: int) -> None:
        super().__init__(backbone, cfg)
        self.image_size = image_size
        self.patch, self.grid, self.num_patches = vit_layout(backbone, self.method_name, image_size)
