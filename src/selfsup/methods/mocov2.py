"""MoCo v2: momentum contrast with an MLP head and stronger augmentation (Chen, Fan, Girshick, He 2020,
arXiv 2003.04297; MoCo: He et al. 2019, arXiv 1911.05722)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed
from selfsup.augment.recipes import simclr_recipe
from selfsup.errors import ConfigError
from selfsup.losses.contrastive import enqueue, moco_queue_loss
from selfsup.methods.api import Batch, MethodModule, Progress, Recipe, StepOutput, register
from selfsup.models.backbones import feature_dim
from selfsup.models.ema import ema_update_all, make_teacher
from selfsup.models.heads import mlp


@dataclass
class MoCoV2Config:
    temperature: float = 0.2  # MoCo v2 Sec. 2 / Table 1 (MoCo v1 used 0.07)
    queue_size: int = 65536  # K, number of negative keys (MoCo v1 Sec. 3.1 / 4.1, kept in v2)
    momentum: float = 0.999  # key-encoder momentum m, constant (MoCo v1 Sec. 3.2)
    proj_hidden_dim: int = 2048  # v2 Sec. 2: 2-layer MLP head (2048-d hidden, ReLU), no BN
    proj_out_dim: int = 128
    blur: bool = True  # v2 "aug+": SimCLR's blur added (Sec. 2); jitter 0.4/0.4/0.4/0.1 = strength 0.5
    min_scale: float = 0.2  # reference main_moco.py: RandomResizedCrop(scale=(0.2, 1.0))
    key_bn_splits: int = 2  # our stand-in for Shuffle BN (v1 Sec. 3.3), see forward(); 1 = off


# Paper: SGD lr 0.03 at batch 256, wd 1e-4, momentum 0.9, cosine schedule, no warmup (Sec. 2-3).
@register(
    "mocov2",
    family="contrastive",
    paper="Chen et al. 2020, arXiv 2003.04297",
    config=MoCoV2Config,
    recipe=Recipe(optimizer="sgd", base_lr=0.03, weight_decay=1e-4, warmup_epochs=0),
    coupling="its forward enqueues the batch's keys (later micro-batches would see them as negatives)",
    summary="InfoNCE against a queue of 65k keys from a momentum encoder",
)
class MoCoV2(MethodModule):
    def __init__(self, backbone: nn.Module, cfg: MoCoV2Config, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg)
        if cfg.queue_size < 1 or cfg.key_bn_splits < 1:
            raise ConfigError(
                f"mocov2: queue_size and key_bn_splits must be >= 1, got {cfg.queue_size}, "
                f"{cfg.key_bn_splits}"
            )
        self.projector = mlp(feature_dim(backbone), cfg.proj_hidden_dim, cfg.proj_out_dim, 2, batch_norm=False)
        self.teacher_backbone, self.teacher_projector = make_teacher(backbone), make_teacher(self.projector)
        # the queue starts as random unit vectors, as in the reference implementation
        self.queue: torch.Tensor  # registered buffers (checkpointed)
        self.queue_ptr: torch.Tensor
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_out_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.view_recipe = simclr_recipe(image_size, strength=0.5, blur=cfg.blur, scale=(cfg.min_scale, 1.0),
                                         grayscale_input=grayscale)

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        """Momentum-encoder keys. MoCo's Shuffle BN (v1 Sec. 3.3) stops a key and its query from sharing
        BN statistics. Deviation: with one process we instead normalise the keys in ``key_bn_splits``
        random groups (the queries use the whole batch), which breaks the same shortcut."""
        b = x.shape[0]
        splits = min(self.cfg.key_bn_splits, b // 2) if b >= 4 else 1
        if splits <= 1:
            return self.teacher_projector(self.teacher_backbone(x))
        perm = torch.randperm(b, device=x.device)
        k = torch.cat([self.teacher_projector(self.teacher_backbone(x[idx])) for idx in perm.chunk(splits)])
        return k[torch.argsort(perm)]

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        x1, x2 = batch.views[0], batch.views[1]
        h = self.backbone(x1)
        q = self.projector(h)
        k = self._keys(x2)
        loss = moco_queue_loss(q, k, self.queue, self.cfg.temperature)
        # dequeue and enqueue after the loss: the current keys become negatives for later batches
        enqueue(self.queue, self.queue_ptr, F.normalize(distributed.gather(k.float()), dim=1))
        return StepOutput(loss, embeddings=h.detach())

    @torch.no_grad()
    def after_step(self, progress: Progress) -> None:
        # the reference updates the key encoder at the start of each forward; doing it after each
        # optimizer step is the same sequence of weights
        ema_update_all(self.cfg.momentum, (self.teacher_backbone, self.backbone), (self.teacher_projector, self.projector))
