"""Colour maths shared by the view ops and the fused CPU kernel: the grayscale weights, and the ``linear``
colour mode of :func:`selfsup.augment.views.make_views`, which composes a sample's colour jitter and grayscale
into one affine map p -> A p + b (:func:`colour_affine`, with the hue change as a rotation of the YIQ chroma
plane, :func:`hue_rotation`) and applies it with one batched matmul (:func:`apply_colour_affine`). A leaf of
:mod:`selfsup.augment`: the torch ops (:mod:`selfsup.augment.ops`) and the kernel
(:mod:`selfsup.augment.kernel`) import it, it imports neither."""

from __future__ import annotations

import math
from functools import lru_cache

import torch

#: ITU-R 601-2 luma weights, as in torchvision's ``rgb_to_grayscale`` (and PIL's "L" conversion).
GRAY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.587, 0.114)


# Rows: luma (torchvision's grayscale weights), then the NTSC YIQ chroma axes I and Q. Both chroma rows sum
# to 0, so gray pixels (r = g = b) have no chroma and a rotation of (I, Q) leaves them, and the luma, unchanged.
_YIQ = (GRAY_WEIGHTS, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


@lru_cache(maxsize=8)
def _yiq(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(_YIQ, dtype=torch.float64)
    return m.to(device, dtype), torch.linalg.inv(m).to(device, dtype)


def hue_rotation(hue_factor: torch.Tensor) -> torch.Tensor:
    """[B] hue shifts (fractions of a turn) -> [B, 3, 3] RGB matrices that rotate the chroma (the YIQ I, Q
    plane) by 2 pi h about the luma axis, in the direction of torchvision's HSV hue shift (red -> green ->
    blue for h > 0): the linear kind of hue change of CSS's ``hue-rotate``. Unlike the HSV shift it keeps the
    luma (not the max channel) fixed."""
    t = (2.0 * math.pi) * hue_factor.to(torch.float32)
    c, s = torch.cos(t), torch.sin(t)
    one, zero = torch.ones_like(t), torch.zeros_like(t)
    # clockwise in the (I, Q) plane: a positive shift turns red towards green, then blue, as torchvision's
    # HSV shift does (red, blue and green sit at about 20, 136 and 242 degrees counter-clockwise in YIQ)
    rot = torch.stack([one, zero, zero, zero, c, s, zero, -s, c], -1).reshape(-1, 3, 3)
    m, minv = _yiq(torch.float32, t.device)
    return minv @ rot @ m


def colour_affine(
    mean_rgb: torch.Tensor, selected: torch.Tensor, order: torch.Tensor, factors: torch.Tensor,
    gray: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-sample affine colour map p -> A p + b of the ``linear`` colour mode: colour jitter (brightness,
    contrast, saturation, hue) in each sample's own op order, then grayscale, composed without clamping.

    mean_rgb: [B, 3] mean pixel of each (cropped) image, for contrast's mean gray; selected / gray: [B] bool,
    the samples to jitter / to turn gray; order: [B, 4], ``order[i, pos]`` = the op sample i gets at
    position pos (0 brightness, 1 contrast, 2 saturation, 3 hue); factors: [4, B] (brightness, contrast and
    saturation factors, hue shift). Returns A [B, 3, 3] and b [B, 3] (float32, on mean_rgb's device).

    Each op is affine in the pixel: brightness f p; contrast f p + (1 - f) m with m the image's mean gray
    (w . (A mean + b) for the map composed so far); saturation f p + (1 - f) w.p (a blend with the gray);
    hue :func:`hue_rotation`; grayscale w.p on every channel.
    """
    dev = mean_rgb.device
    n = mean_rgb.shape[0]
    mean_rgb = mean_rgb.to(torch.float32)
    f = factors.to(dev, torch.float32)
    order, selected, gray = order.to(dev), selected.to(dev), gray.to(dev)
    w = torch.tensor(GRAY_WEIGHTS, dtype=torch.float32, device=dev)
    eye = torch.eye(3, dtype=torch.float32, device=dev)
    to_gray = torch.ones(3, 1, dtype=torch.float32, device=dev) * w  # [3, 3], every row = w
    sat = f[2, :, None, None] * eye + (1.0 - f[2, :, None, None]) * to_gray
    hue = hue_rotation(f[3])
    a = eye.expand(n, 3, 3).clone()
    b = torch.zeros(n, 3, dtype=torch.float32, device=dev)
    for pos in range(4):
        op = order[:, pos, None, None]
        scale = torch.where(op[:, 0, 0] == 0, f[0], f[1])[:, None, None] * eye  # brightness / contrast
        m = torch.where(op == 2, sat, torch.where(op == 3, hue, scale))
        # contrast's mean gray of the image as it is now (before this op), computed from the map so far
        mean_gray = (a @ mean_rgb[:, :, None] + b[:, :, None]).squeeze(-1) @ w  # [B]
        offset = torch.where(order[:, pos] == 1, (1.0 - f[1]) * mean_gray, 0.0)
        a = m @ a
        b = (m @ b[:, :, None]).squeeze(-1) + offset[:, None]
    a = torch.where(selected[:, None, None], a, eye)
    b = torch.where(selected[:, None], b, 0.0)
    a = torch.where(gray[:, None, None], to_gray @ a, a)
    b = torch.where(gray[:, None], (to_gray @ b[:, :, None]).squeeze(-1), b)
    return a, b


def apply_colour_affine(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """clamp(A x + b, 0, 1) per sample: x [B, 3, H, W] float in [0, 1], A [B, 3, 3], b [B, 3]. One batched
    matmul over the pixels (in x's memory layout), then one clamp."""
    n, c, h, wd = x.shape
    a, b = a.to(x.dtype), b.to(x.dtype)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        pix = x.permute(0, 2, 3, 1).reshape(n, h * wd, c)  # a view: pixels x channels
        out = torch.baddbmm(b[:, None, :], pix, a.transpose(1, 2))
        return out.clamp_(0.0, 1.0).reshape(n, h, wd, c).permute(0, 3, 1, 2)
    out = torch.baddbmm(b[:, :, None], a, x.reshape(n, c, h * wd))
    return out.clamp_(0.0, 1.0).reshape(n, c, h, wd)

__all__ = ["GRAY_WEIGHTS", "apply_colour_affine", "colour_affine", "hue_rotation"]
