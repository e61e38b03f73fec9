"""Batched, per-sample image augmentation on tensors (CPU or CUDA): :func:`make_views`, the views every SSL
method trains on.

Why our own code: ``torchvision.transforms.v2`` draws ONE set of random parameters per call, i.e. per
batch when given a batched tensor, so independent per-sample randomness (what every SSL paper assumes)
needs a Python loop over images (or per-image PIL transforms in DataLoader workers). Here every sample
of a batch gets independent parameters, drawn in one vectorised call from a ``torch.Generator``. The image
work is either a handful of batched tensor ops (:mod:`selfsup.augment.ops`; any device; an order of magnitude
cheaper per image than lightly's per-sample PIL SimCLRTransform on one CPU core) or, on a CPU, one fused
compiled pass per sample over the same parameters (:mod:`selfsup.augment.kernel`, cheaper again); see
benchmarks/RESULTS.md (augmentation) for the numbers.

The pieces: :mod:`selfsup.augment.recipes` (what views to make), :mod:`selfsup.augment.sampling` (crop
boxes), :mod:`selfsup.augment.ops` (the tensor ops), :mod:`selfsup.augment.colour` (the ``linear`` colour
mode) and :mod:`selfsup.augment.kernel`. This module draws every random parameter of a view from one block
of uniforms (the column layout below) and runs the ops in the recipes' order.

Native aspect: images keep their own shape (:mod:`selfsup.data.images`). A batch of different shapes arrives
padded to its tallest and widest image with per-sample ``sizes`` [B, 2]; every crop box is drawn in its own
image's height and width (torchvision's ``RandomResizedCrop.get_params`` distribution for that size) and
resampled from that image only: the torch ops map the box into the replicate-padded frame, the kernel clamps
to the image's own border. Same-shape batches (CIFAR) take the dense path unchanged. A batch whose frame
would hold more than twice its images' pixels (panoramas beside portraits: up to ~10x) goes through the torch
ops one group of similar shapes at a time (:func:`selfsup.augment.sampling.frame_chunks`), so the float
frame is never built (benchmarks/RESULTS.md, native aspect: peak memory of such a batch).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from selfsup.augment.colour import apply_colour_affine, colour_affine
from selfsup.augment.ops import (
    as_nchw,
    blur_kernel_size,
    colour_jitter_,
    crop_theta,
    eval_transform,
    gaussian_blur,
    normalize,
    resized_crop,
    solarize,
    to_float,
    to_grayscale,
    to_layout,
    to_nhwc,
)
from selfsup.augment.recipes import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ViewParams,
    ViewRecipe,
    ViewSpec,
    simclr_recipe,
)
from selfsup.augment.sampling import N_TRIES, frame_chunks, padded_boxes, sample_boxes, uniform
from selfsup.errors import ConfigError, DataError

COLOUR_MODES = ("exact", "linear")  # make_views(colour=...) / data.colour
VIEW_BACKENDS = ("auto", "torch", "numba")  # make_views(backend=...) / data.view_backend


# column layout of the per-view uniform draws
_C_BOX = 4 * N_TRIES
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
        uniform(f[:, i], max(0.0, 1.0 - s), 1.0 + s) if i < 3 else uniform(f[:, i], -s, s)
        for i, s in enumerate(strengths)
    ]
    return torch.stack(factors, 0), torch.argsort(u[:, _C_PERM : _C_PERM + 4], dim=1)


def _augment_views(
    src: torch.Tensor, specs: list[ViewSpec], generator: torch.Generator, compiled: bool = False,
    colour: str = "exact", kernel: bool = False,
    finish: tuple[tuple[float, ...], tuple[float, ...], bool, torch.dtype] | None = None,
    sizes: torch.Tensor | None = None,
    pieces: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, list[ViewParams]]:
    """G views (equal :func:`_group_key`) of float [B, 3, H, W] images in [0, 1] -> [G * B, 3, size, size] in
    [0, 1], view g in rows g * B ... (g + 1) * B, plus each view's params. ``kernel``: src is instead a CPU
    [B, H, W, 3] uint8 / float32 batch, and crop + jitter + grayscale run as one fused pass
    (:mod:`selfsup.augment.kernel`) on the same random parameters; with ``finish`` (no blur, no solarize in
    these views) the kernel also normalises and writes the final layout and dtype. ``sizes`` [B, 2] (CPU
    int64): each image's own height and width in a padded batch; its boxes are drawn in that size.
    ``pieces`` (torch path only): the batch as row groups ``(rows, float [n, 3, h, w])``, each cut to its own
    frame (:func:`selfsup.augment.sampling.frame_chunks`); each group is cropped on its own with the whole
    batch's random draws, so the views equal the whole-frame ones up to float rounding.

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
            crop_jitter_gray,  # here: CUDA-only users skip numba's slow import
        )

        fs, order = _jitter_params(u, strengths)
        x = crop_jitter_gray(src, spec.size, boxes, flip, jit & jitter, order, fs, active, gray, finish, sizes)
    else:
        if pieces is not None:
            x = _crops_by_piece(pieces, b, boxes, flip, hw, g, spec.size)
        else:
            if g > 1:  # one input row per output row: grid_sample takes no broadcast batch
                src = torch.cat([src] * g)  # keeps src's (channels-last) strides; much faster than .repeat here
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
        sigma = uniform(u[:, _C_SIGMA], *spec.blur_sigma).to(dev, dtype=x.dtype, non_blocking=True)
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


