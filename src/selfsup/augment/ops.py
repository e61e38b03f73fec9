"""Batched, per-sample image ops on tensors (CPU or CUDA): crop + resize + flip in one resampling, torchvision's
colour jitter and grayscale, Gaussian blur, solarize, normalisation, and the deterministic evaluation view.

Every sample of a batch gets its own parameters: each op takes per-sample parameter tensors of shape [B] (a
Python scalar applies to all) and matches its torchvision counterpart for fixed parameters (see
``tests/test_views.py`` for the tolerances). All colour ops work on float images in [0, 1] and clamp like
torchvision. :func:`selfsup.augment.views.make_views` draws the parameters and runs these ops (or, on a CPU,
the fused kernel of :mod:`selfsup.augment.kernel`, which computes the same).

Differences from torchvision's ``RandomResizedCrop`` (deliberate):
- no antialiasing when a crop is shrunk (as torchvision's tensor path with ``antialias=False``). Up to 96 px
  the default cache size equals the view size, so crops are only ever enlarged and nothing aliases; above
  96 px the default stores the shorter side at 8/7 of the view size (torchvision's 256 for 224), so crops
  larger than (7/8)^2 = 77% of the shorter side's square are shrunk by at most 8/7, a mild aliasing that a
  much larger cache would make worse. :func:`eval_transform` (one deterministic resize) does antialias.
- pixels at the crop border are interpolated with their true neighbours outside the crop (torchvision
  replicates the crop's edge), so the outermost half-pixel ring differs slightly.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F

from selfsup.augment.colour import GRAY_WEIGHTS
from selfsup.augment.recipes import IMAGENET_MEAN, IMAGENET_STD
from selfsup.errors import ConfigError, DataError


def _per_sample(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """[B] (or scalar) parameter -> [B, 1, 1, 1] on x's device and dtype."""
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return t.reshape(-1, 1, 1, 1) if t.dim() else t


def normalize(
    x01: torch.Tensor, mean: tuple[float, ...] | torch.Tensor, std: tuple[float, ...] | torch.Tensor,
    *, inplace: bool = False,
) -> torch.Tensor:
    """(x - mean) / std per channel; x01 is [B, C, H, W] in [0, 1] (overwritten when ``inplace``)."""
    m = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float64).reshape(1, -1, 1, 1)
    scale, shift = (1.0 / s).to(x01.device, x01.dtype), (-m / s).to(x01.device, x01.dtype)
    # x / std - mean / std: cheaper than (x - mean) / std on CPU; in place it also skips an allocation per
    # view batch and the slow out-of-place broadcast kernel (benchmarks/RESULTS.md, notes moved from code)
    return (x01.mul_(scale) if inplace else x01 * scale).add_(shift)


