"""DINO: self-distillation with no labels (Caron et al. 2021, arXiv 2104.14294)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from selfsup import distributed
from selfsup.augment.recipes import byol_recipe, multicrop_recipe
from selfsup.errors import ConfigError
from selfsup.losses.dino import dino_center_update, dino_loss, teacher_temperature
from selfsup.methods.api import Batch, MethodModule, Progress, Recipe, StepOutput, register
from selfsup.models.backbones import feature_dim
from selfsup.models.ema import cosine_momentum, ema_update_all, make_teacher
from selfsup.models.multiview import forward_by_size


@dataclass
class DINOConfig:
    out_dim: int = (
        65536  # K (Sec. 3.1 / main_dino.py --out_dim); smaller K (e.g. 4096) is much cheaper on CPU
    )
    head_hidden_dim: int = (
        2048  # 3-layer MLP head, hidden 2048, GELU, no BN (App. / vision_transformer.DINOHead)
    )
    head_bottleneck_dim: int = 256  # L2-normalised bottleneck before the last layer
    use_bn_in_head: bool = False  # --use_bn_in_head False
    norm_last_layer: bool = True  # weight-normalised last layer with its norm fixed to 1 (--norm_last_layer)
    student_temp: float = 0.1  # tau_s (Sec. 3.1)
    warmup_teacher_temp: float = 0.04  # tau_t warmed up linearly 0.04 -> 0.07 over 30 epochs (Sec. 4.1/App.)
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: float = 30.0
    center_momentum: float = 0.9  # m in Eq. 4 (main_dino.py DINOLoss)
    momentum_base: float = 0.996  # teacher EMA, cosine to 1 (Sec. 3.1); the authors suggest 0.9995 at B=256
    freeze_last_layer_epochs: int = 1  # last layer fixed during the first epoch (--freeze_last_layer 1)
    n_global_crops: int = 2  # multi-crop: 2 global views (scale 0.4-1) ...
    n_local_crops: int = (
        6  # ... and local views (scale 0.05-0.4); main_dino.py default 8, paper tables 2x224+6x96/10x96
    )
    global_min_scale: float = 0.4
    local_max_scale: float = 0.4
    local_size: int = 0  # side of the local views; 0 = 96/224 of the image size (views.default_local_size)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation, w_k = g_k v_k / ||v_k|| (Salimans & Kingma 2016),
    as DINO's last layer. With ``fixed_norm`` g = 1 and is not a parameter (DINO's norm_last_layer)."""

    def __init__(self, in_dim: int, out_dim: int, fixed_norm: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight_v, a=5**0.5)  # nn.Linear's default init
        self.weight_g = None if fixed_norm else nn.Parameter(torch.ones(out_dim, 1))
        self.zero_grad_gate = False  # set by the method: zero gradient but keep the graph (DDP, frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v: torch.Tensor = self.weight_v
        g: torch.Tensor | None = self.weight_g
        if self.zero_grad_gate:  # the value is unchanged, the gradient is exactly zero
            v = v.detach() + 0 * v
            g = None if g is None else g.detach() + 0 * g
        w = F.normalize(v, dim=1)
        if g is not None:
            w = w * g
        return F.linear(x, w)