def _crops_by_piece(
    pieces: list[tuple[torch.Tensor, torch.Tensor]], b: int, boxes: torch.Tensor, flip: torch.Tensor,
    hw: torch.Tensor, g: int, size: int,
) -> torch.Tensor:
    """The torch path's crops of a wasteful padded batch, one row group at a time (see ``_augment_views``):
    pieces of the B images, boxes / flip / hw of the G * B output rows -> [G * B, 3, size, size]."""
    first = pieces[0][1]
    x = torch.empty(g * b, 3, size, size, dtype=first.dtype, device=first.device)
    for rows, part in pieces:
        fh, fw = int(part.shape[-2]), int(part.shape[-1])
        out = torch.cat([rows + i * b for i in range(g)])  # its rows in every view
        if g > 1:
            part = torch.cat([part] * g)
        crop = padded_boxes(boxes[out], hw[out], fh, fw)
        dev = part.device
        x[out.to(dev)] = resized_crop(part, crop.to(dev, non_blocking=True), flip[out].to(dev), size)
    return x


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
    # maths: augment in fp32 and cast once, with the layout change, in to_layout (faster on CPUs; see
    # benchmarks/RESULTS.md, notes moved from code).
    work = torch.float32 if dtype == torch.bfloat16 and images.device.type == "cpu" else dtype
    src = to_nhwc(images) if kernel else as_nchw(images)
    b = src.shape[0]
    chunks: list[torch.Tensor] | None = None
    if sizes is not None:
        sizes = torch.as_tensor(sizes).to("cpu", torch.int64).reshape(b, 2)
        full = (src.shape[1], src.shape[2]) if kernel else tuple(src.shape[2:])
        if (sizes < 1).any() or (sizes[:, 0] > full[0]).any() or (sizes[:, 1] > full[1]).any():
            raise DataError(f"views: sizes must lie within the batch's {full[0]} x {full[1]} frame")
        if bool((sizes == torch.tensor(full)).all()):
            sizes = None  # every image fills the frame: the dense path
        elif not kernel:  # the kernel reads each image's own pixels; the torch ops resample the frame
            chunks = frame_chunks(sizes)
    pieces: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    if chunks is not None and sizes is not None:  # each group's own padded frame (the frame's top-left), once
        pieces = []
        for rows in chunks:
            h, w = sizes[rows].max(dim=0).values.tolist()
            pieces.append((rows, to_float(src[:, :, :h, :w][rows.to(src.device)], work)))
    elif not kernel:
        src = to_float(src, work)
    groups: dict[tuple[object, ...], list[int]] = {}  # views sharing a pass, in order of first appearance
    for i, spec in enumerate(recipe.views):
        groups.setdefault(_group_key(spec), []).append(i)
    made: dict[int, tuple[torch.Tensor, ViewParams]] = {}  # recipe index -> (view, params)
    for idx in groups.values():
        specs = [recipe.views[i] for i in idx]
        # the kernel finishes the views itself unless blur or solarize (torch ops) come after it
        fused = kernel and not any(v.blur_p or v.solarize_p for v in specs)
        finish = (recipe.mean, recipe.std, channels_last, dtype) if fused else None
        x, ps = _augment_views(src, specs, generator, compiled, colour, kernel, finish, sizes, pieces)
        if not fused:
            x = normalize(x, recipe.mean, recipe.std, inplace=True)  # x is this group's own buffer
        for k, i in enumerate(idx):  # (to_layout is a no-op on the kernel's finished views)
            made[i] = (to_layout(x[k * b : (k + 1) * b], channels_last, dtype), ps[k])
    order = range(len(recipe.views))
    return [made[i][0] for i in order], [made[i][1] for i in order]

__all__ = [
    "COLOUR_MODES",
    "VIEW_BACKENDS",
    "make_views",
    "uses_kernel",
    # re-exported: imported from here by modules not yet moved to their homes (ops, recipes, sampling)
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ViewRecipe",
    "ViewSpec",
    "crop_theta",
    "eval_transform",
    "resized_crop",
    "sample_boxes",
    "simclr_recipe",
]
