"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce, LeCun 2021, arXiv 2105.04906)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from selfsup.augment.recipes import byol_recipe
from selfsup.losses.redundancy import vicreg_terms
from selfsup.methods.api import Batch, Method, Progress, Recipe, StepOutput, forward_by_size, register
from selfsup.models.backbones import feature_dim
from selfsup.models.heads import mlp


@dataclass
class VICRegConfig:
    sim_coeff: float = 25.0  # lambda, invariance (Sec. 4.1)
    std_coeff: float = 25.0  # mu, variance (Sec. 4.1)
    cov_coeff: float = 1.0  # nu, covariance (Sec. 4.1)
    gamma: float = 1.0  # target standard deviation (Sec. 3.1, Eq. 1)
    eps: float = 1e-4  # inside the square root of the variance (Sec. 3.1, Eq. 2)
    proj_hidden_dim: int = 8192  # expander 8192-8192-8192 (Sec. 4.1); smaller for CPU runs, e.g. 2048
    proj_out_dim: int = 8192
    proj_layers: int = 3
    blur: bool = True  # BYOL's augmentations (Sec. 4.1 / App. C.1)
    min_scale: float = 0.08


# Paper (Sec. 4.1 / App. C): LARS, base lr 0.2 x B/256, wd 1e-6, 10 warmup epochs, cosine, B = 2048.
@register("vicreg", family="redundancy-reduction", paper="Bardes et al. 2021, arXiv 2105.04906",
          config=VICRegConfig,
          recipe=Recipe(optimizer="lars", base_lr=0.2, weight_decay=1e-6, warmup_epochs=10),
          coupling="its variance and covariance terms are batch statistics",
          summary="invariance + per-dimension variance hinge + covariance decorrelation on expander outputs")
class VICReg(nn.Module, Method):
    def __init__(self, backbone: nn.Module, cfg: VICRegConfig, *, image_size: int, grayscale: bool = False):
        super().__init__()
        self.cfg, self.backbone = cfg, backbone
        self.projector = mlp(feature_dim(backbone), cfg.proj_hidden_dim, cfg.proj_out_dim, cfg.proj_layers,
                             last_bias=False)
        self.view_recipe = byol_recipe(image_size, blur=cfg.blur, scale=(cfg.min_scale, 1.0),
                                       grayscale_input=grayscale)

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        cfg = self.cfg
        # one pass over both views (reference: separate passes, so per-view BN statistics)
        (z1, z2), h0 = forward_by_size(self.backbone, self.projector, batch.views[:2])
        inv, var, cov = vicreg_terms(z1, z2, cfg.gamma, cfg.eps)
        loss = cfg.sim_coeff * inv + cfg.std_coeff * var + cfg.cov_coeff * cov
        logs = {"invariance": float(inv.detach()), "variance": float(var.detach()), "covariance": float(cov.detach())}
        return StepOutput(loss, logs=logs, embeddings=h0)
