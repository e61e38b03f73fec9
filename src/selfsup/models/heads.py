"""Projection and prediction heads (MLPs), shared by all methods."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    *,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_bias: bool = True,
) -> nn.Sequential:
    """``num_layers`` linear layers; BN + ReLU after every hidden layer.

    SimCLR: 2 layers, out 128. BYOL/SimSiam projector: 2 layers + BN (SimSiam: 3 layers, last BN).
    Barlow Twins / VICReg expanders: 3 layers of 8192. ``last_batch_norm`` adds an affine-free BN
    on the output (SimSiam projector, Barlow Twins normalisation is done in the loss instead).
    """
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    layers: list[nn.Module] = []
    dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
    for i in range(num_layers):
        last = i == num_layers - 1
        layers.append(nn.Linear(dims[i], dims[i + 1], bias=last_bias if last else not batch_norm))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        elif last_batch_norm:
            layers.append(nn.BatchNorm1d(dims[i + 1], affine=False))
    return nn.Sequential(*layers)
