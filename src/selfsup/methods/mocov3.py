"""MoCo v3 (Chen, Xie, He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers",
arXiv 2104.02057)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.augment.recipes import byol_recipe
from selfsup.losses.contrastive import mocov3_loss
from selfsup.methods.api import Batch, MethodModule, Progress, Recipe, StepOutput, register
from selfsup.models.backbones import feature_dim
from selfsup.models.ema import cosine_momentum, ema_update_all, make_teacher
from selfsup.models.heads import mlp
from selfsup.models.multiview import forward_by_size, teacher_outputs


@dataclass
class MoCoV3Config:
    temperature: float = 1.0  # tau: 1.0 for ResNet, 0.2 for ViT (reference main_moco.py --moco-t, README)
    proj_hidden_dim: int = (
        4096  # Sec. 3 / App.: projection MLP 4096 hidden, 256 out, BN (last BN affine-free)
    )
    proj_out_dim: int = 256
    proj_layers: int = 2  # 2 for ResNet, 3 for ViT (reference builder)
    pred_hidden_dim: int = 4096  # 2-layer prediction MLP, 4096 hidden
    momentum_base: float = 0.99  # m = 0.99 raised to 1 with a half-cycle cosine (--moco-m 0.99 --moco-m-cos)
    blur: bool = True  # BYOL's augmentation (Sec. 4 "we follow BYOL's augmentation")
    min_scale: float = 0.08  # --crop-min 0.08


# Paper (ResNet-50): LARS, lr 0.6 x B/256 (100 ep; 0.3 for longer), wd 1e-6, 10 warmup epochs.
# ViTs use AdamW (lr 1.5e-4 x B/256, wd 0.1): pass --optim adamw for a ViT backbone.
@register(
    "mocov3",
    family="contrastive",
    paper="Chen, Xie, He 2021, arXiv 2104.02057",
    config=MoCoV3Config,
    recipe=Recipe(optimizer="lars", base_lr=0.6, weight_decay=1e-6, warmup_epochs=10),
    coupling="its loss uses in-batch negatives (and BatchNorm in its heads)",
    summary="symmetric in-batch InfoNCE (x 2 tau) between predictions and momentum-encoder keys",
)
class MoCoV3(MethodModule):
    def __init__(self, backbone: nn.Module, cfg: MoCoV3Config, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg)
        d = cfg.proj_out_dim
        self.projector = mlp(feature_dim(backbone), cfg.proj_hidden_dim, d, cfg.proj_layers, last_batch_norm=True,
                             last_bias=False)
        self.predictor = mlp(d, cfg.pred_hidden_dim, d, 2, last_batch_norm=True, last_bias=False)
        self.teacher_backbone, self.teacher_projector = make_teacher(backbone), make_teacher(self.projector)
        self.view_recipe = byol_recipe(image_size, blur=cfg.blur, scale=(cfg.min_scale, 1.0),
                                       grayscale_input=grayscale)

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        # Deviation: both views go through one forward pass (BN statistics over 2B, as SimCLR/BYOL here);
        # the reference runs the views separately. No queue: keys come from the (global) batch.
        (q1, q2), h0 = forward_by_size(self.backbone, lambda h: self.predictor(self.projector(h)), batch.views[:2])
        k1, k2 = teacher_outputs(self.teacher_backbone, self.teacher_projector, batch.views[:2])
        loss = mocov3_loss(q1, q2, k1, k2, self.cfg.temperature)
        m = cosine_momentum(self.cfg.momentum_base, progress.fraction)
        return StepOutput(loss, logs={"momentum": m}, embeddings=h0)

    @torch.no_grad()
    def after_step(self, progress: Progress) -> None:
        m = cosine_momentum(self.cfg.momentum_base, progress.fraction)
        ema_update_all(m, (self.teacher_backbone, self.backbone), (self.teacher_projector, self.projector))