def crop_theta(boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """[B, 2, 3] ``affine_grid`` matrices mapping the output square onto the crop boxes (flip = x sign)."""
    top, left, h, w = boxes.unbind(-1)
    sx = torch.where(flip, -w, w)
    zero = torch.zeros_like(w)
    row0 = torch.stack([sx, zero, 2 * left + w - 1], -1)
    row1 = torch.stack([zero, h, 2 * top + h - 1], -1)
    return torch.stack([row0, row1], -2)


def resized_crop(
    x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor | None, size: int | tuple[int, int]
) -> torch.Tensor:
    """Per-sample crop + resize (+ horizontal flip) of [B, C, H, W] float images in one bilinear resampling.

    boxes: [B, 4] (top, left, height, width) as fractions of the source sides; flip: [B] bool or None.
    Bilinear, align_corners=False, no antialiasing (like torchvision's ``resized_crop(antialias=False)``
    except at the crop border, see the module docstring); the image edge is replicated.
    """
    b, c = x.shape[:2]
    oh, ow = (size, size) if isinstance(size, int) else size
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    flip = torch.zeros(b, dtype=torch.bool, device=x.device) if flip is None else flip.to(x.device)
    # The crop is axis-aligned, so build the affine grid (what F.affine_grid(crop_theta(...)) gives) from
    # two per-sample 1-D ramps: several times cheaper than affine_grid's batched matmul on CPU.
    top, left, h, w = boxes.unbind(-1)
    xs = (torch.arange(ow, device=x.device, dtype=torch.float32) * 2 + 1) / ow - 1  # pixel centres
    ys = (torch.arange(oh, device=x.device, dtype=torch.float32) * 2 + 1) / oh - 1
    gx = torch.where(flip, -w, w)[:, None] * xs + (2 * left + w - 1)[:, None]  # [B, ow]
    gy = h[:, None] * ys + (2 * top + h - 1)[:, None]  # [B, oh]
    grid = torch.stack([gx[:, None, :].expand(b, oh, ow), gy[:, :, None].expand(b, oh, ow)], -1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] luma (torchvision's weights)."""
    r, g, b = x.unbind(-3)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(-3)


def to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 3, H, W] gray replicated over the channels (RandomGrayscale)."""
    return rgb_to_grayscale(x).expand_as(x).contiguous()


# The colour ops come in two forms: ``_op_`` works in place on its input (the hot path: make_views applies
# them to slices of its own buffer, saving an allocation and a pass per op) and the public ``adjust_*``
# wrappers, which leave their input untouched. Both compute f * x + (1 - f) * other in torchvision's order.


def _brightness_(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    return x.mul_(_per_sample(factor, x)).clamp_(0.0, 1.0)


def _blend_(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    f = _per_sample(factor, x)
    if other.shape[-2:] == x.shape[-2:]:
        # an image (saturation's gray): one lerp written over x (other + f * (x - other), equal up to
        # rounding) instead of three passes plus a temporary: faster on CPUs (benchmarks/RESULTS.md, notes
        # moved from code)
        return torch.lerp(other.expand_as(x), x, f, out=x).clamp_(0.0, 1.0)
    # a per-image constant (contrast's mean): lerp's broadcast path is slower than these passes
    return x.mul_(f).add_((1.0 - f) * other).clamp_(0.0, 1.0)


def _contrast_(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    return _blend_(x, rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)


def _saturation_(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    return _blend_(x, rgb_to_grayscale(x), factor)


def _hue_(x: torch.Tensor, hue_factor: torch.Tensor | float) -> torch.Tensor:
    # Elementwise max/min instead of reductions over the channel dim, and floor instead of remainder:
    # both are several times faster on CPU.
    r, g, b = x.unbind(-3)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    chroma = maxc - minc
    inv = chroma.clamp(min=1e-12).reciprocal_()  # chroma 0: all channels equal, the hue is irrelevant
    # select the sector by masks times values (torch.where is several times slower on CPU)
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~(is_r | is_g)
    h6 = is_r * ((g - b) * inv) + is_g * ((b - r) * inv + 2.0) + is_b * ((r - g) * inv + 4.0)
    h6 = h6.unsqueeze(-3) + 6.0 * _per_sample(hue_factor, x)  # [B, 1, H, W]: hue in sixths, any range
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    k = h6 + n
    k -= 6.0 * torch.floor(k * (1.0 / 6.0))  # mod 6
    w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    # every input of the result is computed: write it over x. No clamp needed: with 0 <= w <= 1 the result
    # lies in [max - chroma, max] = [min, max] of the input, and float rounding is monotone, so it cannot
    # leave [0, 1] either.
    return torch.sub(maxc.unsqueeze(-3), w.mul_(chroma.unsqueeze(-3)), out=x)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    return _brightness_(x.clone(), factor)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend with the mean gray level of each image (torchvision)."""
    return _contrast_(x.clone(), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend with the grayscale image (torchvision)."""
    return _saturation_(x.clone(), factor)


def adjust_hue(x: torch.Tensor, hue_factor: torch.Tensor | float) -> torch.Tensor:
    """Rotate the hue by ``hue_factor`` (fraction of a turn, in [-0.5, 0.5]) keeping saturation and value.

    Our batched RGB -> HSV -> RGB: hue h6 in [0, 6) from the max channel; back-conversion with the closed
    form c_n = V - C * clamp(min(k, 4 - k), 0, 1), k = (n + h6) mod 6, n = 5, 3, 1 for R, G, B, where
    C = V * S = max - min (the chroma). Equal to torchvision's sector table up to float rounding.
    """
    return _hue_(x.clone(), hue_factor)


_JITTER_OPS_: tuple[Callable[..., torch.Tensor], ...] = (_brightness_, _contrast_, _saturation_, _hue_)  # factor order


@lru_cache(maxsize=1)
def _compiled_jitter_ops() -> tuple[Callable[..., torch.Tensor], ...]:
    """The four in-place colour ops ``torch.compile``d once per process (dynamic shapes: the slice sizes change
    every call). Compiled, each op is one fused loop instead of up to ~50 elementwise passes (hue); the first
    call pays the compilation (cached on disk by inductor; its cost is in benchmarks/RESULTS.md)."""
    return tuple(torch.compile(op, dynamic=True) for op in _JITTER_OPS_)


def colour_jitter_(
    x: torch.Tensor, selected: torch.Tensor, order: torch.Tensor, factors: torch.Tensor,
    active: tuple[bool, ...] = (True, True, True, True),
    *,
    compiled: bool = False,
) -> torch.Tensor:
    """torchvision's ColorJitter with per-sample factors AND a per-sample op order, on x [B, 3, H, W] in [0, 1].

    selected: [B] bool (CPU), the samples to jitter; order: [B, 4] (CPU), ``order[i, pos]`` = the op (0
    brightness, 1 contrast, 2 saturation, 3 hue) sample i gets at position pos; factors: [4, B] on x's
    device; ``active[op] = False`` skips that op (strength 0); ``compiled`` uses ``torch.compile``d ops
    (see :func:`_compiled_jitter_ops`). x is overwritten and returned.

    At each position the jittered samples are re-sorted by the op they get, so every op runs once on one
    contiguous slice of a working buffer, in place: four gathers and one scatter in all, instead of a
    gather + scatter per (position, op) pair; see benchmarks/RESULTS.md (augmentation) for the effect.
    """
    rows = selected.nonzero().squeeze(1)  # original index of each row of the working buffer y
    if rows.numel() == 0:
        return x
    dev = x.device
    ops = _compiled_jitter_ops() if compiled else _JITTER_OPS_
    y: torch.Tensor | None = None
    for pos in range(4):
        op_now = order[rows, pos]
        perm = torch.argsort(op_now, stable=True)
        rows = rows[perm]
        rows_dev = rows.to(dev, non_blocking=True)  # one transfer per position, shared by both gathers below
        if y is None:
            y = x.index_select(0, rows_dev)
        elif not torch.equal(perm, torch.arange(perm.numel())):
            y = y.index_select(0, perm.to(dev, non_blocking=True))
        f = factors.index_select(1, rows_dev)
        start = 0
        for op_i, count in enumerate(torch.bincount(op_now, minlength=4).tolist()):
            if count and active[op_i]:
                ops[op_i](y[start : start + count], f[op_i, start : start + count])
            start += count
    assert y is not None
    return x.index_copy_(0, rows_dev, y)

def blur_kernel_size(size: int) -> int:
    """SimCLR: 10% of the image side, made odd, at least 3 (224 -> 23, 96 -> 9, 32 -> 3)."""
    k = int(0.1 * size)
    k = k + 1 if k % 2 == 0 else k
    return max(3, k)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float, kernel_size: int) -> torch.Tensor:
    """Per-sample Gaussian blur of [B, C, H, W]: separable, reflect padding, kernel as torchvision's."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ConfigError(f"gaussian_blur: kernel_size must be odd and positive, got {kernel_size}")
    b, c, h, w = x.shape
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, kernel_size, dtype=torch.float32, device=x.device)
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1).expand(b, 1)
    k1 = torch.exp(-0.5 * (t / s) ** 2)
    k1 = (k1 / k1.sum(-1, keepdim=True)).to(x.dtype)  # [B, K]
    kc = k1.repeat_interleave(c, dim=0)  # [B*C, K]
    pad = kernel_size // 2
    y = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kc.reshape(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, kc.reshape(b * c, 1, kernel_size, 1), groups=b * c)
    return y.reshape(b, c, h, w)


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """x -> 1 - x where x >= threshold (float images in [0, 1])."""
    if threshold == 0.5:  # min(x, 1 - x) is the same map and avoids the slow torch.where
        return torch.minimum(x, 1.0 - x)
    return torch.where(x >= threshold, 1.0 - x, x)


