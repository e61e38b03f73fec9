"""Barlow Twins: self-supervised learning via redundancy reduction (Zbontar et al. 2021, arXiv 2103.03230)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import nn

from selfsup.augment.recipes import byol_recipe
from selfsup.losses.redundancy import barlow_twins_loss
from selfsup.methods.api import Batch, MethodModule, Progress, Recipe, StepOutput, register
from selfsup.models.backbones import feature_dim
from selfsup.models.heads import mlp
from selfsup.models.multiview import forward_by_size


class ExpanderConfig(Protocol):
    """The fields of the expander and the views, shared with VICReg (which subclasses :class:`BarlowTwins`)."""

    proj_hidden_dim: int
    proj_out_dim: int
    proj_layers: int
    blur: bool
    min_scale: float


@dataclass
class BarlowTwinsConfig:
    lambd: float = 5e-3  # lambda, weight of the off-diagonal terms (Sec. 2 / 4; reference main.py: 0.0051)
    proj_hidden_dim: int = 8192  # projector 8192-8192-8192 (Sec. 4 "Architecture"); smaller for CPU runs,
    proj_out_dim: int = 8192  # e.g. 2048 (the paper's Fig. 4 shows accuracy grows with the dimension)
    proj_layers: int = 3
    blur: bool = True  # BYOL's augmentations (Sec. 4 "Image augmentations")
    min_scale: float = 0.08


# Paper (Sec. 4): LARS, lr 0.2 x B/256 for weights (0.0048 for biases and BN; we use one LR, biases are
# excluded from LARS adaptation and weight decay), wd 1.5e-6, 10 warmup epochs, cosine, B = 2048.
@register(
    "barlowtwins",
    family="redundancy-reduction",
    paper="Zbontar et al. 2021, arXiv 2103.03230",
    config=BarlowTwinsConfig,
    recipe=Recipe(optimizer="lars", base_lr=0.2, weight_decay=1.5e-6, warmup_epochs=10),
    coupling="its loss is a cross-correlation matrix over the batch",
    summary="drive the cross-correlation of the two views' embeddings to the identity",
)
class BarlowTwins(MethodModule):
    def __init__(self, backbone: nn.Module, cfg: ExpanderConfig, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg)
        # Linear-BN-ReLU hidden layers, bias-free output (reference); the per-dimension normalisation of
        # the embeddings (an affine-free BN) is done in the loss, over the global batch.
        self.projector = mlp(feature_dim(backbone), cfg.proj_hidden_dim, cfg.proj_out_dim, cfg.proj_layers,
                             last_bias=False)
        self.view_recipe = byol_recipe(image_size, blur=cfg.blur, scale=(cfg.min_scale, 1.0),
                                       grayscale_input=grayscale)

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        # Deviation: one forward pass over both views (the reference runs them separately, so its BN
        # statistics are per view); the loss standardises each view separately as in the paper.
        (z1, z2), h0 = forward_by_size(self.backbone, self.projector, batch.views[:2])
        return StepOutput(barlow_twins_loss(z1, z2, self.cfg.lambd), embeddings=h0)
