"""Backdoor triggers: a pasted square patch (SSL-Backdoor, Noisy Alignment) and CTRL's frequency trigger.

**Patch placement** (both official codes use the same rule, UMBCvision/SSL-Backdoor ``generate_poison.py``
``add_watermark(position='random')`` and jsrdcht/Noisy-Alignment ``utils.py`` ``add_watermark``): for an image
of width W and a patch of width w, the patch's LEFT edge is drawn uniformly from the integers
``[int(W * lo), max(int(W * lo), int(W * hi - w))]`` (both ends included, Python's ``random.randint``), and
the same along the height. :func:`official_location` is that rule. The ranges:

============================  =====================  ============================
attack                        training poisons       test-time trigger
============================  =====================  ============================
SSL-Backdoor (Saha et al.)    [0.25, 0.75], alpha 0  [0.10, 0.90], alpha 0
Noisy Alignment (Chen, Gui)   [0.45, 0.55] of the    [0.45, 0.55], alpha 0.2 (the
                              shadow half, alpha 0.2 README: ``add_watermark`` defaults)
============================  =====================  ============================

(SSL-Backdoor: ``train_alpha``/``val_alpha`` 0, ``alpha_composite`` true and the location ranges of every
config in ``poison-generation/cfg``; the code's other branch, ``alpha_composite`` false, centres the range on
the patch instead and is not used by those configs.) For a patch wider than ``(hi - lo) W`` the range is one point, ``int(W * lo)``:
with NA's 50 px patch on a 224 px image the left edge is always 100 px, so the patch sits slightly right of
the centre, as in the official code.

**Blending** (:func:`paste_patch`): both official codes multiply the base image's alpha by ``alpha`` inside the
patch box and alpha-composite the base OVER the opaque patch: ``out = alpha * image + (1 - alpha) * patch``.
``alpha`` is the weight of the image under the patch; 0 is an opaque paste (SSL-Backdoor).

**Patch size.** Both codes paste a 50 px wide patch (``watermark_width``; SSL-Backdoor on full-resolution
ImageNet training images and on 224 px test crops, NA on the concatenated canvas). Deviation: the side is
scaled with the image, ``round(S * 50 / 224)`` (at least 3 px), so the patch covers the same share of a
small image as of a 224 px one (7 px on 32 px CIFAR). The patch is a fixed random colour grid
(:func:`make_patch_trigger`) because the papers' HTBA trigger images are not shipped with selfsup.

**CTRL** (Li et al., ICCV 2023, arXiv 2210.07346; meet-cjli/CTRL ``utils/frequency.py``
``PoisonFre.Poison_Frequency_Diff``): pixels scaled to 0..255, RGB -> YUV with kornia's BT.470 matrices
(:func:`rgb_to_yuv`, :func:`yuv_to_rgb`; the pair is not an exact inverse, as in kornia), orthonormal 2-D
DCT-II on non-overlapping ``window x window`` blocks, ``magnitude`` added at positions (15, 15) and
(31, 31) of every block of the U and V channels (``--channel 1 2 --trigger_position 15 31``), inverse DCT,
back to RGB, clipped. The official command uses ``--magnitude 100`` for the training poisons AND the
triggered test images (``loaders/diffaugment.py`` poisons both with ``self.magnitude``); so does selfsup.
Positions are scaled with the window for other sizes (``window // 2 - 1`` and ``window - 1``).
Deviation: the official code keeps the poisoned images as float tensors; selfsup writes them as 8-bit
PNGs, so each pixel is rounded (at most 0.5 levels; the trigger's amplitude at magnitude 100 is several
levels per pixel). The trigger is written at the images' own resolution: a data cache that resizes the
poisons (a cache size other than the image side) resamples the trigger before training, and a downscale
removes its highest components (see :mod:`selfsup.security.mechanism`).
"""

from __future__ import annotations

import numpy as np
from scipy.fft import dctn, idctn

from selfsup.errors import ConfigError

PAPER_PATCH = 50  # px, watermark_width of both official codes
PAPER_IMAGE = 224  # px
NA_ALPHA = 0.2  # Noisy Alignment: weight of the image under the patch (utils.py add_watermark default)
SSLB_ALPHA = 0.0  # SSL-Backdoor: train_alpha = val_alpha = 0 (opaque)
PAPER_ALPHA = NA_ALPHA
CTRL_MAGNITUDE = 100.0  # meet-cjli/CTRL README command, poisons and test images alike
# (lo, hi) ranges of the patch's top-left corner, fractions of the image side (see the module docstring)
NA_RANGE = (0.45, 0.55)
SSLB_TRAIN_RANGE = (0.25, 0.75)
SSLB_TEST_RANGE = (0.10, 0.90)


def scaled_trigger_size(image_size: int, ref_patch: int = PAPER_PATCH, ref_image: int = PAPER_IMAGE) -> int:
    """Patch side for ``image_size`` px images, keeping the papers' patch/image ratio (50/224)."""
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