class DINOHead(nn.Module):
    """MLP (3 layers, GELU) -> L2-normalised bottleneck -> weight-normalised linear layer to K logits."""

    def __init__(self, in_dim: int, cfg: DINOConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim, cfg.head_hidden_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim]
        for i in range(3):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < 2:
                if cfg.use_bn_in_head:
                    layers.append(nn.BatchNorm1d(dims[i + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)  # DINOHead._init_weights
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(
            cfg.head_bottleneck_dim, cfg.out_dim, fixed_norm=cfg.norm_last_layer
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def freeze(module: nn.Module, frozen: bool, gate: WeightNormLinear | None = None) -> None:
    """Keep ``module`` fixed for this step (DINO's cancel_gradients_last_layer sets p.grad = None).

    One process: toggle ``requires_grad``, so the parameters get no gradient and the optimizer skips them.
    DDP expects a gradient for every parameter it registered, so there the gate zeroes the gradient instead.
    """
    if distributed.world_size() > 1 and gate is not None:
        gate.zero_grad_gate = frozen
        return
    for p in module.parameters():
        p.requires_grad_(not frozen)


# Paper (Sec. 4.1 / App.): AdamW, lr 5e-4 x B/256 after 10 warmup epochs, wd 0.04 (cosine to 0.4 in the
# reference; our wd is constant), min lr 1e-6. For ResNets the paper uses LARS: pass --optim lars.
@register(
    "dino",
    family="self-distillation",
    paper="Caron et al. 2021, arXiv 2104.14294",
    config=DINOConfig,
    recipe=Recipe(optimizer="adamw", base_lr=5e-4, weight_decay=0.04, warmup_epochs=10),
    coupling="its teacher centre is updated from each batch's mean output",
    summary="student matches a centered, sharpened EMA teacher across multi-crop views",
)
class DINO(MethodModule):
    def __init__(self, backbone: nn.Module, cfg: DINOConfig, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg)
        if cfg.n_global_crops < 1 or cfg.n_global_crops + cfg.n_local_crops < 2:
            raise ConfigError("dino: needs n_global_crops >= 1 and at least 2 views in total")
        self.head = DINOHead(feature_dim(backbone), cfg)
        self.teacher_backbone, self.teacher_head = make_teacher(backbone), make_teacher(self.head)
        self.center: torch.Tensor  # a registered buffer (checkpointed)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        # DINO augmentations (main_dino.py DataAugmentationDINO): BYOL's colour ops; blur 1.0 / 0.1 and
        # solarize 0 / 0.2 on the two global views; blur 0.5 on the local views.
        base = byol_recipe(image_size, blur=True, grayscale_input=grayscale)
        recipe = multicrop_recipe(base, n_global=cfg.n_global_crops, n_local=cfg.n_local_crops,
                                  local_size=cfg.local_size or None, global_scale=(cfg.global_min_scale, 1.0),
                                  local_scale=(0.05, cfg.local_max_scale))
        recipe.views[cfg.n_global_crops :] = [replace(v, blur_p=0.5) for v in recipe.views[cfg.n_global_crops :]]
        self.view_recipe = recipe

    def _student(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Student logits per view (views of equal size share one forward pass, like the reference's
        MultiCropWrapper) and the backbone features of the first view."""
        return forward_by_size(self.backbone, self.head, views)

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        n_g = self.cfg.n_global_crops
        frozen = progress.epoch < self.cfg.freeze_last_layer_epochs
        freeze(self.head.last_layer, frozen, self.head.last_layer)
        student, h0 = self._student(batch.views)
        with torch.no_grad():
            b = batch.views[0].shape[0]
            t_logits = self.teacher_head(self.teacher_backbone(torch.cat(batch.views[:n_g])))
            teacher = list(t_logits.split(b))
        t_temp = teacher_temperature(
            progress.epoch_float,
            self.cfg.warmup_teacher_temp,
            self.cfg.teacher_temp,
            self.cfg.warmup_teacher_temp_epochs,
        )
        loss = dino_loss(student, teacher, self.center, self.cfg.student_temp, t_temp)
        # center update with this batch's teacher outputs, after the loss used the previous center
        self.center.copy_(dino_center_update(self.center, t_logits, self.cfg.center_momentum))
        m = cosine_momentum(self.cfg.momentum_base, progress.fraction)
        return StepOutput(loss, logs={"teacher_temp": t_temp, "momentum": m}, embeddings=h0)

    @torch.no_grad()
    def after_step(self, progress: Progress) -> None:
        m = cosine_momentum(self.cfg.momentum_base, progress.fraction)
        ema_update_all(m, (self.teacher_backbone, self.backbone), (self.teacher_head, self.head))
