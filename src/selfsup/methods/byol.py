"""BYOL: bootstrap your own latent (Grill et al. 2020, arXiv 2006.07733)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from selfsup.augment.recipes import byol_recipe
from selfsup.losses.distillation import byol_loss
from selfsup.methods.api import Batch, MethodModule, Progress, Recipe, StepOutput, register
from selfsup.models.backbones import feature_dim
from selfsup.models.ema import cosine_momentum, ema_update_all, make_teacher
from selfsup.models.heads import mlp
from selfsup.models.multiview import forward_by_size, teacher_outputs


@dataclass
class BYOLConfig:
    proj_hidden_dim: int = 4096  # paper Sec. 3.3: MLP 4096 -> 256
    proj_out_dim: int = 256
    pred_hidden_dim: int = 4096  # predictor has the same architecture as the projector
    momentum_base: float = 0.996  # tau_base, increased to 1 with a cosine schedule (Sec. 3.2)
    blur: bool = True  # asymmetric blur p 1.0 / 0.1 and solarize p 0 / 0.2 (Table 6)
    min_scale: float = 0.08


# Paper: LARS, lr 0.2 x B/256, wd 1.5e-6, 10 warmup epochs (Sec. 3.3).
@register(
    "byol",
    family="self-distillation",
    paper="Grill et al. 2020, arXiv 2006.07733",
    config=BYOLConfig,
    recipe=Recipe(optimizer="lars", base_lr=0.2, weight_decay=1.5e-6, warmup_epochs=10),
    coupling="BatchNorm in its projector and predictor couples the samples of a batch",
    summary="online network predicts an EMA target's projection of the other view",
)
class BYOL(MethodModule):
    def __init__(self, backbone: nn.Module, cfg: BYOLConfig, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg)
        self.projector = mlp(feature_dim(backbone), cfg.proj_hidden_dim, cfg.proj_out_dim, 2)
        self.predictor = mlp(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim, 2)
        self.teacher_backbone = make_teacher(backbone)
        self.teacher_projector = make_teacher(self.projector)
        self.view_recipe = byol_recipe(image_size, blur=cfg.blur, scale=(cfg.min_scale, 1.0),
                                       grayscale_input=grayscale)

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        (p1, p2), h0 = forward_by_size(self.backbone, lambda h: self.predictor(self.projector(h)), batch.views[:2])
        z1, z2 = teacher_outputs(self.teacher_backbone, self.teacher_projector, batch.views[:2])
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)  # symmetrised (Sec. 3.1)
        m = cosine_momentum(self.cfg.momentum_base, progress.fraction)  # the teacher momentum now
        return StepOutput(loss, logs={"momentum": m}, embeddings=h0)

    @torch.no_grad()
    def after_step(self, progress: Progress) -> None:
        m = cosine_momentum(self.cfg.momentum_base, progress.fraction)
        ema_update_all(m, (self.teacher_backbone, self.backbone), (self.teacher_projector, self.projector))
