"""SwAV: swapping assignments between multiple views (Caron et al. 2020, arXiv 2006.09882)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed
from selfsup.augment.recipes import multicrop_recipe, simclr_recipe
from selfsup.errors import ConfigError
from selfsup.losses.clustering import sinkhorn, swav_loss
from selfsup.losses.contrastive import enqueue
from selfsup.methods.api import Batch, Progress, Recipe, StepOutput, register
from selfsup.methods.queue import QueueMethod
from selfsup.models.backbones import feature_dim
from selfsup.models.heads import mlp
from selfsup.models.multiview import forward_by_size


@dataclass
class SwAVConfig:
    temperature: float = 0.1  # tau (Sec. 4 / App. A.1, main_swav.py --temperature)
    sinkhorn_epsilon: float = 0.05  # eps of the entropic regularisation (Sec. 3.1, App. A.1)
    sinkhorn_iterations: int = 3  # (Sec. 3.1: "3 iterations are enough")
    num_prototypes: int = 3000  # K = 3000 on ImageNet (App. A.1); a few hundred suit small data sets
    proj_hidden_dim: int = 2048  # projection MLP 2048 -> 128 with BN (App. A.1)
    proj_out_dim: int = 128
    queue_size: int = 3840  # for small batches (App. A.1: 3840 at B = 256); 0 = no queue
    queue_start_epoch: int = 15  # the queue is filled from this epoch (main_swav.py --epoch_queue_starts 15)
    freeze_prototypes_epochs: int = 1  # prototypes fixed for the first epoch (313 iterations at B = 4096)
    n_global_crops: int = 2  # multi-crop 2 x 224 + 6 x 96 (Sec. 3.2), i.e. 2 global ...
    n_local_crops: int = 6  # ... and 6 local views
    global_min_scale: float = 0.14  # RandomResizedCrop scales (main_swav.py README: 0.14-1 and 0.05-0.14)
    local_max_scale: float = 0.14
    local_size: int = 0  # side of the local views; 0 = 96/224 of the image size
    jitter_strength: float = 1.0  # SimCLR colour distortion s = 1 (App. A.1); 0.5 is SimCLR's CIFAR setting
    blur: bool = True  # SimCLR blur p 0.5 (App. A.1)


def freeze(module: nn.Module, frozen: bool) -> bool:
    """Fix ``module`` for this step (main_swav.py sets the prototypes' p.grad = None). One process: toggle
    ``requires_grad``. Under DDP every registered parameter must get a gradient, so the caller gates the
    gradient to zero instead; returns True when it must."""
    if distributed.world_size() > 1:
        return frozen
    for p in module.parameters():
        p.requires_grad_(not frozen)
    return False


# Paper (App. A.1): LARS, lr 4.8 at B = 4096 (= 0.3 x B/256), final lr 0.0048, wd 1e-6, 10 warmup epochs.
@register(
    "swav",
    family="clustering",
    paper="Caron et al. 2020, arXiv 2006.09882",
    config=SwAVConfig,
    recipe=Recipe(optimizer="lars", base_lr=0.3, weight_decay=1e-6, warmup_epochs=10),
    coupling="its Sinkhorn-Knopp codes are computed over the batch",
    summary="predict one view's Sinkhorn cluster codes from the other views (online clustering)",
)
class SwAV(QueueMethod):
    def __init__(self, backbone: nn.Module, cfg: SwAVConfig, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg)
        if cfg.n_global_crops < 2:
            raise ConfigError("swav: needs n_global_crops >= 2 (codes are computed on the first two views)")
        if cfg.queue_size < 0 or cfg.num_prototypes < 2:
            raise ConfigError(
                f"swav: queue_size must be >= 0 and num_prototypes >= 2, got {cfg.queue_size}, "
                f"{cfg.num_prototypes}"
            )
        self.assign_views = [0, 1]  # crops_for_assign
        self.projector = mlp(feature_dim(backbone), cfg.proj_hidden_dim, cfg.proj_out_dim, 2)
        self.prototypes = nn.Linear(cfg.proj_out_dim, cfg.num_prototypes, bias=False)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        # one queue per assignment view of (globally gathered) normalised embeddings
        n_a = len(self.assign_views)
        self.init_queue(n_a, max(cfg.queue_size, 1), cfg.proj_out_dim)
        base = simclr_recipe(image_size, strength=cfg.jitter_strength, blur=cfg.blur, grayscale_input=grayscale)
        self.view_recipe = multicrop_recipe(base, n_global=cfg.n_global_crops, n_local=cfg.n_local_crops,
                                            local_size=cfg.local_size or None, global_scale=(cfg.global_min_scale, 1.0),
                                            local_scale=(0.05, cfg.local_max_scale))

    def _embed(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised projections [V*B, D] in view order (equal-size views share a forward pass), and
        the backbone features of the first view."""
        zs, first = forward_by_size(self.backbone, self.projector, views)
        return F.normalize(torch.cat(zs).float(), dim=1), first

    def _queue_active(self, progress: Progress) -> bool:
        return self.cfg.queue_size > 0 and progress.epoch >= self.cfg.queue_start_epoch

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        cfg = self.cfg
        b = batch.views[0].shape[0]
        # prototypes are kept on the unit sphere: normalised before every step (main_swav.py)
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        gate = freeze(self.prototypes, progress.epoch < cfg.freeze_prototypes_epochs)
        w = self.prototypes.weight
        if gate:
            w = w.detach() + 0 * w
        z, h0 = self._embed(batch.views)
        with torch.autocast(device_type=z.device.type, enabled=False):  # scores / tau in float32, not bf16
            scores = z.float() @ w.float().T  # [V*B, K]
        per_view = list(scores.split(b))
        codes: list[torch.Tensor] = []
        use_queue = self._queue_active(progress)
        with torch.no_grad():
            for a, v in enumerate(self.assign_views):
                s = per_view[v]
                if use_queue and int(self.queue_filled[a]) == cfg.queue_size:
                    # each process uses its own slice of the (identical, global) queue, so the distributed
                    # Sinkhorn sees every queued embedding exactly once
                    chunk = self.queue[a].chunk(distributed.world_size())[distributed.rank()]
                    s = torch.cat([chunk @ w.detach().float().T, s])
                codes.append(sinkhorn(s, cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)[-b:])
            if use_queue:
                for a, v in enumerate(self.assign_views):
                    zv = distributed.gather(z[v * b : (v + 1) * b].detach())
                    enqueue(self.queue[a], self.queue_ptr[a], zv, self.queue_filled[a])
        loss = swav_loss(per_view, codes, self.assign_views, cfg.temperature)
        return StepOutput(loss, embeddings=h0)
