"""Patch masking for masked image modelling (MAE, SimMIM) and FAMT's frequency & attention weights.

Pieces (all batched, CPU or CUDA):

- **Splits.** A :class:`MaskSplit` assigns each of the L patches of every sample one role: *visible*
  (encoder input), *masked* (reconstructed: decoder input and loss) or *thrown* (removed from the encoder,
  the decoder and the loss; FAMT's "throwing"). :func:`sample_split` draws one, uniformly at random (MAE /
  SimMIM) or by sampling without replacement in proportion to per-patch weights (FAMT).
- **Weighted sampling without replacement.** :func:`weighted_permutation` uses the Gumbel-top-k
  (exponential race) trick: with keys ``log w_j + G_j`` (G i.i.d. standard Gumbel), the descending order of
  the keys is distributed exactly like drawing patches one by one, each with probability proportional to
  its weight among those left (Vieira 2014; Kool et al. 2019, arXiv 1903.06059). In particular the first
  patch is j with probability ``w_j / sum(w)``.
- **FAMT weights** (Gui et al., arXiv 2211.15362): :func:`famt_attention_weights`,
  :func:`famt_frequency_weights`, their product :func:`famt_weights`, and
  :func:`vit_attention_and_tokens` which runs an unmasked ViT forward and returns the last block's
  attention and its output patch tokens before the final norm (as the official code).
- **Geometry.** FAMT stores one weight map per image over the FULL source image's patch grid. Each training
  view is a random crop (+ flip) of the source, so :func:`weights_to_view` resamples the stored map into the
  crop box (``selfsup.augment.views.ViewParams.boxes``: top, left, height, width as fractions of the source) and
  applies the flip, with the same ``affine_grid`` convention as the image crop itself
  (:func:`selfsup.augment.views.crop_theta`): the weight of a view patch is the map read at that patch's centre.
- **ViT token helpers** used by the MIM methods: :func:`vit_patch_embed`, :func:`vit_run_blocks`,
  :func:`patchify`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError

VISIBLE, MASKED, THROWN = 0, 1, 2

# ----------------------------------------------------------------------------------------- splits


@dataclass
class MaskSplit:
    """Roles of the L patches of B samples; every row has the same counts.

    visible / masked / thrown: [B, n] int64 patch indices (row-major over the patch grid).
    state: [B, L] int64, VISIBLE (0), MASKED (1) or THROWN (2) per patch.
    """

    visible: torch.Tensor
    masked: torch.Tensor
    thrown: torch.Tensor
    state: torch.Tensor

    @property
    def num_patches(self) -> int:
        return int(self.state.shape[1])


def split_counts(num_patches: int, mask_ratio: float, throw_ratio: float = 0.0) -> tuple[int, int]:
    """(n_masked, n_thrown) for L patches: rounded ratios; at least one patch masked and one visible."""
    if not (0.0 < mask_ratio < 1.0 and 0.0 <= throw_ratio < 1.0 and mask_ratio + throw_ratio < 1.0):
        raise ConfigError(
            f"mask_ratio {mask_ratio} and throw_ratio {throw_ratio} must satisfy 0 < mask_ratio, "
            "0 <= throw_ratio and mask_ratio + throw_ratio < 1"
        )
    n_mask = min(max(1, round(mask_ratio * num_patches)), num_patches - 1)
    n_throw = min(round(throw_ratio * num_patches), num_patches - 1 - n_mask)
    return n_mask, max(0, n_throw)


def gumbel_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """I.i.d. standard Gumbel noise shaped like x (float32), drawn with ``generator`` on its device."""
    dev = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=dev, dtype=torch.float32).to(x.device)
    return -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))


def weighted_permutation(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, L] positive weights -> [B, L] permutations drawn by successive sampling without replacement,
    each draw proportional to the weights of the patches not yet drawn (Gumbel-top-k). Zero weights come
    last."""
    w = weights.float().clamp_min(1e-30)  # zero weights: log = -69, drawn after every positive weight
    keys = torch.log(w) + gumbel_like(w, generator)
    return torch.argsort(keys, dim=1, descending=True)


