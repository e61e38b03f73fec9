"""Self-distillation losses (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL regression loss (Grill et al. 2020, arXiv 2006.07733, Eq. 2).

        L = || p/||p|| - z/||z|| ||^2 = 2 - 2 <p, z> / (||p|| ||z||)

    p: [B, D] online predictions; z: [B, D] target projections (gradient stopped here).
    Returns the batch mean. The paper symmetrises by swapping the views and summing the two terms.
    """
    p = F.normalize(p.float(), dim=1)
    z = F.normalize(z.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


def negative_cosine_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam D(p, z) = -<p/||p||, z/||z||> with stop-gradient on z (Chen & He 2020, Eq. 1-3). [B, D]."""
    return -(F.normalize(p.float(), dim=1) * F.normalize(z.detach().float(), dim=1)).sum(dim=1).mean()
