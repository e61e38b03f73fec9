"""MAE: masked autoencoders (He et al. 2021, arXiv 2111.06377).

A random 75% of the patches is masked; the ViT encoder sees only the visible patches (plus CLS); a
lightweight decoder of timm ``Block``s gets the encoded visible tokens plus one shared learnable mask token
per masked patch (all with fixed 2D sin-cos positions) and predicts the pixels of every masked patch. The
loss is the mean squared error on masked patches only, against per-patch normalised pixels (each target
patch minus its mean, divided by its std; paper Sec. 3 "Reconstruction target", Table 1d).

Decoder: the paper's default is 8 blocks of width 512 (16 heads) for 224 px (Table 1a/1b show that
narrower/shallower decoders lose little). For small images (< 128 px, e.g. CIFAR at 32 px with 64 patches)
we default to 4 blocks of width 256 (8 heads); both are overridable (``method.decoder_*``).

The split machinery (visible / masked / thrown, :mod:`selfsup.augment.masking`) is shared with FAMT
(``methods/famt.py``), which only changes how the split is drawn: thrown patches are removed from the
encoder, the decoder and the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.augment.masking import (
    MaskSplit,
    gather_tokens,
    patchify,
    sample_split,
    sincos_pos_embed_2d,
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
class MAEConfig:
    mask_ratio: float = 0.75  # paper Sec. 4 / Fig. 5: 75%
    decoder_dim: int | None = None  # None = 512 (paper, >= 128 px) or 256 (< 128 px)
    decoder_depth: int | None = None  # None = 8 (paper, >= 128 px) or 4 (< 128 px)
    decoder_heads: int | None = None  # None = 16 (paper) or 8
    norm_pix_loss: bool = True  # per-patch normalised pixel target (paper Table 1d)
    min_scale: float = 0.2  # RandomResizedCrop scale (0.2, 1) + flip, no colour jitter (paper App. A.1)


def mae_recipe(size: int, min_scale: float = 0.2) -> ViewRecipe:
    """One view: random resized crop (scale [min_scale, 1]) + horizontal flip; no colour augmentation."""
    return ViewRecipe(views=[ViewSpec(size=size, scale=(min_scale, 1.0), jitter_p=0.0, gray_p=0.0)])


def mae_loss(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """MAE reconstruction loss (He et al. 2021, Sec. 3): mean over the given (masked) patches of the per-patch
    mean squared error. pred, target: [B, n, P] (P = p*p*C pixels per patch). With ``norm_pix`` the target
    patch is normalised by its own mean and (unbiased) variance: (t - mean) / sqrt(var + eps)."""
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    return ((pred.float() - target) ** 2).mean()


def _decoder_defaults(image_size: int) -> tuple[int, int, int]:
    return (512, 8, 16) if image_size >= 128 else (256, 4, 8)


# Paper App. A.1: AdamW, base lr 1.5e-4 x B/256, betas (0.9, 0.95), wd 0.05, 40 warmup epochs, cosine.
@register(
    "mae",
    family="masked",
    paper="He et al. 2021, arXiv 2111.06377",
    config=MAEConfig,
    recipe=Recipe(optimizer="adamw", base_lr=1.5e-4, weight_decay=0.05, warmup_epochs=40, betas=(0.9, 0.95)),
    coupling="",
    summary="mask 75% of ViT patches, encode the visible ones, decode normalised pixels of the masked ones",
)
class MAE(MaskedViTMethod):
    method_name = "mae"

    def __init__(self, backbone: nn.Module, cfg: MAEConfig, *, image_size: int, grayscale: bool = False):
        super().__init__(backbone, cfg, image_size)
        dim = feature_dim(backbone)
        d_dim, d_depth, d_heads = _decoder_defaults(image_size)
        d_dim = cfg.decoder_dim or d_dim
        d_depth = cfg.decoder_depth or d_depth
        d_heads = cfg.decoder_heads or d_heads
        if d_dim % d_heads or d_dim % 4:
            raise ConfigError(f"method.decoder_dim {d_dim} must be divisible by decoder_heads {d_heads} and by 4")
        from timm.models.vision_transformer import Block

        self.decoder_embed = nn.Linear(dim, d_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d_dim))
        self.decoder_pos: torch.Tensor
        self.register_buffer("decoder_pos", sincos_pos_embed_2d(d_dim, self.grid).unsqueeze(0), persistent=False)
        self.decoder_blocks = nn.Sequential(
            *[Block(d_dim, d_heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(d_depth)]
        )
        self.decoder_norm = nn.LayerNorm(d_dim)
        self.decoder_pred = nn.Linear(d_dim, self.patch * self.patch * 3)
        self._init_decoder()
        self.n_mask, self.n_throw = split_counts(self.num_patches, cfg.mask_ratio, 0.0)
        self.view_recipe = mae_recipe(image_size, cfg.min_scale)

    def _init_decoder(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for name, m in self.named_modules():
            if name.startswith("backbone"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ---- masking: FAMT overrides this
    def sample_split(self, batch: Batch, x: torch.Tensor) -> MaskSplit:
        return sample_split(x.shape[0], self.num_patches, self.n_mask, self.n_throw, device=x.device)

    def forward_split(self, x: torch.Tensor, split: MaskSplit) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, encoder CLS feature [B, D], predictions [B, n_masked, p*p*3]) for a given split."""
        net: Any = self.backbone.net  # type: ignore[union-attr]
        tokens, pos, cls = vit_patch_embed(net, x)
        visible = gather_tokens(tokens + pos, split.visible)  # thrown and masked patches never enter
        latent = vit_run_blocks(net, cls, visible)  # [B, 1 + n_vis, D]
        d = self.decoder_embed(latent)
        dpos = self.decoder_pos.to(d.dtype).expand(x.shape[0], -1, -1)
        dec_vis = d[:, 1:] + gather_tokens(dpos, split.visible)
        dec_mask = self.mask_token.to(d.dtype) + gather_tokens(dpos, split.masked)
        z = torch.cat([d[:, :1], dec_vis, dec_mask], dim=1)  # order is irrelevant: positions are embedded
        z = self.decoder_norm(self.decoder_blocks(z))
        pred = self.decoder_pred(z[:, 1 + split.visible.shape[1] :])
        target = gather_tokens(patchify(x, self.patch), split.masked)
        return mae_loss(pred, target, self.cfg.norm_pix_loss), latent[:, 0], pred

    def forward(self, batch: Batch, progress: Progress) -> StepOutput:
        x = full_view(batch, self.image_size, self.method_name)
        split = self.sample_split(batch, x)
        loss, feat, _ = self.forward_split(x, split)
        return StepOutput(loss, logs=self.step_logs(), embeddings=feat.detach().float())

    def step_logs(self) -> dict[str, float]:
        return {}
