"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce, LeCun 2021, arXiv 2105.04906)."""

from __future__ import annotations

from dataclasses import dataclass

from selfsup.losses.redundancy import vicreg_terms
from selfsup.methods.api import Batch, Progress, Recipe, StepOutput, register
from selfsup.methods.barlowtwins import BarlowTwins
from selfsup.models.multiview import forward_by_size


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
@register(
    "vicreg",
    family="redundancy-reduction",
    paper="Bardes et al. 2021, arXiv 2105.04906",
    config=VICRegConfig,
    recipe=Recipe(optimizer="lars", base_lr=0.2, weight_decay=1e-6, warmup_epochs=10),
    coupling="its variance and covariance terms are batch statistics",
    summary="invariance + per-dimension variance hinge + covariance decorrelation on expander outputs",
)
class VICReg(BarlowTwins):
    """Barlow Twins' architecture, as the paper sets it up (Sec. 4.1): an expander of Linear-BN-ReLU layers with a
    bias-free output and BYOL's views; only the loss differs."""

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        cfg = self.cfg
        # one pass over both views (reference: separate passes, so per-view BN statistics)
        (z1, z2), h0 = forward_by_size(self.backbone, self.projector, batch.views[:2])
        inv, var, cov = vicreg_terms(z1, z2, cfg.gamma, cfg.eps)
        loss = cfg.sim_coeff * inv + cfg.std_coeff * var + cfg.cov_coeff * cov
        logs = {"invariance": float(inv.detach()), "variance": float(var.detach()), "covariance": float(cov.detach())}
        return StepOutput(loss, logs=logs, embeddings=h0)