def random_permutation(
    batch: int, num_patches: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """[B, L] uniformly random permutations (MAE's argsort-of-noise)."""
    dev = generator.device if generator is not None else device
    noise = torch.rand(batch, num_patches, generator=generator, device=dev)
    return torch.argsort(noise, dim=1).to(device)


def split_from_permutation(perm: torch.Tensor, n_mask: int, n_throw: int, mask_high: bool = True) -> MaskSplit:
    """Assign roles along a draw order ``perm`` [B, L] (first drawn = highest weight, in expectation).

    mask_high=True (FAMT paper text, default): first n_mask drawn are masked, the next n_throw thrown,
    the rest visible. mask_high=False: first drawn are visible, then masked, and the last n_throw thrown
    (the low-weight end is discarded).
    """
    b, length = perm.shape
    n_vis = length - n_mask - n_throw
    if n_vis < 1 or n_mask < 1 or n_throw < 0:
        raise ConfigError(f"invalid split of {length} patches: {n_mask} masked, {n_throw} thrown")
    if mask_high:
        masked, thrown, visible = perm[:, :n_mask], perm[:, n_mask : n_mask + n_throw], perm[:, n_mask + n_throw :]
    else:
        visible, masked, thrown = perm[:, :n_vis], perm[:, n_vis : n_vis + n_mask], perm[:, n_vis + n_mask :]
    state = torch.zeros(b, length, dtype=torch.long, device=perm.device)
    state.scatter_(1, masked, MASKED)
    state.scatter_(1, thrown, THROWN)
    return MaskSplit(visible=visible, masked=masked, thrown=thrown, state=state)


def sample_split(
    batch: int,
    num_patches: int,
    n_mask: int,
    n_throw: int = 0,
    *,
    weights: torch.Tensor | None = None,
    mask_high: bool = True,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> MaskSplit:
    """Random split (``weights=None``) or FAMT's weighted split (see :func:`split_from_permutation`)."""
    if weights is None:
        perm = random_permutation(batch, num_patches, device, generator)
    else:
        if tuple(weights.shape) != (batch, num_patches):
            raise ConfigError(f"weights must be [{batch}, {num_patches}], got {tuple(weights.shape)}")
        perm = weighted_permutation(weights, generator).to(device)
    return split_from_permutation(perm, n_mask, n_throw, mask_high)


def expand_cell_split(split: MaskSplit, grid: int, cell: int) -> MaskSplit:
    """A split over a coarse (grid/cell)^2 grid of mask cells (SimMIM's mask patches) -> the same roles on the
    fine grid x grid patch grid (each cell covers cell x cell patches)."""
    b = split.state.shape[0]
    g = grid // cell
    state = split.state.reshape(b, g, 1, g, 1).expand(b, g, cell, g, cell).reshape(b, grid * grid)
    order = torch.argsort(state, dim=1, stable=True)  # visible, then masked, then thrown
    counts = [int((state[0] == r).sum()) for r in (VISIBLE, MASKED, THROWN)]
    vis, msk, thr = order.split(counts, dim=1)
    return MaskSplit(visible=vis, masked=msk, thrown=thr, state=state.contiguous())


# ----------------------------------------------------------------------------------------- FAMT weights


def famt_attention_weights(attn: torch.Tensor) -> torch.Tensor:
    """FAMT attention weight a_j = c_j + g_j of each patch from the last block's attention.

    attn: [B, H, 1 + L, 1 + L] softmax attention (row = query, column = key; index 0 = CLS).
    With A_h that matrix for head h and i, j >= 1 patch indices:
      head weight   w_h = mean_i A_h[i, 0]                (how much the patches read the CLS token)
      CLS term      c_j = mean_h w_h A_h[0, j]
      global term   g_j = mean_h A_h[0, 0] * mean_i A_h[i, j]   (mean over heads of the product)
    Returns [B, L] (float32).
    """
    a = attn.float()
    head_w = a[:, :, 1:, 0].mean(dim=2)  # [B, H]
    c = (head_w.unsqueeze(-1) * a[:, :, 0, 1:]).mean(dim=1)  # [B, L]
    g = (a[:, :, 0, 0].unsqueeze(-1) * a[:, :, 1:, 1:].mean(dim=2)).mean(dim=1)  # [B, L]
    return c + g


def lowpass_kernel(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """FAMT's filter K(k) = 1 - exp(-(k - m0)^2 / (2 d0)), m0 = (N - 1)/2, d0 = (0.15 N / 2)^2, k = 0..N-1.

    Applied to the *unshifted* FFT over the token axis, where index (N-1)/2 is the highest frequency, K is
    0 there and ~1 at k = 0 and k = N-1: a Gaussian low-pass (the paper's "low-pass guidance").
    """
    k = torch.arange(n, dtype=torch.float32, device=device)
    m0 = (n - 1) / 2.0
    d0 = (0.15 * n / 2.0) ** 2
    return 1.0 - torch.exp(-((k - m0) ** 2) / (2.0 * d0))


def famt_frequency_weights(tokens: torch.Tensor) -> torch.Tensor:
    """FAMT frequency weight f_j from the last block's patch tokens T [B, L, D] (no CLS, before the final norm).

    FFT over the token axis; the magnitude is multiplied by :func:`lowpass_kernel` and recombined with the
    original phase; inverse FFT gives T~. f_j = sum_d |T~_dj| / mean_j sum_d |T_dj|. Returns [B, L].
    """
    t = tokens.float()
    spec = torch.fft.fft(t, dim=1)
    k = lowpass_kernel(t.shape[1], t.device).reshape(1, -1, 1)
    filtered = torch.polar(spec.abs() * k, spec.angle())
    t_f = torch.fft.ifft(filtered, dim=1)
    num = t_f.abs().sum(dim=2)  # [B, L]
    den = t.abs().sum(dim=2).mean(dim=1, keepdim=True).clamp_min(1e-12)
    return num / den


def famt_weights(attn: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """w_j = a_j * f_j (FAMT): [B, H, 1+L, 1+L] attention and [B, L, D] tokens -> [B, L]."""
    return famt_attention_weights(attn) * famt_frequency_weights(tokens)


# ----------------------------------------------------------------------------------------- ViT helpers


def require_vit(backbone: nn.Module, method: str, image_size: int) -> tuple[int, int]:
    """Check that ``backbone`` is a ViT and return its (patch size, patches per side) at ``image_size``."""
    from selfsup.models.backbones import ViTEncoder

    if not isinstance(backbone, ViTEncoder):
        raise ConfigError(
            f"method '{method}' needs a ViT backbone (masked image modelling works on patch tokens), got "
            f"{type(backbone).__name__}; use --backbone vit-tiny or vit-small (patch 4 for 32 px, 16 for 224 px)"
        )
    return backbone.patch_size, image_size // backbone.patch_size


def vit_patch_embed(net: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """timm ViT: images [B, 3, H, W] -> (patch embeddings [B, L, D] WITHOUT position, patch position
    embeddings [1, L, D], CLS token + its position [1, 1, D])."""
    from timm.layers import resample_abs_pos_embed

    t = net.patch_embed(x)
    if t.dim() == 4:  # dynamic_img_size: NHWC
        b, h, w, d = t.shape
        t = t.reshape(b, h * w, d)
    else:
        h = w = int(math.isqrt(t.shape[1]))
    pos = net.pos_embed
    n_prefix = 0 if getattr(net, "no_embed_class", False) else net.num_prefix_tokens
    if tuple(net.patch_embed.grid_size) != (h, w):
        pos = resample_abs_pos_embed(pos, new_size=(h, w), old_size=net.patch_embed.grid_size,
                                     num_prefix_tokens=n_prefix)
    patch_pos = pos[:, n_prefix:]
    cls = net.cls_token + (pos[:, :1] if n_prefix else 0.0)
    return t, patch_pos, cls


def vit_run_blocks(net: Any, cls: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """[1 or B, 1, D] CLS and [B, n, D] position-embedded tokens -> [B, 1 + n, D] after blocks + final norm."""
    x = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    x = net.norm_pre(x)
    x = net.blocks(x)
    return net.norm(x)


def _block_attention(block: Any, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention [B, H, N, N] of a timm ``Block`` on input x (computed explicitly)."""
    attn_mod = block.attn
    y = block.norm1(x)
    b, n, _ = y.shape
    qkv = attn_mod.qkv(y).reshape(b, n, 3, attn_mod.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, _v = qkv.unbind(0)
    q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
    scores = (q.float() * attn_mod.scale) @ k.float().transpose(-2, -1)
    return scores.softmax(dim=-1)


@torch.no_grad()
def vit_attention_and_tokens(net: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked forward of a timm ViT: (last block's attention [B, H, 1+L, 1+L], the last block's output patch
    tokens [B, L, D] BEFORE the final norm). Run it in eval mode (FAMT step 1).

    Why pre-norm: the official FAMT code (jsrdcht/famt ``models_mae.py`` ``forward_encoder_test``) returns the
    last block's output with its attention and never applies ``self.norm``; the frequency weight's FFT runs
    on those tokens. The final LayerNorm would rescale every token to unit variance and change the weights.
    """
    t, pos, cls = vit_patch_embed(net, x)
    h = torch.cat([cls.expand(t.shape[0], -1, -1), t + pos], dim=1)
    h = net.norm_pre(h)
    blocks = list(net.blocks)
    for blk in blocks[:-1]:
        h = blk(h)
    attn = _block_attention(blocks[-1], h)
    h = blocks[-1](h)
    return attn, h[:, 1:]


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, L, p*p*C] patches, row-major over the grid, each patch flattened (p, p, C)."""
    b, c, h, w = x.shape
    gh, gw = h // p, w // p
    x = x.reshape(b, c, gh, p, gw, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, gh * gw, p * p * c)


def unpatchify(patches: torch.Tensor, p: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid."""
    b, length, _ = patches.shape
    g = int(math.isqrt(length))
    x = patches.reshape(b, g, g, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, channels, g * p, g * p)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x [B, L, D], ids [B, n] -> [B, n, D]."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


# ----------------------------------------------------------------------------------------- geometry


def weights_to_view(
    maps: torch.Tensor, boxes: torch.Tensor | None, flip: torch.Tensor | None, out_grid: int,
    sizes: torch.Tensor | None = None, crop_fraction: float = 1.0,
) -> torch.Tensor:
    """Per-image weight maps over the source patch grid -> weights over each view's patch grid.

    maps: [B, gh, gw] (or [B, gh*gw] for a square grid), non-negative, computed on each image's evaluation
    view (:func:`selfsup.augment.views.eval_transform`: the centre square of side ``crop_fraction * min(h, w)``
    of the native image).
    boxes: [B, 4] crop boxes (top, left, height, width) as fractions of the source image (None = whole image).
    flip: [B] bool, horizontal flip applied after the crop (None = no flip).
    sizes: [B, 2] (height, width) of each native-aspect source image (``ViewParams.sizes``); None = square
    sources whose evaluation view is the whole image (``crop_fraction`` 1.0), the map covering the full source.
    Returns [B, out_grid * out_grid]: the map read (bilinearly, edge-replicated) at the centre of every view
    patch, mapped back into the source through the crop box and the flip, on the native grid: each box is
    moved into the frame of the map (the eval view's square inside the native image), so a view patch
    outside that square reads the map's nearest edge.
    """
    from selfsup.augment.views import crop_theta

    if maps.dim() == 2:
        g = int(math.isqrt(maps.shape[1]))
        maps = maps.reshape(maps.shape[0], g, g)
    b = maps.shape[0]
    dev = maps.device
    if boxes is None:
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=dev).expand(b, 4)
    if flip is None:
        flip = torch.zeros(b, dtype=torch.bool, device=dev)
    boxes = boxes.to(dev, torch.float32)
    if sizes is not None or crop_fraction != 1.0:
        if sizes is None:  # square sources
            hw = torch.ones(b, 2, dtype=torch.float64, device=dev)
        else:
            hw = sizes.to(dev, torch.float64).reshape(b, 2)
        side = hw.min(dim=1).values * crop_fraction  # the eval view's square, in source pixels
        fh, fw = side / hw[:, 0], side / hw[:, 1]  # its height / width as fractions of the source
        top0, left0 = (1.0 - fh) / 2, (1.0 - fw) / 2
        bx = boxes.double()
        boxes = torch.stack([(bx[:, 0] - top0) / fh, (bx[:, 1] - left0) / fw, bx[:, 2] / fh, bx[:, 3] / fw],
                            -1).float()
    theta = crop_theta(boxes, flip.to(dev))
    grid = F.affine_grid(theta, [b, 1, out_grid, out_grid], align_corners=False)
    out = F.grid_sample(maps.unsqueeze(1).float(), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.reshape(b, out_grid * out_grid)


def pool_to_cells(weights: torch.Tensor, grid: int, cell: int) -> torch.Tensor:
    """[B, grid*grid] patch weights -> [B, (grid/cell)^2] mask-cell weights (sum over each cell)."""
    b = weights.shape[0]
    w = weights.reshape(b, 1, grid, grid)
    return F.avg_pool2d(w, cell).reshape(b, -1) * (cell * cell)


def sincos_pos_embed_2d(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding [grid*grid, dim] (MAE, He et al. 2021, as in MoCo v3)."""
    if dim % 4:
        raise ConfigError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                          indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    out = [torch.sin(y.reshape(-1, 1) * omega), torch.cos(y.reshape(-1, 1) * omega),
           torch.sin(x.reshape(-1, 1) * omega), torch.cos(x.reshape(-1, 1) * omega)]
    return torch.cat(out, dim=1).float()
