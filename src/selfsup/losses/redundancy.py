"""Redundancy-reduction losses (pure functions): Barlow Twins and VICReg.

Both need statistics of the *global* batch (per-dimension means, variances and cross-correlations).
When distributed, embeddings are gathered with the autograd-aware :func:`selfsup.distributed.gather`
and every process evaluates the same global loss; the all-gather backward sums the W identical
gradients onto each sample's own process and DDP then averages over the W processes, which gives
exactly the single-process gradient on the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup import distributed


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square [D, D] matrix as a flat [D * (D - 1)] tensor."""
    n = m.shape[0]
    if m.dim() != 2 or m.shape[1] != n:
        raise ValueError(f"off_diagonal expects a square matrix, got {tuple(m.shape)}")
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def batch_standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-dimension batch normalisation without affine parameters, as ``BatchNorm1d(affine=False)`` in
    training mode: (z - mean_b) / sqrt(var_b + eps) with the biased variance. z: [N, D]."""
    mean = z.mean(dim=0, keepdim=True)
    var = z.var(dim=0, unbiased=False, keepdim=True)
    return (z - mean) / torch.sqrt(var + eps)


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, arXiv 2103.03230, Eq. 1-2 and Alg. 1).

        C_ij = sum_b zA_bi zB_bj / N   (embeddings standardised per dimension over the batch)
        L_BT = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2

    z1, z2: [B, D] projector outputs of the two views (local batch). The standardisation uses the global
    batch (N = W * B) statistics like the reference's SyncBN + all-reduce of C. ``eps`` is BatchNorm's.
    Returns a scalar in float32.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two [B, D] tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    a = batch_standardize(distributed.gather(z1.float()), eps)
    b = batch_standardize(distributed.gather(z2.float()), eps)
    c = a.T @ b / a.shape[0]  # [D, D] cross-correlation
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def vicreg_terms(
    z1: torch.Tensor, z2: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three VICReg terms (Bardes et al. 2021, arXiv 2105.04906, Sec. 3.2 Eq. 1-5):

        s(Z, Z') = mean_b ||z_b - z'_b||^2 / D                      (invariance, mean squared error)
        v(Z)     = mean_j max(0, gamma - sqrt(Var(z^j) + eps))        (variance, hinge on the std)
        c(Z)     = sum_{i != j} Cov(Z)_ij^2 / D                       (covariance, unbiased Cov)

    Returns (s, (v(Z) + v(Z')) / 2, c(Z) + c(Z')) as in the reference implementation; the variance term
    is halved there, which only rescales mu. Variance and covariance use the global batch.
    z1, z2: [B, D] expander outputs of the two views.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two [B, D] tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1, z2 = z1.float(), z2.float()
    inv = F.mse_loss(z1, z2)
    x = distributed.gather(z1)
    y = distributed.gather(z2)
    n, d = x.shape
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + eps)
    std_y = torch.sqrt(y.var(dim=0) + eps)
    var = F.relu(gamma - std_x).mean() / 2 + F.relu(gamma - std_y).mean() / 2
    cov_x = x.T @ x / (n - 1)
    cov_y = y.T @ y / (n - 1)
    cov = off_diagonal(cov_x).pow(2).sum() / d + off_diagonal(cov_y).pow(2).sum() / d
    return inv, var, cov


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg: l = lambda s(Z, Z') + mu [v(Z) + v(Z')] / 2 + nu [c(Z) + c(Z')] (arXiv 2105.04906, Eq. 6;
    lambda = mu = 25, nu = 1, gamma = 1, eps = 1e-4 from Sec. 4.1). See :func:`vicreg_terms`."""
    inv, var, cov = vicreg_terms(z1, z2, gamma, eps)
    return sim_coeff * inv + std_coeff * var + cov_coeff * cov
