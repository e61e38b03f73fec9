"""Backdoor triggers: a blended square patch and CTRL's frequency-domain trigger.

Patch trigger (SSL-Backdoor, Saha et al. CVPR 2022, arXiv 2105.10123; Noisy Alignment, Chen, Gui et al.
ICCV 2025, arXiv 2508.14015). The Noisy-Alignment code pastes a 50-px patch on 224-px images and keeps
``alpha = 0.2`` of the *underlying image* under the patch (its ``add_watermark`` multiplies the base image's
alpha by 0.2 there and composites it over the patch), i.e. ``out = alpha * image + (1 - alpha) * patch``.
We keep that convention: ``alpha`` is the weight of the image under the patch (0 = opaque patch).

Scaling for small images: the side is scaled with the image, ``round(S * 50 / 224)`` (at least 3 px), so the
patch covers the same ~5% of the image as in the paper: 7 px on 32-px CIFAR, 14 px on 64 px.

CTRL (Li et al. ICCV 2023, arXiv 2210.07346): RGB -> YCbCr (full-range BT.601), orthonormal 2-D DCT-II on
non-overlapping ``window x window`` blocks of the two chrominance channels, add ``magnitude`` (in 0..255
units) at high-frequency positions of every block, inverse DCT, back to RGB. Defaults as in the public CTRL
code for CIFAR-10: window 32, positions (15, 15) and (31, 31), magnitude 50 on poisons and 100 at test time.
Positions are scaled with the window for other sizes (``window - 1`` and ``window // 2 - 1``).
"""

from __future__ import annotations

import numpy as np
from scipy.fft import dctn, idctn

from selfsup.errors import ConfigError

PAPER_PATCH = 50  # px, Noisy-Alignment code
PAPER_IMAGE = 224  # px
PAPER_ALPHA = 0.2  # weight of the underlying image under the patch


def scaled_trigger_size(image_size: int, ref_patch: int = PAPER_PATCH, ref_image: int = PAPER_IMAGE) -> int:
    """Patch side for ``image_size`` px images, keeping the paper's patch/image ratio (50/224)."""
    return max(3, int(round(image_size * ref_patch / ref_image)))


def make_patch_trigger(size: int, seed: int = 0, cells: int = 4) -> np.ndarray:
    """A deterministic high-contrast patch: a ``cells x cells`` grid of random saturated colours, uint8 [s, s, 3]."""
    if size < 1:
        raise ConfigError(f"trigger size must be a positive integer, got {size}")
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 2, size=(cells, cells, 3)).astype(np.uint8) * 255
    # guarantee at least one bright and one dark cell so the patch is never flat
    grid[0, 0] = 255
    grid[-1, -1] = 0
    idx = (np.arange(size) * cells) // size
    return np.ascontiguousarray(grid[idx][:, idx])


def paste_patch(image: np.ndarray, patch: np.ndarray, top: int, left: int, alpha: float = PAPER_ALPHA) -> np.ndarray:
    """Return a copy of ``image`` (uint8 [H, W, 3]) with ``patch`` blended in at (top, left).

    ``out = alpha * image + (1 - alpha) * patch`` inside the patch box; the rest is unchanged.
    """
    if not 0.0 <= alpha < 1.0:
        raise ConfigError(f"trigger alpha must be in [0, 1), got {alpha}")
    ph, pw = patch.shape[:2]
    h, w = image.shape[:2]
    if top < 0 or left < 0 or top + ph > h or left + pw > w:
        raise ConfigError(f"trigger of {ph}x{pw} px at ({top}, {left}) does not fit a {h}x{w} image")
    out = image.copy()
    region = out[top : top + ph, left : left + pw].astype(np.float32)
    out[top : top + ph, left : left + pw] = np.clip(
        np.rint(alpha * region + (1.0 - alpha) * patch.astype(np.float32)), 0, 255
    ).astype(np.uint8)
    return out


def apply_patch_trigger(
    images: np.ndarray, patch: np.ndarray, rng: np.random.Generator, *, location: str = "random",
    alpha: float = PAPER_ALPHA,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the patch on every image of uint8 [N, H, W, 3]; returns (images, boxes [N, 4] top, left, h, w).

    ``location``: ``random`` (uniform, SSL-Backdoor's test-time protocol) or ``center``.
    """
    n, h, w = images.shape[:3]
    ph, pw = patch.shape[:2]
    if ph > h or pw > w:
        raise ConfigError(f"trigger of {ph}x{pw} px is larger than the {h}x{w} images; use a smaller --trigger-size")
    out = np.empty_like(images)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        if location == "random":
            top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        elif location == "center":
            top, left = (h - ph) // 2, (w - pw) // 2
        else:
            raise ConfigError(f"trigger location must be 'random' or 'center', got {location!r}")
        out[i] = paste_patch(images[i], patch, top, left, alpha)
        boxes[i] = (top, left, ph, pw)
    return out, boxes


# ----------------------------------------------------------------------------------------------- CTRL


def rgb_to_ycbcr(x: np.ndarray) -> np.ndarray:
    """Full-range ITU-R BT.601 (JPEG) RGB -> YCbCr on float arrays [..., 3] in 0..255."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], -1)


def ycbcr_to_rgb(x: np.ndarray) -> np.ndarray:
    y, cb, cr = x[..., 0], x[..., 1] - 128.0, x[..., 2] - 128.0
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.stack([r, g, b], -1)


def ctrl_positions(window: int) -> tuple[tuple[int, int], ...]:
    """CTRL's high-frequency positions, (15, 15) and (31, 31) for a 32-px window."""
    return ((window // 2 - 1, window // 2 - 1), (window - 1, window - 1))


def apply_ctrl_trigger(
    images: np.ndarray, *, magnitude: float = 50.0, window: int = 32,
    positions: tuple[tuple[int, int], ...] | None = None, channels: tuple[int, ...] = (1, 2),
) -> np.ndarray:
    """Add CTRL's frequency trigger to uint8 [N, H, W, 3] images (returns uint8).

    Blocks of ``window`` px (the image side when smaller); ``channels`` index YCbCr (1 = Cb, 2 = Cr).
    """
    n, h, w = images.shape[:3]
    win = min(window, h, w)
    if h % win or w % win:
        raise ConfigError(f"CTRL window {win} must divide the image size {h}x{w}; pass a window that divides it")
    pos = positions if positions is not None else ctrl_positions(win)
    ycc = rgb_to_ycbcr(images.astype(np.float64))
    for c in channels:
        ch = ycc[..., c].reshape(n, h // win, win, w // win, win)
        coef = dctn(ch, axes=(2, 4), norm="ortho")
        for u, v in pos:
            coef[:, :, u, :, v] += magnitude
        ycc[..., c] = idctn(coef, axes=(2, 4), norm="ortho").reshape(n, h, w)
    return np.clip(np.rint(ycbcr_to_rgb(ycc)), 0, 255).astype(np.uint8)


__all__ = [
    "PAPER_ALPHA",
    "PAPER_IMAGE",
    "PAPER_PATCH",
    "apply_ctrl_trigger",
    "apply_patch_trigger",
    "ctrl_positions",
    "make_patch_trigger",
    "paste_patch",
    "rgb_to_ycbcr",
    "scaled_trigger_size",
    "ycbcr_to_rgb",
]
