"""NNCLR: nearest-neighbour contrastive learning (Dwibedi et al. 2021, arXiv 2104.14548)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed
from selfsup.augment.recipes import byol_recipe
from selfsup.errors import ConfigError
from selfsup.losses.contrastive import enqueue, nearest_neighbour, nnclr_loss
from selfsup.methods.api import Batch, Progress, Recipe, StepOutput, register
from selfsup.methods.queue import QueueMethod
from selfsup.models.backbones import feature_dim
from selfsup.models.heads import mlp
from selfsup.models.multiview import forward_by_size


@dataclass
class NNCLRConfig:
    temperature: float = 0.1  # tau (Sec. 4.1)
    queue_size: int = 98304  # support set size (Sec. 4.1; ablation in Sec. 5)
    proj_hidden_dim: int = 2048  # Sec. 4.1: 3-layer projection MLP 2048-2048-256 with BN
    proj_out_dim: int = 256
    pred_hidden_dim: int = 4096  # Sec. 4.1: 2-layer prediction MLP, 4096 hidden
    blur: bool = True  # BYOL's augmentations (Sec. 4.1)
    min_scale: float = 0.08


# Paper (Sec. 4.1): LARS, base lr 0.3 x B/256 (B = 4096), wd 1e-6, 10 warmup epochs, cosine.
@register(
    "nnclr",
    family="contrastive",
    paper="Dwibedi et al. 2021, arXiv 2104.14548",
    config=NNCLRConfig,
    recipe=Recipe(optimizer="lars", base_lr=0.3, weight_decay=1e-6, warmup_epochs=10),
    coupling="its loss uses in-batch negatives and a support-set update per batch",
    summary="the nearest neighbour from a support set replaces the positive in InfoNCE",
)
class NNCLR(QueueMethod):
    def __init__(self, backbone: nn.Module, cfg: NNCLRConfig, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg)
        if cfg.queue_size < 1:
            raise ConfigError(f"nnclr: queue_size must be >= 1, got {cfg.queue_size}")
        self.projector = mlp(feature_dim(backbone), cfg.proj_hidden_dim, cfg.proj_out_dim, 3, last_batch_norm=True)
        self.predictor = mlp(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim, 2)
        # support set Q (FIFO of normalised view-1 projections) and how much of it holds real entries
        self.init_queue(cfg.queue_size, cfg.proj_out_dim)
        self.view_recipe = byol_recipe(image_size, blur=cfg.blur, scale=(cfg.min_scale, 1.0),
                                       grayscale_input=grayscale)

    def support_neighbours(self, z: torch.Tensor) -> torch.Tensor:
        """NN(z, Q) over the filled part of the support set; before anything was enqueued (the very
        first step) z itself (detached) stands in, as if the support set held the current batch."""
        filled = int(self.queue_filled)
        if filled == 0:
            return F.normalize(z.detach().float(), dim=1)
        return nearest_neighbour(z, self.queue[:filled])

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        (z1, z2), h0 = forward_by_size(self.backbone, self.projector, batch.views[:2])
        p1, p2 = self.predictor(torch.cat([z1, z2])).split(z1.shape[0])
        nn1, nn2 = self.support_neighbours(z1), self.support_neighbours(z2)
        # symmetrised (Sec. 3.2): NN(z1) against p2 and NN(z2) against p1
        loss = 0.5 * (nnclr_loss(nn1, p2, self.cfg.temperature) + nnclr_loss(nn2, p1, self.cfg.temperature))
        # the support set is updated with view-1 projections of the (global) batch, after the loss
        enqueue(
            self.queue,
            self.queue_ptr,
            F.normalize(distributed.gather(z1.detach().float()), dim=1),
            self.queue_filled,
        )
        return StepOutput(loss, embeddings=h0)
