"""SimCLR: a simple framework for contrastive learning (Chen et al. 2020, arXiv 2002.05709)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from ..backbones import feature_dim
from ..heads import mlp
from ..losses.contrastive import nt_xent_loss
from ..views import simclr_recipe
from .api import Batch, Progress, Recipe, StepOutput, register


@dataclass
class SimCLRConfig:
    temperature: float = 0.2  # paper: 0.1 for ImageNet at batch 4096; 0.2-0.5 on CIFAR (Appendix B.9)
    proj_hidden_dim: int = 2048  # paper: hidden = backbone width; 2048 for ResNet-50 (Sec. 2.1)
    proj_out_dim: int = 128  # paper Sec. 2.1 / Fig. 8
    jitter_strength: float = 0.5  # paper: s=1.0 on ImageNet, s=0.5 on CIFAR (Appendix B.9)
    blur: bool = False  # paper: blur on ImageNet only (Appendix A, B.9)
    min_scale: float = 0.08  # RandomResizedCrop area lower bound
    hflip: bool = True  # paper: random horizontal flip p 0.5; turn off where mirror images differ (digits, text)
    decoupled: bool = False  # True: DCL loss (Yeh et al. 2021, arXiv 2110.06848): positive left out of the denominator


@register(
    "simclr",
    family="contrastive",
    paper="Chen et al. 2020, arXiv 2002.05709",
    config=SimCLRConfig,
    # Paper: LARS, lr 0.3 x B/256, wd 1e-6 (Sec. B.1) at batch 4096. On CIFAR at batch 256-512, the
    # same LARS recipe works (the paper's CIFAR runs use lr 1.0-1.5 with B=1024); we keep 0.3 x B/256.
    recipe=Recipe(optimizer="lars", base_lr=0.3, weight_decay=1e-6, warmup_epochs=10),
    summary="NT-Xent over two augmented views with in-batch negatives",
)
class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig, *, image_size: int, grayscale: bool = False):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.projector = mlp(feature_dim(backbone), cfg.proj_hidden_dim, cfg.proj_out_dim, 2)
        self.view_recipe = simclr_recipe(
            image_size,
            strength=cfg.jitter_strength,
            blur=cfg.blur,
            scale=(cfg.min_scale, 1.0),
            grayscale_input=grayscale,
        )
        if not cfg.hflip:
            self.view_recipe.views = [dataclasses.replace(v, hflip_p=0.0) for v in self.view_recipe.views]

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        x1, x2 = batch.views[0], batch.views[1]
        b = x1.shape[0]
        # One forward pass over both views: a larger batch keeps a 2-core CPU busier. BN statistics
        # are then shared by the two views, as with SimCLR's global BN.
        h = self.backbone(torch.cat([x1, x2]))
        z1, z2 = self.projector(h).split(b)
        loss = nt_xent_loss(z1, z2, self.cfg.temperature, decoupled=self.cfg.decoupled)
        return StepOutput(loss, embeddings=h[:b].detach())
