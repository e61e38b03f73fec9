"""View recipes: what views a method trains on (:class:`ViewSpec` per view, :class:`ViewRecipe` for the set),
the recipes of the papers (SimCLR, BYOL, multi-crop) and what was sampled for a view (:class:`ViewParams`).
:func:`selfsup.augment.views.make_views` turns a batch and a recipe into the views.

Pipeline of one view (order of SimCLR, Chen et al. 2020, arXiv 2002.05709, App. A, and BYOL, Grill et
al. 2020, arXiv 2006.07733, Table 6): random resized crop + horizontal flip -> colour jitter (brightness,
contrast, saturation, hue in a random order per sample, like torchvision's ``ColorJitter``) with prob.
``jitter_p`` -> grayscale with prob. ``gray_p`` -> Gaussian blur with prob. ``blur_p`` -> solarize with prob.
``solarize_p`` -> normalise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from selfsup.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


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

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ViewParams",
    "ViewRecipe",
    "ViewSpec",
    "byol_recipe",
    "default_local_size",
    "multicrop_recipe",
    "rescaled_recipe",
    "simclr_recipe",
]
