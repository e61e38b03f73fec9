"""Batched, per-sample image augmentation on tensors (CPU or CUDA): the views every SSL method trains on.

Why our own code: ``torchvision.transforms.v2`` draws ONE set of random parameters per call, i.e. per
batch when given a batched tensor, so independent per-sample randomness (what every SSL paper assumes)
needs a Python loop over images (or per-image PIL transforms in DataLoader workers). Here every sample
of a batch gets independent parameters, drawn in one vectorised call from a ``torch.Generator``. The image
work is either a handful of batched tensor ops (any device; 12-20x cheaper per image than lightly's per-sample
PIL SimCLRTransform on one CPU core) or, on a CPU, one fused compiled pass per sample over the same parameters
(:mod:`selfsup.augment.kernel`; ~66x, 3.7x cheaper than the torch ops; benchmarks/RESULTS.md, augmentation).

Pipeline of one view (order of SimCLR, Chen et al. 2020, arXiv 2002.05709, App. A, and BYOL, Grill et
al. 2020, arXiv 2006.07733, Table 6): random resized crop + horizontal flip (ONE bilinear resampling: a
per-sample affine grid + ``grid_sample``) -> colour jitter (brightness, contrast, saturation, hue in a
random order per sample, like torchvision's ``ColorJitter``) with prob. ``jitter_p`` -> grayscale with prob.
``gray_p`` -> Gaussian blur with prob. ``blur_p`` -> solarize with prob. ``solarize_p`` -> normalise.

Native aspect: images keep their own shape (:mod:`selfsup.data.images`). A batch of different shapes arrives
padded to its tallest and widest image with per-sample ``sizes`` [B, 2]; every crop box is drawn in its own
image's height and width (torchvision's ``RandomResizedCrop.get_params`` distribution for that size) and
resampled from that image only: the torch ops map the box into the replicate-padded frame, the kernel clamps
to the image's own border. Same-shape batches (CIFAR) take the dense path unchanged.

All colour ops work on float images in [0, 1] and clamp like torchvision. Every public op takes per-sample
parameter tensors of shape [B] and matches its torchvision counterpart for fixed parameters (see
``tests/test_views.py`` for the tolerances).

Differences from torchvision's ``RandomResizedCrop`` (deliberate):
- crop boxes are continuous (fractions of the source sides), not rounded to whole pixels;
- no antialiasing when a crop is shrunk (as torchvision's tensor path with ``antialias=False``). Up to 96 px
  the default cache size equals the view size, so crops are only ever enlarged and nothing aliases; above
  96 px the default stores the shorter side at 8/7 of the view size (torchvision's 256 for 224), so crops
  larger than (7/8)^2 = 77% of the shorter side's square are shrunk by at most 8/7, a mild aliasing that a
  much larger cache would make worse. ``eval_transform`` (one deterministic resize) does antialias.
- pixels at the crop border are interpolated with their true neighbours outside the crop (torchvision
  replicates the crop's edge), so the outermost half-pixel ring differs slightly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
import torch.nn.functional as F

from selfsup.augment.colour import GRAY_WEIGHTS
from selfsup.errors import ConfigError, DataError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_GRAY = GRAY_WEIGHTS  # ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale
COLOUR_MODES = ("exact", "linear")  # make_views(colour=...) / data.colour
VIEW_BACKENDS = ("auto", "torch", "numba")  # make_views(backend=...) / data.view_backend
_N_TRIES = 10  # RandomResizedCrop: candidate boxes per sample before the central-crop fallback


# ----------------------------------------------------------------------------------------- specs


@dataclass
class ViewSpec:
    """One view's augmentation. Defaults are SimCLR's (Chen et al. 2020, arXiv 2002.05709, App. A).

    SimCLR's colour jitter of strength ``s`` is brightness = contrast = saturation = 0.8 s and hue = 0.2 s
    (applied with p 0.8); the defaults below are s = 0.5, the paper's CIFAR-10 setting (ImageNet: s = 1).
    Gaussian blur (p 0.5 on ImageNet, off for CIFAR) uses a kernel of 10% of the view side, made odd
    (at least 3), and sigma uniform in ``blur_sigma``.
    """

    size: int  # output side (square)
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop: crop area as a fraction of the source
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio (w / h), sampled log-uniformly
    hflip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4  # factor uniform in [max(0, 1 - b), 1 + b]
    contrast: float = 0.4  # factor uniform in [max(0, 1 - c), 1 + c]
    saturation: float = 0.4  # factor uniform in [max(0, 1 - s), 1 + s]
    hue: float = 0.1  # shift uniform in [-h, h] (fraction of a full turn; h <= 0.5)
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0  # threshold 0.5 (BYOL)

    def __post_init__(self) -> None:
        def bad(what: str) -> ConfigError:
            return ConfigError(f"ViewSpec: {what}")

        if int(self.size) != self.size or self.size < 1:
            raise bad(f"size must be a positive integer, got {self.size!r}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi <= 1.0:
            raise bad(f"scale must satisfy 0 < min <= max <= 1, got {self.scale!r}")
        lo, hi = self.ratio
        if not 0.0 < lo <= hi:
            raise bad(f"ratio must satisfy 0 < min <= max, got {self.ratio!r}")
        for name in ("hflip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise bad(f"{name} must be a probability in [0, 1], got {p!r}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise bad(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.hue <= 0.5:
            raise bad(f"hue must be in [0, 0.5], got {self.hue!r}")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise bad(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma!r}")


@dataclass
class ViewParams:
    """What was sampled for one view of B samples (kept for FAMT weight maps and audits)."""

    boxes: torch.Tensor  # [B, 4] float (top, left, height, width) as fractions of each source image's sides
    flip: torch.Tensor  # [B] bool, horizontal flip applied after the crop
    sizes: torch.Tensor | None = None  # [B, 2] int64 (height, width) of each source image (make_views always
    # fills it; None in hand-made params = the whole, square source)


@dataclass
class ViewRecipe:
    views: list[ViewSpec]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not self.views:
            raise ConfigError("ViewRecipe: needs at least one view")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(
                f"ViewRecipe: mean/std must be 3 values with std > 0, got {self.mean}, {self.std}"
            )


# ----------------------------------------------------------------------------------------- recipes


def _no_colour(spec: ViewSpec) -> ViewSpec:
    return replace(spec, jitter_p=0.0, gray_p=0.0)


def simclr_recipe(
    size: int,
    *,
    strength: float = 0.5,
    blur: bool = False,
    scale: tuple[float, float] = (0.08, 1.0),
    grayscale_input: bool = False,
) -> ViewRecipe:
    """SimCLR's two identical views (Chen et al. 2020, App. A): jitter 0.8s/0.8s/0.8s/0.2s with p 0.8,
    grayscale p 0.2, optional blur p 0.5 (ImageNet; off for CIFAR). ``strength`` = s (0.5 CIFAR, 1 ImageNet).

    ``grayscale_input=True`` (MNIST-like data) turns colour jitter and grayscale off: on gray images
    saturation/hue/grayscale do nothing and the remaining jitter is not part of the recipe we document.
    """
    spec = ViewSpec(
        size=size,
        scale=scale,
        brightness=0.8 * strength,
        contrast=0.8 * strength,
        saturation=0.8 * strength,
        hue=min(0.5, 0.2 * strength),
        blur_p=0.5 if blur else 0.0,
    )
    if grayscale_input:
        spec = _no_colour(spec)
    return ViewRecipe(views=[spec, replace(spec)])


def byol_recipe(
    size: int,
    *,
    blur: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    grayscale_input: bool = False,
) -> ViewRecipe:
    """BYOL's asymmetric views (Grill et al. 2020, arXiv 2006.07733, Table 6): jitter (0.4, 0.4, 0.2, 0.1)
    with p 0.8, grayscale p 0.2, blur p 1.0 / 0.1, solarize p 0.0 / 0.2. ``blur=False`` drops the blur
    from both views (common for 32 px data). ``grayscale_input=True`` turns colour jitter/grayscale off."""
    common = dict(size=size, scale=scale, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    v1 = ViewSpec(**common, blur_p=1.0 if blur else 0.0, solarize_p=0.0)  # type: ignore[arg-type]
    v2 = ViewSpec(**common, blur_p=0.1 if blur else 0.0, solarize_p=0.2)  # type: ignore[arg-type]
    if grayscale_input:
        v1, v2 = _no_colour(v1), _no_colour(v2)
    return ViewRecipe(views=[v1, v2])


def default_local_size(size: int) -> int:
    """DINO's local/global side ratio 96/224, rounded to a multiple of 4 (at least 8): 32 -> 12, 224 -> 96."""
    return max(8, 4 * round(size * 96 / 224 / 4))


