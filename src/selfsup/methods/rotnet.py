"""RotNet: unsupervised representation learning by predicting image rotations (Gidaris, Singh, Komodakis
2018, arXiv 1803.07728)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.augment.recipes import ViewRecipe, ViewSpec
from selfsup.methods.api import Batch, MethodModule, Progress, Recipe, StepOutput, register
from selfsup.models.backbones import feature_dim
from selfsup.models.heads import mlp


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of every image: [B, C, H, W] (square) -> ([4B, C, H, W], labels [4B]).

    Label r means a counter-clockwise rotation by r x 90 degrees (0, 90, 180, 270; Sec. 2.1-2.2). All four
    copies are in the same batch, which the paper found better than one random rotation (Sec. 2.2/3).
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotate_batch needs square images, got {tuple(x.shape[-2:])}")
    rots = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return torch.cat(rots), labels


@dataclass
class RotNetConfig:
    head_hidden_dim: int = 0  # 0 = a linear classifier on the features; > 0 adds an MLP hidden layer
    min_scale: float = 0.5  # crop area lower bound; the paper (CIFAR) uses random crops + flips only
    hflip_p: float = 0.5


# Paper (Sec. 3.1, CIFAR): SGD, batch 128, momentum 0.9, wd 5e-4, lr 0.1 (step decay; ours is cosine).
@register(
    "rotnet",
    family="context",
    paper="Gidaris et al. 2018, arXiv 1803.07728",
    config=RotNetConfig,
    recipe=Recipe(optimizer="sgd", base_lr=0.1, weight_decay=5e-4, warmup_epochs=0),
    coupling="",
    summary="classify which of 4 rotations (0/90/180/270) was applied to an image",
)
class RotNet(MethodModule):
    def __init__(self, backbone: nn.Module, cfg: RotNetConfig, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg)
        width = feature_dim(backbone)
        self.classifier = mlp(width, cfg.head_hidden_dim, 4, 2) if cfg.head_hidden_dim > 0 else nn.Linear(width, 4)
        # one mildly augmented view, no colour ops (rotations are the pretext task; only horizontal flips,
        # which do not make rotations ambiguous)
        spec = ViewSpec(size=image_size, scale=(cfg.min_scale, 1.0), hflip_p=cfg.hflip_p, jitter_p=0.0, gray_p=0.0)
        self.view_recipe = ViewRecipe(views=[spec])

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        x = batch.views[0]
        b = x.shape[0]
        xr, labels = rotate_batch(x)
        h = self.backbone(xr)
        logits = self.classifier(h).float()
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=1) == labels).float().mean()
        return StepOutput(loss, logs={"rotation_acc": float(acc)}, embeddings=h[:b].detach())