def location_range(side: int, patch: int, lo: float, hi: float) -> tuple[int, int]:
    """Inclusive integer range of the patch's first pixel along one side (official ``add_watermark``)."""
    first = int(side * lo)
    last = int(side * hi - patch)  # int() truncates toward zero, as Python's int() in the official code
    return first, max(first, last)


def official_location(
    height: int, width: int, ph: int, pw: int, lo: float, hi: float, rng: np.random.Generator
) -> tuple[int, int]:
    """(top, left) of a ``ph x pw`` patch on a ``height x width`` image by the official rule."""
    if ph > height or pw > width:
        raise ConfigError(f"trigger of {ph}x{pw} px does not fit a {height}x{width} image; use a smaller --trigger-size")
    l0, l1 = location_range(width, pw, lo, hi)
    t0, t1 = location_range(height, ph, lo, hi)
    # the official rule can push the patch past the far edge when lo * side + patch > side: keep it inside
    left = min(int(rng.integers(l0, l1 + 1)), width - pw)
    top = min(int(rng.integers(t0, t1 + 1)), height - ph)
    return top, left


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
    images: np.ndarray, patch: np.ndarray, rng: np.random.Generator, *, where: tuple[float, float] = SSLB_TEST_RANGE,
    alpha: float = SSLB_ALPHA,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the patch on every image of uint8 [N, H, W, 3] at :func:`official_location` with range ``where``.

    Returns (images, boxes [N, 4] top, left, h, w). The test-time protocols: SSL-Backdoor
    ``where=SSLB_TEST_RANGE, alpha=0``; Noisy Alignment ``where=NA_RANGE, alpha=0.2``.
    """
    n, h, w = images.shape[:3]
    ph, pw = patch.shape[:2]
    out = np.empty_like(images)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        top, left = official_location(h, w, ph, pw, where[0], where[1], rng)
        out[i] = paste_patch(images[i], patch, top, left, alpha)
        boxes[i] = (top, left, ph, pw)
    return out, boxes


# ----------------------------------------------------------------------------------------------- CTRL

# kornia.color.rgb_to_yuv / yuv_to_rgb (BT.470 M/PAL), the conversion the CTRL code uses
_RGB2YUV = np.array([[0.299, 0.587, 0.114], [-0.147, -0.289, 0.436], [0.615, -0.515, -0.100]])
_YUV2RGB = np.array([[1.0, 0.0, 1.14], [1.0, -0.396, -0.581], [1.0, 2.029, 0.0]])


def rgb_to_yuv(x: np.ndarray) -> np.ndarray:
    """kornia's RGB -> YUV on float arrays [..., 3] (any scale; CTRL uses 0..255)."""
    return np.asarray(x, dtype=np.float64) @ _RGB2YUV.T


def yuv_to_rgb(x: np.ndarray) -> np.ndarray:
    """kornia's YUV -> RGB (not the exact inverse of :func:`rgb_to_yuv`, as in kornia)."""
    return np.asarray(x, dtype=np.float64) @ _YUV2RGB.T


def ctrl_positions(window: int) -> tuple[tuple[int, int], ...]:
    """CTRL's high-frequency positions, (15, 15) and (31, 31) for a 32-px window."""
    return ((window // 2 - 1, window // 2 - 1), (window - 1, window - 1))


def apply_ctrl_trigger(
    images: np.ndarray, *, magnitude: float = CTRL_MAGNITUDE, window: int = 32,
    positions: tuple[tuple[int, int], ...] | None = None, channels: tuple[int, ...] = (1, 2),
) -> np.ndarray:
    """Add CTRL's frequency trigger to uint8 [N, H, W, 3] images (returns uint8).

    Blocks of ``window`` px (the shorter image side when smaller); ``channels`` index YUV (1 = U, 2 = V).
    """
    n, h, w = images.shape[:3]
    win = min(window, h, w)
    if h % win or w % win:
        raise ConfigError(f"CTRL window {win} must divide the image size {h}x{w}; pass a window that divides it")
    pos = positions if positions is not None else ctrl_positions(win)
    yuv = rgb_to_yuv(images.astype(np.float64))
    for c in channels:
        ch = yuv[..., c].reshape(n, h // win, win, w // win, win)
        coef = dctn(ch, axes=(2, 4), norm="ortho")
        for u, v in pos:
            coef[:, :, u, :, v] += magnitude
        yuv[..., c] = idctn(coef, axes=(2, 4), norm="ortho").reshape(n, h, w)
    return np.clip(np.rint(yuv_to_rgb(yuv)), 0, 255).astype(np.uint8)


__all__ = [
    "CTRL_MAGNITUDE",
    "NA_ALPHA",
    "NA_RANGE",
    "PAPER_ALPHA",
    "PAPER_IMAGE",
    "PAPER_PATCH",
    "SSLB_ALPHA",
    "SSLB_TEST_RANGE",
    "SSLB_TRAIN_RANGE",
    "apply_ctrl_trigger",
    "apply_patch_trigger",
    "ctrl_positions",
    "location_range",
    "make_patch_trigger",
    "official_location",
    "paste_patch",
    "rgb_to_yuv",
    "scaled_trigger_size",
    "yuv_to_rgb",
]