def multicrop_recipe(
    base: ViewRecipe,
    n_global: int = 2,
    n_local: int = 6,
    local_size: int | None = None,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
) -> ViewRecipe:
    """Multi-crop (Caron et al. 2020 SwAV, arXiv 2006.09882; 2021 DINO, arXiv 2104.14294).

    Global view i copies ``base.views[i % len(base.views)]`` (so asymmetric recipes stay asymmetric) with
    ``global_scale``; local views copy ``base.views[0]`` with ``local_size`` (default
    :func:`default_local_size` of the first view's side) and ``local_scale``. Scales are DINO's defaults.
    Methods needing other per-view settings (e.g. DINO's local blur p 0.5) edit the returned specs with
    ``dataclasses.replace``. Global views come first in the returned list.
    """
    if n_global < 1 or n_local < 0:
        raise ConfigError(f"multicrop_recipe: need n_global >= 1 and n_local >= 0, got {n_global}, {n_local}")
    first = base.views[0]
    lsize = default_local_size(first.size) if local_size is None else local_size
    views = [replace(base.views[i % len(base.views)], scale=global_scale) for i in range(n_global)]
    views += [replace(first, size=lsize, scale=local_scale) for _ in range(n_local)]
    return ViewRecipe(views=views, mean=base.mean, std=base.std)


