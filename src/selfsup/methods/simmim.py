"""SimMIM: a simple framework for masked image modelling (Xie et al. 2021, arXiv 2111.09886).

The ViT encoder gets ALL patch positions: a masked patch's embedding is replaced by one shared learnable
mask token (before the position embedding is added). A linear head maps every masked token to its p*p*3
pixels (the paper's "one-layer prediction head"), and the loss is L1 on the masked pixels only, against
the normalised image (paper Sec. 3, Eq. 1).

Masking is random at the granularity of *mask patches* larger than the ViT patch: 60% of 32 px mask
patches at 192 px (paper Table 1/3). We scale the mask patch with the backbone patch: by default it is
2 x the ViT patch, which is the paper's 32 px for patch 16 and 8 px for patch 4 at 32 px (a 4 x 4 grid
of mask cells on CIFAR-size images; at 32 px a 4 px mask patch would be pixel-level masking, which the
paper found weaker, Table 1). Override with ``method.mask_patch_size`` (a multiple of the ViT patch that
divides the image size).

FAMT (``methods/famt.py``) reuses this with mask cells drawn by weight and some cells *thrown*: for SimMIM
the thrown tokens are dropped from the encoder sequence too (not replaced by mask tokens), so they cost
no compute and are absent from the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.augment.masking import (
    MASKED,
    MaskSplit,
    expand_cell_split,
    gather_tokens,
    patchify,
    sample_split,
    split_counts,
    vit_patch_embed,
    vit_run_blocks,
)
from selfsup.augment.recipes import ViewRecipe, ViewSpec
from selfsup.errors import ConfigError
from selfsup.methods.api import Batch, Progress, Recipe, StepOutput, register
from selfsup.methods.vit import MaskedViTMethod, full_view
from selfsup.models.backbones import feature_dim


@dataclass
class SimMIMConfig:
    mask_ratio: float = 0.6  # paper Table 1: 0.6 with 32 px mask patches
    mask_patch_size: int | None = None  # None = 2 x ViT patch (32 px at patch 16, as the paper; 8 px at 32 px)
    min_scale: float = 0.67  # RandomResizedCrop scale (0.67, 1), ratio (3/4, 4/3) + flip (paper Sec. 4.1)


def simmim_recipe(size: int, min_scale: float = 0.67) -> ViewRecipe:
    return ViewRecipe(views=[ViewSpec(size=size, scale=(min_scale, 1.0), jitter_p=0.0, gray_p=0.0)])


def simmim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SimMIM L1 loss (Xie et al. 2021, Eq. 1): mean absolute error over the masked pixels and channels.
    pred, target: [B, n_masked, P] (only masked patches)."""
    return (pred.float() - target.float()).abs().mean()


# Paper Sec. 4.1: AdamW, lr 8e-4 at batch 2048 (= 1e-4 x B/256), wd 0.05, betas (0.9, 0.999), 10 warmup
# epochs, cosine.
@register(
    "simmim",
    family="masked",
    paper="Xie et al. 2021, arXiv 2111.09886",
    config=SimMIMConfig,
    recipe=Recipe(optimizer="adamw", base_lr=1e-4, weight_decay=0.05, warmup_epochs=10, betas=(0.9, 0.999)),
    coupling="",
    summary="mask tokens in a ViT, linear head to pixels, L1 on masked pixels (60% of 2x-patch cells)",
)
class SimMIM(MaskedViTMethod):
    method_name = "simmim"

    def __init__(self, backbone: nn.Module, cfg: SimMIMConfig, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg, image_size)
        mps = cfg.mask_patch_size or 2 * self.patch
        if mps % self.patch or image_size % mps:
            raise ConfigError(
                f"method.mask_patch_size {mps} must be a multiple of the ViT patch {self.patch} and divide the "
                f"image size {image_size}; e.g. {2 * self.patch if image_size % (2 * self.patch) == 0 else self.patch}"
            )
        self.mask_patch_size = mps
        self.cell = mps // self.patch  # ViT patches per mask-cell side
        self.num_cells = (self.grid // self.cell) ** 2
        dim = feature_dim(backbone)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = nn.Linear(dim, self.patch * self.patch * 3)
        self.n_mask, self.n_throw = split_counts(self.num_cells, cfg.mask_ratio, 0.0)
        self.view_recipe = simmim_recipe(image_size, cfg.min_scale)

    # ---- masking over mask cells: FAMT overrides this
    def sample_cell_split(self, batch: Batch, x: torch.Tensor) -> MaskSplit:
        return sample_split(x.shape[0], self.num_cells, self.n_mask, self.n_throw, device=x.device)

    def forward_split(self, x: torch.Tensor, split: MaskSplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, encoder CLS feature [B, D], predictions [B, n_masked, p*p*3]) for a patch-level split."""
        net: Any = self.backbone.net  # type: ignore[union-attr]
        tokens, pos, cls = vit_patch_embed(net, x)
        masked = (split.state == MASKED).unsqueeze(-1)
        tokens = torch.where(masked, self.mask_token.to(tokens.dtype), tokens) + pos
        keep = torch.cat([split.visible, split.masked], dim=1)  # thrown tokens are dropped from the sequence
        h = vit_run_blocks(net, cls, gather_tokens(tokens, keep))
        pred = self.head(h[:, 1 + split.visible.shape[1] :])
        target = gather_tokens(patchify(x, self.patch), split.masked)
        return simmim_loss(pred, target), h[:, 0], pred

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        x = full_view(batch, self.image_size, self.method_name)
        split = expand_cell_split(self.sample_cell_split(batch, x), self.grid, self.cell)
        loss, feat, _ = self.forward_split(x, split)
        return StepOutput(loss, logs=self.step_logs(), embeddings=feat.detach().float())

    def step_logs(self) -> dict[str, float]:
        return {}