# ----------------------------------------------------------------------------------------- layout


def as_nchw(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, C] or [B, C, H, W] (C = 1 or 3; float input taken as [0, 1]) -> a [B, 3, H, W] view."""
    if images.dim() != 4:
        raise DataError(
            f"views: expected a batch of images [B, H, W, 3] or [B, 3, H, W], got {tuple(images.shape)}"
        )
    if not (images.dtype == torch.uint8 or images.dtype.is_floating_point):
        raise DataError(f"views: images must be uint8 (or float in [0, 1]), got {images.dtype}")
    # channels-last (the cache's layout) wins when both readings are possible, e.g. [B, 3, H, 3]
    if images.shape[-1] == 3 or (images.shape[-1] == 1 and images.shape[1] != 3):
        x = images.permute(0, 3, 1, 2)
    elif images.shape[1] in (1, 3):
        x = images
    else:
        raise DataError(f"views: images must have 1 or 3 channels, got shape {tuple(images.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def to_float_nchw(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [B, H, W, C] or [B, C, H, W] (C = 1 or 3; float input taken as [0, 1]) -> float [B, 3, H, W]."""
    return to_float(as_nchw(images), dtype)


def to_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (0..255) or float ([0, 1]) tensor -> ``dtype`` in [0, 1], any layout kept."""
    return x.to(dtype).mul_(1.0 / 255.0) if x.dtype == torch.uint8 else x.to(dtype)


def to_nhwc(images: torch.Tensor) -> torch.Tensor:
    """The view kernel's input: contiguous [B, H, W, 3], uint8 kept as is (the cache's batches: no copy),
    float as float32."""
    x = as_nchw(images).permute(0, 2, 3, 1)
    return x.contiguous() if images.dtype == torch.uint8 else x.to(torch.float32).contiguous()


def to_layout(x: torch.Tensor, channels_last: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
    """x in ``dtype`` (default: its own) and in channels-last or contiguous memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dtype = dtype or x.dtype
    if x.device.type == "cpu" and channels_last and dtype != x.dtype:
        # two copies beat one on CPU: the fused cast + layout change runs a slow strided kernel
        # (benchmarks/RESULTS.md, notes moved from code)
        return x.to(memory_format=fmt).to(dtype)
    return x.to(dtype=dtype, memory_format=fmt)  # one copy: cast + layout