def rescaled_recipe(recipe: ViewRecipe, size: int, full: int) -> ViewRecipe:
    """The same recipe with every view's side scaled by ``size / full`` (at least 4 px): a resolution
    schedule's low-resolution phase (``data.low_res_size``). Crop scales, colour and flips are unchanged, so
    the views show the same content, only with fewer pixels."""
    if not 0 < size <= full:
        raise ConfigError(f"rescaled_recipe: need 0 < size <= full, got {size}, {full}")
    views = [replace(v, size=max(4, round(v.size * size / full))) for v in recipe.views]
    return ViewRecipe(views=views, mean=recipe.mean, std=recipe.std)


# ----------------------------------------------------------------------------------------- batched ops


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
    # x / std - mean / std: cheaper than (x - mean) / std on CPU; in place it also skips a 3 MiB allocation
    # per view batch and the slow out-of-place broadcast kernel (measured 1.3 ms vs 0.1 ms at [256, 3, 32, 32])
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
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


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
        # rounding) instead of three passes plus a temporary: measured 47 vs 108 us at [102, 3, 32, 32]
        return torch.lerp(other.expand_as(x), x, f, out=x).clamp_(0.0, 1.0)
    # a per-image constant (contrast's mean): lerp's broadcast path is 4x slower than these passes
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
    call pays the compilation (tens of seconds on a CPU, cached on disk by inductor)."""
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


# ----------------------------------------------------------------------------------------- linear colour

# Rows: luma (torchvision's grayscale weights), then the NTSC YIQ chroma axes I and Q. Both chroma rows sum
# to 0, so gray pixels (r = g = b) have no chroma and a rotation of (I, Q) leaves them, and the luma, unchanged.
_YIQ = ((_GRAY[0], _GRAY[1], _GRAY[2]), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


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
    w = torch.tensor(_GRAY, dtype=torch.float32, device=dev)
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


# ----------------------------------------------------------------------------------------- sampling


def _uniform(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * u


def sample_boxes(
    u: torch.Tensor,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> torch.Tensor:
    """RandomResizedCrop boxes from uniforms ``u`` [B, 4 * 10] (vectorised torchvision ``get_params``).

    ``height`` / ``width``: the source size, one for the batch (ints) or per sample ([B] tensors: native-aspect
    images, each box drawn in its own image's height and width).
    Per sample: 10 candidates (area fraction ~ U(scale), aspect ~ logU(ratio)); the first that fits is used,
    at a uniform position; if none fits, torchvision's central-crop fallback. Continuous (no pixel rounding).
    Returns [B, 4] (top, left, height, width) as fractions of the sample's source sides.
    """
    b = u.shape[0]
    u = u.reshape(b, _N_TRIES, 4).double()
    # [B, 1] per sample or [1, 1] for the batch; float64 (a Python float's arithmetic, so the batch case is
    # bit-identical to scalar maths)
    hh = torch.as_tensor(height, dtype=torch.float64).reshape(-1, 1)
    ww = torch.as_tensor(width, dtype=torch.float64).reshape(-1, 1)
    area = _uniform(u[..., 0], *scale) * (hh * ww)
    log_r = _uniform(u[..., 1], math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(log_r)
    hf = torch.sqrt(area / r) / hh
    wf = torch.sqrt(area * r) / ww
    ok = (hf <= 1.0) & (wf <= 1.0)
    first = torch.argmax(ok.to(torch.int8), dim=1)  # index of the first valid candidate (0 if none)
    pick = first.unsqueeze(1)
    hf, wf = hf.gather(1, pick).squeeze(1), wf.gather(1, pick).squeeze(1)
    top = (1.0 - hf) * u[..., 2].gather(1, pick).squeeze(1)
    left = (1.0 - wf) * u[..., 3].gather(1, pick).squeeze(1)
    # central-crop fallback (torchvision): whole image, trimmed to the allowed aspect-ratio range
    hv, wv = hh.squeeze(1), ww.squeeze(1)
    in_ratio = wv / hv
    one = torch.ones_like(in_ratio)
    fh = torch.where(in_ratio < ratio[0], (wv / ratio[0]) / hv, one)
    fw = torch.where(in_ratio > ratio[1], (hv * ratio[1]) / wv, one)
    fallback = ~ok.any(dim=1)
    hf = torch.where(fallback, fh, hf)
    wf = torch.where(fallback, fw, wf)
    top = torch.where(fallback, (1.0 - hf) / 2, top)
    left = torch.where(fallback, (1.0 - wf) / 2, left)
    return torch.stack([top, left, hf, wf], -1).float()


def padded_boxes(boxes: torch.Tensor, sizes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes as fractions of each image's own ``sizes`` [B, 2] -> fractions of the padded ``height x width``
    frame the image sits in (top-left aligned). With replicate padding, sampling the padded frame there is
    sampling the image with its own border clamped (see :func:`selfsup.data.gather`)."""
    fy = sizes[:, 0].to(torch.float64) / height
    fx = sizes[:, 1].to(torch.float64) / width
    f = torch.stack([fy, fx, fy, fx], -1)
    return (boxes.double() * f).float()


# column layout of the per-view uniform draws
_C_BOX = 4 * _N_TRIES
_C_FLIP, _C_JIT, _C_GRAY, _C_BLUR, _C_SIGMA, _C_SOL = range(_C_BOX, _C_BOX + 6)
_C_FACT = _C_BOX + 6  # 4 jitter factors (brightness, contrast, saturation, hue)
_C_PERM = _C_FACT + 4  # 4 keys whose argsort is the jitter order
_N_COLS = _C_PERM + 4


def _index(mask: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """CPU bool mask -> index tensor on device; None when no sample is selected."""
    idx = mask.nonzero().squeeze(1)
    return idx.to(device, non_blocking=True) if idx.numel() else None


def _apply(
    x: torch.Tensor,
    idx: torch.Tensor | None,
    full: bool,
    fn: Callable[..., torch.Tensor],
    *args: torch.Tensor,
) -> torch.Tensor:
    """x with fn applied to the samples idx (in place on x's subset rows)."""
    if idx is None:
        return x
    if full:
        return fn(x, *args)
    x.index_copy_(0, idx, fn(x.index_select(0, idx), *(a.index_select(0, idx) for a in args)))
    return x


def _group_key(spec: ViewSpec) -> tuple[object, ...]:
    """Views with equal keys share one batched pass (only the probabilities may differ between them)."""
    return (spec.size, spec.scale, spec.ratio, spec.brightness, spec.contrast, spec.saturation, spec.hue,
            spec.blur_sigma)


def _below(u: torch.Tensor, specs: list[ViewSpec], name: str) -> torch.Tensor:
    """Per-sample Bernoulli draws ``u < p`` where p is ``spec.<name>`` of the view each row belongs to."""
    ps = [getattr(s, name) for s in specs]
    if len(set(ps)) == 1:
        return u < ps[0]
    return u < torch.tensor(ps, dtype=u.dtype).repeat_interleave(u.shape[0] // len(specs))


def _jitter_params(u: torch.Tensor, strengths: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour-jitter factors [4, N] (brightness, contrast, saturation factors, hue shift; fp32 on the CPU)
    and the per-sample op order [N, 4] (a random permutation per row) from the view uniforms ``u``."""
    f = u[:, _C_FACT : _C_FACT + 4]
    factors = [
        _uniform(f[:, i], max(0.0, 1.0 - s), 1.0 + s) if i < 3 else _uniform(f[:, i], -s, s)
        for i, s in enumerate(strengths)
    ]
    return torch.stack(factors, 0), torch.argsort(u[:, _C_PERM : _C_PERM + 4], dim=1)


def _augment_views(
    src: torch.Tensor, specs: list[ViewSpec], generator: torch.Generator, compiled: bool = False,
    colour: str = "exact", kernel: bool = False,
    finish: tuple[tuple[float, ...], tuple[float, ...], bool, torch.dtype] | None = None,
    sizes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[ViewParams]]:
    """G views (equal :func:`_group_key`) of float [B, 3, H, W] images in [0, 1] -> [G * B, 3, size, size] in
    [0, 1], view g in rows g * B ... (g + 1) * B, plus each view's params. ``kernel``: src is instead a CPU
    [B, H, W, 3] uint8 / float32 batch, and crop + jitter + grayscale run as one fused pass
    (:mod:`selfsup.augment.kernel`) on the same random parameters; with ``finish`` (no blur, no solarize in
    these views) the kernel also normalises and writes the final layout and dtype. ``sizes`` [B, 2] (CPU
    int64): each image's own height and width in a padded batch; its boxes are drawn in that size.

    Why several views in one pass: every op then runs once on G * B samples instead of G times on B, which
    halves the per-call overhead (op dispatch, slicing, parameter draws) that dominates at 32 px; see
    benchmarks/RESULTS.md (augmentation). The uniforms are drawn as one [G * B, columns] block, i.e. the same
    stream as G consecutive per-view draws.
    """
    spec = specs[0]
    g = len(specs)
    b, height, width = (src.shape[0], src.shape[1], src.shape[2]) if kernel else (src.shape[0], *src.shape[2:])
    dev = src.device
    u = torch.rand(g * b, _N_COLS, generator=generator, device=generator.device).cpu()
    if sizes is None:
        boxes = sample_boxes(u[:, :_C_BOX], height, width, spec.scale, spec.ratio)
    else:  # row k of the G * B draws is view k // B of sample k % B
        hw = sizes.repeat(g, 1)
        boxes = sample_boxes(u[:, :_C_BOX], hw[:, 0], hw[:, 1], spec.scale, spec.ratio)
    flip = _below(u[:, _C_FLIP], specs, "hflip_p")
    jit = _below(u[:, _C_JIT], specs, "jitter_p")
    strengths = (spec.brightness, spec.contrast, spec.saturation, spec.hue)
    active = tuple(s > 0 for s in strengths)
    jitter = bool(jit.any()) and any(active)
    gray = _below(u[:, _C_GRAY], specs, "gray_p")

    if kernel:
        from selfsup.augment.kernel import (
            crop_jitter_gray,  # here: numba's import costs CUDA-only users 0.2 s
        )

        fs, order = _jitter_params(u, strengths)
        x = crop_jitter_gray(src, spec.size, boxes, flip, jit & jitter, order, fs, active, gray, finish, sizes)
    else:
        if g > 1:  # one input row per output row: grid_sample takes no broadcast batch
            src = torch.cat([src] * g)  # keeps src's (channels-last) strides; 30x faster than .repeat here
        crop = boxes if sizes is None else padded_boxes(boxes, hw, height, width)
        x = resized_crop(src, crop.to(dev, non_blocking=True), flip.to(dev, non_blocking=True), spec.size)
        if jitter or (colour == "linear" and gray.any()):
            fs, order = _jitter_params(u, strengths)
            if colour == "linear":  # jitter + grayscale as one per-sample affine map (see make_views)
                mean_rgb = x.mean(dim=(-2, -1)) if jitter and spec.contrast > 0 else x.new_zeros(x.shape[0], 3)
                # the map is composed in fp32 also when x is bf16 (CUDA)
                x = apply_colour_affine(x, *colour_affine(mean_rgb, jit, order, fs.to(dev, non_blocking=True), gray))
            else:
                fdev = fs.to(dev, dtype=x.dtype, non_blocking=True)
                x = colour_jitter_(x, jit, order, fdev, active, compiled=compiled)
        if colour != "linear" and gray.any():
            x = _apply(x, _index(gray, dev), bool(gray.all()), to_grayscale)

    blur = _below(u[:, _C_BLUR], specs, "blur_p")
    if blur.any():
        sigma = _uniform(u[:, _C_SIGMA], *spec.blur_sigma).to(dev, dtype=x.dtype, non_blocking=True)
        ks = blur_kernel_size(spec.size)
        x = _apply(x, _index(blur, dev), bool(blur.all()), lambda t, s: gaussian_blur(t, s, ks), sigma)

    sol = _below(u[:, _C_SOL], specs, "solarize_p")
    if sol.any():
        x = _apply(x, _index(sol, dev), bool(sol.all()), solarize)

    boxes, flip = boxes.to(dev), flip.to(dev)
    # each source image's (height, width), also for a same-shape batch (FAMT maps a box through it)
    sz = (sizes if sizes is not None else torch.tensor([[height, width]], dtype=torch.int64).expand(b, 2)).to(dev)
    return x, [ViewParams(boxes=boxes[i * b : (i + 1) * b], flip=flip[i * b : (i + 1) * b], sizes=sz)
               for i in range(g)]


def _as_nchw(images: torch.Tensor) -> torch.Tensor:
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


def _to_float_nchw(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [B, H, W, C] or [B, C, H, W] (C = 1 or 3; float input taken as [0, 1]) -> float [B, 3, H, W]."""
    x = _as_nchw(images)
    return x.to(dtype).mul_(1.0 / 255.0) if images.dtype == torch.uint8 else x.to(dtype)


def _to_nhwc(images: torch.Tensor) -> torch.Tensor:
    """The view kernel's input: contiguous [B, H, W, 3], uint8 kept as is (the cache's batches: no copy),
    float as float32."""
    x = _as_nchw(images).permute(0, 2, 3, 1)
    return x.contiguous() if images.dtype == torch.uint8 else x.to(torch.float32).contiguous()


def _cast(x: torch.Tensor, channels_last: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dtype = dtype or x.dtype
    if x.device.type == "cpu" and channels_last and dtype != x.dtype:
        # two copies beat one on CPU: the fused cast + layout change runs a slow strided kernel (measured
        # [512, 3, 32, 32] fp32 -> bf16 channels_last: 2.1 ms fused vs 0.8 ms as layout, then cast)
        return x.to(memory_format=fmt).to(dtype)
    return x.to(dtype=dtype, memory_format=fmt)  # one copy: cast + layout


def _finish(
    x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], channels_last: bool,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    return _cast(normalize(x, mean, std, inplace=True), channels_last, dtype)  # x is its caller's own buffer


def uses_kernel(
    device: torch.device | str, colour: str, backend: str, dtype: torch.dtype = torch.float32
) -> bool:
    """Whether make_views runs the fused CPU kernel for images on ``device`` (see make_views' ``backend``)."""
    if backend not in VIEW_BACKENDS:
        raise ConfigError(f"views: backend must be one of {VIEW_BACKENDS}, got {backend!r}")
    fits = torch.device(device).type == "cpu" and colour == "exact" and dtype in (torch.float32, torch.bfloat16)
    if backend == "numba" and not fits:
        raise ConfigError("views: the numba backend makes float32 or bfloat16 views of CPU images with "
                          "colour='exact' only; use backend='auto'")
    return backend == "numba" or (backend == "auto" and fits)


def make_views(
    images: torch.Tensor,
    recipe: ViewRecipe,
    generator: torch.Generator,
    *,
    channels_last: bool = True,
    dtype: torch.dtype = torch.float32,
    compiled: bool = False,
    colour: str = "exact",
    backend: str = "auto",
    sizes: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[ViewParams]]:
    """Augment a batch into the recipe's views, each sample with independent random parameters.

    images: uint8 [B, H, W, 3] (as stored in the cache) or [B, 3, H, W], on CPU or CUDA; 1-channel images
    are replicated to 3. ``sizes`` (int64 [B, 2], optional): a batch of native-aspect images of different
    shapes, as :func:`selfsup.data.gather` makes it: image b is the top-left ``sizes[b]`` part of ``images[b]``,
    the rest replicate padding. Every crop box is drawn in its own image's height and width (torchvision's
    ``RandomResizedCrop.get_params`` distribution for that size), and ``ViewParams.boxes`` are fractions of
    the image's own sides. None: every image fills the batch's H x W. All randomness comes from ``generator`` (drawn on its device, then moved to the
    images' device), so the result is a deterministic function of the generator state.
    Returns per view a normalised ``dtype`` tensor [B, 3, size, size] (channels_last memory format if
    requested) and its :class:`ViewParams`. ``compiled=True`` runs the torch colour ops through ``torch.compile``
    (what ``--compile`` turns on; same results up to float rounding).

    ``colour`` picks the colour jitter + grayscale implementation (both draw the same random parameters):
    - ``"exact"``: torchvision's ``ColorJitter`` (HSV hue shift) and ``RandomGrayscale``, clamping to [0, 1]
      after every op, as lightly and the papers' code do;
    - ``"linear"``: the same ops, factors and per-sample order composed into ONE affine colour map per sample
      (:func:`colour_affine`), applied with one batched matmul and clamped once at the end. Two differences:
      the hue change is a rotation of the YIQ chroma plane (:func:`hue_rotation`; luma kept) instead of
      the HSV hue shift (max channel kept), and values are not clamped between ops. Why: the exact path
      is ~60 elementwise passes per image at 32 px (the HSV round trip), the linear one a handful; see
      benchmarks/RESULTS.md (augmentation) for the speed and the time-to-accuracy section for its effect.

    ``backend`` picks how the exact path runs: ``"numba"`` makes crop + flip + colour jitter + grayscale of
    each sample in one fused, compiled CPU pass (:mod:`selfsup.augment.kernel`: the same parameters and
    formulas as the torch ops, equal up to float rounding, several times cheaper); ``"torch"`` runs the
    batched torch ops (any device; ``compiled`` applies to them); ``"auto"`` is numba for float32 / bfloat16
    views of CPU images with exact colour, torch otherwise.
    """
    if colour not in COLOUR_MODES:
        raise ConfigError(f"views: colour must be one of {COLOUR_MODES}, got {colour!r}")
    kernel = uses_kernel(images.device, colour, backend, dtype)
    # bf16 elementwise ops are slower than fp32 on CPUs (no native bf16 ALU for them) and round the colour
    # maths: augment in fp32 and cast once, with the layout change, in _cast (measured ~25% faster).
    work = torch.float32 if dtype == torch.bfloat16 and images.device.type == "cpu" else dtype
    src = _to_nhwc(images) if kernel else _to_float_nchw(images, work)
    b = src.shape[0]
    if sizes is not None:
        sizes = torch.as_tensor(sizes).to("cpu", torch.int64).reshape(b, 2)
        full = (src.shape[1], src.shape[2]) if kernel else tuple(src.shape[2:])
        if (sizes < 1).any() or (sizes[:, 0] > full[0]).any() or (sizes[:, 1] > full[1]).any():
            raise DataError(f"views: sizes must lie within the batch's {full[0]} x {full[1]} frame")
        if bool((sizes == torch.tensor(full)).all()):
            sizes = None  # every image fills the frame: the dense path
    groups: dict[tuple[object, ...], list[int]] = {}  # views sharing a pass, in order of first appearance
    for i, spec in enumerate(recipe.views):
        groups.setdefault(_group_key(spec), []).append(i)
    made: dict[int, tuple[torch.Tensor, ViewParams]] = {}  # recipe index -> (view, params)
    for idx in groups.values():
        specs = [recipe.views[i] for i in idx]
        # the kernel finishes the views itself unless blur or solarize (torch ops) come after it
        fused = kernel and not any(v.blur_p or v.solarize_p for v in specs)
        finish = (recipe.mean, recipe.std, channels_last, dtype) if fused else None
        x, ps = _augment_views(src, specs, generator, compiled, colour, kernel, finish, sizes)
        if not fused:
            x = normalize(x, recipe.mean, recipe.std, inplace=True)  # x is this group's own buffer
        for k, i in enumerate(idx):  # (_cast is a no-op on the kernel's finished views)
            made[i] = (_cast(x[k * b : (k + 1) * b], channels_last, dtype), ps[k])
    order = range(len(recipe.views))
    return [made[i][0] for i in order], [made[i][1] for i in order]


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
    x = _to_float_nchw(images, torch.float32)
    if sizes is None:
        out = _resize_centre_crop(x, size, crop_fraction)
    else:
        sz = torch.as_tensor(sizes).to("cpu", torch.int64).reshape(-1, 2)
        out = x.new_empty(x.shape[0], 3, size, size)
        shapes, inverse = torch.unique(sz, dim=0, return_inverse=True)
        for k, (h, w) in enumerate(shapes.tolist()):  # one batched resize per distinct shape
            idx = (inverse == k).nonzero().squeeze(1).to(x.device)
            out[idx] = _resize_centre_crop(x.index_select(0, idx)[..., :h, :w], size, crop_fraction)
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
    "COLOUR_MODES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ViewParams",
    "ViewRecipe",
    "ViewSpec",
    "VIEW_BACKENDS",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_kernel_size",
    "byol_recipe",
    "colour_jitter_",
    "crop_theta",
    "default_local_size",
    "eval_transform",
    "gaussian_blur",
    "hflip",
    "make_views",
    "multicrop_recipe",
    "normalize",
    "padded_boxes",
    "rescaled_recipe",
    "resized_crop",
    "rgb_to_grayscale",
    "sample_boxes",
    "solarize",
    "simclr_recipe",
    "to_grayscale",
    "uses_kernel",
]
