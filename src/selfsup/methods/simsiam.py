"""SimSiam: exploring simple Siamese representation learning (Chen & He 2020, arXiv 2011.10566)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.augment.recipes import simclr_recipe
from selfsup.losses.distillation import negative_cosine_loss
from selfsup.methods.api import Batch, MethodModule, Progress, Recipe, StepOutput, register
from selfsup.models.backbones import feature_dim
from selfsup.models.heads import mlp
from selfsup.models.multiview import forward_by_size


@dataclass
class SimSiamConfig:
    proj_hidden_dim: int = 2048  # Sec. 4.1: 3-layer projection MLP, BN on every layer incl. the output
    proj_out_dim: int = 2048  # d = 2048
    pred_hidden_dim: int = 512  # Sec. 4.1: 2-layer predictor with a bottleneck of 512 (Table 5: d / 4)
    fix_pred_lr: bool = True  # Sec. 4.1 / Table 1: the predictor's LR is not decayed
    blur: bool = True  # MoCo v2 augmentations (App. A)
    min_scale: float = 0.2  # RandomResizedCrop(scale=(0.2, 1.0)) (App. A)


# Paper (Sec. 4.1): SGD, lr 0.05 x B/256, wd 1e-4, momentum 0.9, cosine decay, no warmup (B = 512).
@register(
    "simsiam",
    family="self-distillation",
    paper="Chen & He 2020, arXiv 2011.10566",
    config=SimSiamConfig,
    recipe=Recipe(optimizer="sgd", base_lr=0.05, weight_decay=1e-4, warmup_epochs=0),
    coupling="BatchNorm in its projector and predictor couples the samples of a batch",
    summary="negative cosine between a predictor and a stop-gradient projection of the other view",
)
class SimSiam(MethodModule):
    def __init__(self, backbone: nn.Module, cfg: SimSiamConfig, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg)
        # the output layer's bias is redundant before the affine-free BN (the reference freezes it)
        self.projector = mlp(feature_dim(backbone), cfg.proj_hidden_dim, cfg.proj_out_dim, 3, last_batch_norm=True,
                             last_bias=False)
        self.predictor = mlp(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim, 2)
        # MoCo v2 / SimSiam augmentation: jitter (0.4, 0.4, 0.4, 0.1) p 0.8 = SimCLR strength 0.5
        self.view_recipe = simclr_recipe(image_size, strength=0.5, blur=cfg.blur, scale=(cfg.min_scale, 1.0),
                                         grayscale_input=grayscale)

    def param_groups(self) -> list[dict[str, Any]]:
        """The predictor in its own group with a constant LR (``fixed_lr``, read by ``optim.set_lr``)."""
        pred = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in pred]
        groups: list[dict[str, Any]] = [{"params": rest}]
        predictor = [p for p in self.predictor.parameters() if p.requires_grad]
        groups.append(
            {"params": predictor, "fixed_lr": True} if self.cfg.fix_pred_lr else {"params": predictor}
        )
        return groups

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        (z1, z2), h0 = forward_by_size(self.backbone, self.projector, batch.views[:2])
        p1, p2 = self.predictor(torch.cat([z1, z2])).split(z1.shape[0])
        # Eq. 4: L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2
        loss = 0.5 * negative_cosine_loss(p1, z2) + 0.5 * negative_cosine_loss(p2, z1)
        return StepOutput(loss, embeddings=h0)