def _finish(
    x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    return to_layout(normalize(x, mean, std, inplace=True), channels_last, dtype)  # x is its caller's own buffer


def eval_transform(
    images: torch.Tensor,
    size: int,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    *,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
    crop_fraction: float = 1.0,
    sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """The evaluation view: resize the shorter side, centre-crop ``size x size``, normalise. Deterministic.

    The standard protocol (torchvision's ``Resize(round(size / crop_fraction))`` + ``CenterCrop(size)``, as
    lightly, solo-learn and the papers evaluate): the shorter side is resized to ``round(size /
    crop_fraction)`` (bilinear, antialiased; the longer side to ``int(short * long / shorter)``, torchvision's
    rounding), then the centre ``size x size`` is cropped (top ``round((h - size) / 2)``). ``crop_fraction``
    1.0 (default) keeps the whole shorter side; 0.875 is ImageNet's 224-of-256. A square image at
    ``crop_fraction`` 1.0 is resized whole to ``size x size``: exactly the square protocol (CIFAR numbers
    stay comparable). ``sizes`` [B, 2]: a padded native-aspect batch (:func:`selfsup.data.gather`); each
    image is its top-left ``sizes[b]`` part.
    """
    if not 0.0 < crop_fraction <= 1.0:
        raise ConfigError(f"eval crop_fraction must be in (0, 1], got {crop_fraction!r}")
    if sizes is None:
        out = _resize_centre_crop(to_float_nchw(images, torch.float32), size, crop_fraction)
    else:
        x = as_nchw(images)  # each shape's own part goes to float, never the whole padded frame
        sz = torch.as_tensor(sizes).to("cpu", torch.int64).reshape(-1, 2)
        out = torch.empty(x.shape[0], 3, size, size, device=x.device)
        shapes, inverse = torch.unique(sz, dim=0, return_inverse=True)
        for k, (h, w) in enumerate(shapes.tolist()):  # one batched resize per distinct shape
            idx = (inverse == k).nonzero().squeeze(1).to(x.device)
            part = to_float(x[..., :h, :w].index_select(0, idx), torch.float32)
            out[idx] = _resize_centre_crop(part, size, crop_fraction)
    return _finish(out.to(dtype), mean, std, channels_last)


def _resize_centre_crop(x: torch.Tensor, size: int, crop_fraction: float) -> torch.Tensor:
    """[B, 3, h, w] in [0, 1] -> [B, 3, size, size]: eval_transform's resize + centre crop."""
    h, w = (int(v) for v in x.shape[-2:])
    short = size if crop_fraction == 1.0 else int(round(size / crop_fraction))
    rh, rw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    rh, rw = max(rh, size), max(rw, size)
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
    if (rh, rw) != (size, size):
        x = x[..., top : top + size, left : left + size].contiguous()
    return x

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "as_nchw",
    "blur_kernel_size",
    "colour_jitter_",
    "crop_theta",
    "eval_transform",
    "gaussian_blur",
    "hflip",
    "normalize",
    "resized_crop",
    "rgb_to_grayscale",
    "solarize",
    "to_float",
    "to_float_nchw",
    "to_grayscale",
    "to_layout",
    "to_nhwc",
]
