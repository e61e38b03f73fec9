"""SimCLR: a simple framework for contrastive learning (Chen et al. 2020, arXiv 2002.05709)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from selfsup.augment.recipes import multicrop_recipe, simclr_recipe
from selfsup.errors import ConfigError
from selfsup.losses.contrastive import multi_view_nt_xent_loss, nt_xent_loss
from selfsup.methods.api import Batch, MethodModule, Progress, Recipe, StepOutput, register
from selfsup.models.backbones import feature_dim
from selfsup.models.heads import mlp
from selfsup.models.multiview import forward_by_size


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
    # multi-crop (SwAV, Caron et al. 2020, arXiv 2006.09882, Sec. 3.2 and Table 4 "SimCLR + multi-crop"): extra
    # small, cheap views, every pair of views of an image a positive (losses.multi_view_nt_xent_loss). 0 = the
    # paper's two views. Local views copy view 1's colour ops with their own size and crop scale.
    n_local_crops: int = 0
    local_size: int = 0  # side of the local views; 0 = 96/224 of the image size (32 -> 12 px), as SwAV/DINO
    local_min_scale: float = 0.05  # local crop area range: DINO's 0.05-0.4 (SwAV: 0.05-0.14 with 0.14-1 globals)
    local_max_scale: float = 0.4


# Paper: LARS, lr 0.3 x B/256, wd 1e-6 (Sec. B.1) at batch 4096. On CIFAR at batch 256-512, the
# same LARS recipe works (the paper's CIFAR runs use lr 1.0-1.5 with B=1024); we keep 0.3 x B/256.
@register(
    "simclr",
    family="contrastive",
    paper="Chen et al. 2020, arXiv 2002.05709",
    config=SimCLRConfig,
    recipe=Recipe(optimizer="lars", base_lr=0.3, weight_decay=1e-6, warmup_epochs=10),
    coupling="its loss uses in-batch negatives (and BatchNorm in its projector)",
    summary="NT-Xent over two augmented views with in-batch negatives (optional multi-crop: method.n_local_crops)",
)
class SimCLR(MethodModule):
    def __init__(self, backbone: nn.Module, cfg: SimCLRConfig, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg)
        self.projector = mlp(feature_dim(backbone), cfg.proj_hidden_dim, cfg.proj_out_dim, 2)
        self.view_recipe = simclr_recipe(
            image_size,
            strength=cfg.jitter_strength,
            blur=cfg.blur,
            scale=(cfg.min_scale, 1.0),
            grayscale_input=grayscale,
        )
        if cfg.n_local_crops < 0:
            raise ConfigError(f"simclr: method.n_local_crops must be >= 0, got {cfg.n_local_crops}")
        if cfg.n_local_crops:
            if not 0.0 < cfg.local_min_scale <= cfg.local_max_scale <= 1.0:
                raise ConfigError("simclr: need 0 < method.local_min_scale <= method.local_max_scale <= 1, got "
                                  f"{cfg.local_min_scale}, {cfg.local_max_scale}")
            self.view_recipe = multicrop_recipe(
                self.view_recipe, n_global=2, n_local=cfg.n_local_crops, local_size=cfg.local_size or None,
                global_scale=(cfg.min_scale, 1.0), local_scale=(cfg.local_min_scale, cfg.local_max_scale),
            )
        if not cfg.hflip:
            self.view_recipe.views = [dataclasses.replace(v, hflip_p=0.0) for v in self.view_recipe.views]

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        # Equal-size views share one forward pass: a larger batch keeps a 2-core CPU busier, and the BN
        # statistics are shared by the two global views, as with SimCLR's global BN.
        z, h0 = forward_by_size(self.backbone, self.projector, batch.views)
        if len(z) == 2:
            loss = nt_xent_loss(z[0], z[1], self.cfg.temperature, decoupled=self.cfg.decoupled)
        else:
            loss = multi_view_nt_xent_loss(z, self.cfg.temperature, decoupled=self.cfg.decoupled)
        return StepOutput(loss, embeddings=h0)
