"""Batched per-sample views: shapes, randomness, determinism, and every op against torchvision."""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

from selfsup.augment import views as V
from selfsup.augment.colour import apply_colour_affine, colour_affine, hue_rotation
from selfsup.augment.ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    blur_kernel_size,
    colour_jitter_,
    crop_theta,
    eval_transform,
    gaussian_blur,
    hflip,
    normalize,
    resized_crop,
    rgb_to_grayscale,
    solarize,
    to_grayscale,
)
from selfsup.augment.recipes import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ViewRecipe,
    ViewSpec,
    byol_recipe,
    default_local_size,
    multicrop_recipe,
    rescaled_recipe,
    simclr_recipe,
)
from selfsup.augment.sampling import sample_boxes
from selfsup.augment.views import make_views
from selfsup.errors import UserError

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _images(b: int = 8, h: int = 20, w: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=g)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rand01(b: int, h: int = 12, w: int = 14, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=_gen(seed))


# ----------------------------------------------------------------------------------------- make_views


def test_shapes_dtype_range_and_layout() -> None:
    imgs = _images()
    views, params = make_views(imgs, simclr_recipe(16, blur=True), _gen())
    assert len(views) == len(params) == 2
    for v, p in zip(views, params):
        assert v.shape == (8, 3, 16, 16) and v.dtype == torch.float32
        assert v.is_contiguous(memory_format=torch.channels_last)
        x01 = v * STD + MEAN
        assert x01.min() >= -1e-5 and x01.max() <= 1 + 1e-5  # un-normalised views stay in [0, 1]
        assert p.boxes.shape == (8, 4) and p.flip.shape == (8,) and p.flip.dtype == torch.bool
        top, left, h, w = p.boxes.unbind(-1)
        assert (
            (top >= 0).all()
            and (left >= 0).all()
            and (top + h <= 1 + 1e-6).all()
            and (left + w <= 1 + 1e-6).all()
        )
    views, _ = make_views(imgs, simclr_recipe(16), _gen(), channels_last=False)
    assert views[0].is_contiguous()
    views, _ = make_views(imgs, simclr_recipe(16), _gen(), dtype=torch.bfloat16)
    assert views[0].dtype == torch.bfloat16


def test_nchw_input_equals_nhwc_input() -> None:
    imgs = _images()
    a, _ = make_views(imgs, byol_recipe(16), _gen(3))
    b, _ = make_views(imgs.permute(0, 3, 1, 2).contiguous(), byol_recipe(16), _gen(3))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


def test_grayscale_single_channel_input_is_replicated() -> None:
    gray = _images(4, 16, 16)[..., :1]
    views, _ = make_views(gray, simclr_recipe(16, grayscale_input=True), _gen())
    x01 = views[0] * STD + MEAN
    torch.testing.assert_close(x01[:, 0], x01[:, 1], atol=1e-5, rtol=0)  # still gray after augmentation


def test_samples_are_independent() -> None:
    imgs = _images(1).expand(64, -1, -1, -1)  # 64 identical images
    views, params = make_views(imgs, simclr_recipe(16), _gen())
    boxes = params[0].boxes
    assert torch.unique(boxes, dim=0).shape[0] == 64
    flat = views[0].reshape(64, -1)
    assert torch.cdist(flat, flat).add(torch.eye(64) * 1e3).min() > 1e-3  # no two outputs are equal
    assert not torch.equal(params[0].boxes, params[1].boxes)  # the two views differ too


def test_crop_area_ratio_and_flip_statistics() -> None:
    n = 4000
    imgs = _images(n, 8, 8)
    spec = ViewSpec(size=4, scale=(0.2, 0.7), jitter_p=0.0, gray_p=0.0)
    _, params = make_views(imgs, ViewRecipe([spec]), _gen())
    top, left, h, w = params[0].boxes.unbind(-1)
    area = h * w
    # square source, this scale/ratio never needs the fallback: area exactly within `scale`
    assert area.min() >= 0.2 - 1e-6 and area.max() <= 0.7 + 1e-6
    ratio = w / h
    assert ratio.min() >= 3 / 4 - 1e-5 and ratio.max() <= 4 / 3 + 1e-5
    # flip rate 0.5: binomial sd = 0.008 at n = 4000; tolerance 0.04 (5 sd)
    assert abs(params[0].flip.float().mean().item() - 0.5) < 0.04
    # positions are uniform over the free range: mean of top / (1 - h) is 0.5 (sd 0.0046), tolerance 0.03
    assert abs((top / (1 - h)).mean().item() - 0.5) < 0.03
    assert abs((left / (1 - w)).mean().item() - 0.5) < 0.03


def test_box_distribution_matches_torchvision_get_params() -> None:
    # the default scale (0.08, 1) needs the 10-tries logic; compare mean area and the fallback rate
    n = 3000
    torch.manual_seed(0)
    img = torch.zeros(3, 224, 224)
    ref = [RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    ref_area = torch.tensor([h * w / 224**2 for _, _, h, w in ref])
    u = torch.rand(n, 4 * 10, generator=_gen())
    ours = sample_boxes(u, 224, 224, (0.08, 1.0), (3 / 4, 4 / 3))
    ours_area = ours[:, 2] * ours[:, 3]
    # mean area ~0.54, sd ~0.27; difference of two means of 3000: sd 0.007, tolerance 0.03
    assert abs(ours_area.mean().item() - ref_area.mean().item()) < 0.03
    assert abs(ours_area.std().item() - ref_area.std().item()) < 0.03


def test_fallback_is_torchvision_central_crop() -> None:
    # a 10:1 image: no candidate fits, every box is the central crop trimmed to ratio 4/3
    u = torch.rand(16, 40, generator=_gen())
    boxes = sample_boxes(u, 10, 100, (0.9, 1.0), (3 / 4, 4 / 3))
    expected = torch.tensor([0.0, (1 - 10 * 4 / 3 / 100) / 2, 1.0, 10 * 4 / 3 / 100])
    torch.testing.assert_close(boxes, expected.expand(16, 4), atol=1e-6, rtol=0)


def test_determinism() -> None:
    imgs = _images()
    rec = byol_recipe(16)
    a, pa = make_views(imgs, rec, _gen(7))
    b, pb = make_views(imgs, rec, _gen(7))
    c, _ = make_views(imgs, rec, _gen(8))
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y)
        assert not torch.equal(x, z)
    assert torch.equal(pa[0].boxes, pb[0].boxes)


def test_views_sharing_a_pass_equal_one_view_at_a_time() -> None:
    """make_views batches views of equal size/scale/strengths into one pass (probabilities may differ); the
    result must equal making each view alone, in the recipe's order, from the same generator stream."""
    imgs = _images(10, 16, 16)
    a = ViewSpec(size=12, blur_p=1.0, solarize_p=0.0, gray_p=0.5)
    small = ViewSpec(size=6, scale=(0.05, 0.4))
    b = replace(a, blur_p=0.1, solarize_p=0.4, hflip_p=0.0, jitter_p=0.3)
    rec = ViewRecipe([a, small, b])  # groups: {a, b} first (first appearance), then {small}
    views, params = make_views(imgs, rec, _gen(4))
    g = _gen(4)
    alone = {}
    for i in (0, 2, 1):  # the draw order of the groups
        (v,), (p,) = make_views(imgs, ViewRecipe([rec.views[i]]), g)
        alone[i] = (v, p)
    assert [v.shape[-1] for v in views] == [12, 6, 12]
    for i in range(3):
        torch.testing.assert_close(views[i], alone[i][0], atol=1e-6, rtol=0)
        assert torch.equal(params[i].boxes, alone[i][1].boxes) and torch.equal(params[i].flip, alone[i][1].flip)
    assert not params[2].flip.any()  # view b's own hflip_p = 0 applies to its rows only
    assert views[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("b,backend", [(12, "torch"), (40, "torch"), (40, "numba")])
def test_make_views_matches_per_sample_torchvision_reference(b: int, backend: str) -> None:
    """Re-draw the same uniforms and replay each sample through torchvision ops, in its jitter order.
    (b = 40 puts most of the 24 jitter orders in one batch: colour_jitter_ regroups samples per position.)"""
    size = 10
    imgs = _images(b, 16, 16)
    spec = ViewSpec(size=size, jitter_p=0.7, gray_p=0.3, blur_p=0.5, solarize_p=0.5)
    views, params = make_views(imgs, ViewRecipe([spec]), _gen(5), channels_last=False, backend=backend)
    u = torch.rand(b, V._N_COLS, generator=_gen(5))
    src = imgs.permute(0, 3, 1, 2).float() / 255
    crops = resized_crop(src, params[0].boxes, params[0].flip, size)  # checked against torchvision below
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    strengths = [spec.brightness, spec.contrast, spec.saturation]
    for i in range(b):
        x = crops[i]
        if u[i, V._C_JIT] < spec.jitter_p:
            f = u[i, V._C_FACT : V._C_FACT + 4]
            factors = [1 - s + 2 * s * f[k].item() for k, s in enumerate(strengths)]
            factors.append(-spec.hue + 2 * spec.hue * f[3].item())
            for k in torch.argsort(u[i, V._C_PERM : V._C_PERM + 4]).tolist():
                x = ops[k](x, factors[k])
        if u[i, V._C_GRAY] < spec.gray_p:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if u[i, V._C_BLUR] < spec.blur_p:
            sigma = 0.1 + 1.9 * u[i, V._C_SIGMA].item()
            x = TF.gaussian_blur(x, [3, 3], [sigma, sigma])
        if u[i, V._C_SOL] < spec.solarize_p:
            x = TF.solarize(x, 0.5)
        expected = (x - MEAN[0]) / STD[0]
        # tolerance 1e-4: float32 differences of the hue round trip, amplified by 1/std ~ 4.4
        torch.testing.assert_close(views[0][i], expected, atol=1e-4, rtol=0)


def _backends_agree(imgs: torch.Tensor, recipe: ViewRecipe, seed: int, **kw: object) -> None:
    ref, pr = make_views(imgs, recipe, _gen(seed), backend="torch", **kw)  # type: ignore[arg-type]
    got, pg = make_views(imgs, recipe, _gen(seed), backend="numba", **kw)  # type: ignore[arg-type]
    for a, b, qa, qb in zip(ref, got, pr, pg):
        assert b.dtype == a.dtype and b.shape == a.shape and b.stride() == a.stride()
        # fp32 rounding of the crop weights and the hue round trip, times 1 / std ~ 4.4 (bf16: one step, 2^-7)
        torch.testing.assert_close(b.float(), a.float(), atol=2e-5 if a.dtype == torch.float32 else 2e-2, rtol=0)
        assert torch.equal(qa.boxes, qb.boxes) and torch.equal(qa.flip, qb.flip)
    if kw.get("dtype") == torch.bfloat16:  # the kernel's own bf16 rounding is torch's (nearest even), bit for bit
        fp32, _ = make_views(imgs, recipe, _gen(seed), backend="numba", **{**kw, "dtype": torch.float32})  # type: ignore[arg-type]
        assert all(torch.equal(b, f.to(torch.bfloat16)) for b, f in zip(got, fp32))


@pytest.mark.parametrize("name", ["simclr", "byol", "multicrop", "strong"])
def test_numba_kernel_equals_torch_ops(name: str) -> None:
    """The fused CPU kernel (view_kernel) computes what the torch ops compute, on the same random draws:
    SimCLR's shared pass of two views, BYOL's asymmetric views with blur and solarize after the kernel,
    multi-crop (two groups of sizes), and the strongest jitter (hue 0.5, saturation factors on both sides
    of lerp's 0.5 switch, contrast 0.9, crops up to the whole non-square source so the border clip acts)."""
    imgs = _images(40, 20, 24, seed=1)
    strong = ViewSpec(size=12, scale=(0.5, 1.0), brightness=0.9, contrast=0.9, saturation=0.9, hue=0.5,
                        jitter_p=0.9, gray_p=0.3)
    recipe = {"simclr": simclr_recipe(16), "byol": byol_recipe(16),
              "multicrop": multicrop_recipe(simclr_recipe(16), n_local=3),
              "strong": ViewRecipe([strong, replace(strong, hflip_p=1.0)])}[name]
    _backends_agree(imgs, recipe, seed=3)


def test_numba_kernel_inputs_layouts_dtypes_and_threads() -> None:
    """NCHW, float and 1-channel inputs reach the kernel as [B, H, W, 3]; bf16 / NCHW outputs; the result
    does not depend on how many threads split the samples."""
    imgs = _images(36, 16, 16, seed=2)
    rec = simclr_recipe(12)
    _backends_agree(imgs.permute(0, 3, 1, 2).contiguous(), rec, seed=1)
    _backends_agree(imgs.float() / 255, rec, seed=1, channels_last=False)
    _backends_agree(imgs[..., :1], simclr_recipe(12, grayscale_input=True), seed=1)
    _backends_agree(imgs, rec, seed=1, dtype=torch.bfloat16)
    _backends_agree(imgs, rec, seed=1, dtype=torch.bfloat16, channels_last=False)
    frozen = imgs.numpy().copy()
    frozen.flags.writeable = False  # a read-only memmap's rows (the kernel copies them, not recompiles)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "The given NumPy array is not writable"
        _backends_agree(torch.from_numpy(frozen), rec, seed=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one, _ = make_views(imgs, rec, _gen(4), backend="numba")
        torch.set_num_threads(2)
        two, _ = make_views(imgs, rec, _gen(4), backend="numba")
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_numba_kernel_from_concurrent_threads() -> None:
    """Several Python threads making views at once (different batch sizes, so different thread shares) get
    what each gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    rec = multicrop_recipe(simclr_recipe(12), n_local=2)
    batches = [_images(n, 16, 16, seed=n) for n in (17, 40, 33, 64)]
    alone = [make_views(x, rec, _gen(i), backend="numba")[0] for i, x in enumerate(batches)]
    jobs = [i % len(batches) for i in range(3 * len(batches))]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)  # shares of 3 and 4 threads (n // 16) among these batch sizes
        with ThreadPoolExecutor(4) as ex:
            together = list(ex.map(lambda i: make_views(batches[i], rec, _gen(i), backend="numba")[0], jobs))
    finally:
        torch.set_num_threads(threads)
    for i, views in zip(jobs, together):
        assert all(torch.equal(a, b) for a, b in zip(views, alone[i]))


def test_view_kernel_pool_grows_without_breaking_its_users() -> None:
    from selfsup.augment import kernel as K

    small = K._executor(1)
    big = K._executor(3)
    assert small.submit(int, "1").result() == 1  # a caller still holding the replaced pool keeps working
    assert K._executor(2) is big and K._executor(3) is big  # no new pool for the same or fewer threads


def test_backend_choice_and_errors() -> None:
    imgs = _images(4, 8, 8)
    auto, _ = make_views(imgs, simclr_recipe(8), _gen(1))
    numba, _ = make_views(imgs, simclr_recipe(8), _gen(1), backend="numba")
    assert torch.equal(auto[0], numba[0])  # auto = the kernel on the CPU with exact colour
    with pytest.raises(UserError, match="backend must be one of"):
        make_views(imgs, simclr_recipe(8), _gen(), backend="fast")
    with pytest.raises(UserError, match="colour='exact' only"):
        make_views(imgs, simclr_recipe(8), _gen(), backend="numba", colour="linear")
    with pytest.raises(UserError, match="float32 or bfloat16 views"):
        make_views(imgs, simclr_recipe(8), _gen(), backend="numba", dtype=torch.float16)
    double, _ = make_views(imgs, simclr_recipe(8), _gen(1), dtype=torch.float64)  # auto: the torch ops
    torch.testing.assert_close(double[0], auto[0].double(), atol=2e-5, rtol=0)


# ----------------------------------------------------------------------------------------- single ops


def _interior(top: int, left: int, h: int, w: int, size: int) -> torch.Tensor:
    """Output pixels whose bilinear source point lies within the crop (no crop-border effects)."""
    c = (torch.arange(size) + 0.5) / size
    ys, xs = c * h - 0.5, c * w - 0.5
    my = (ys >= 0) & (ys <= h - 1)
    mx = (xs >= 0) & (xs <= w - 1)
    return my[:, None] & mx[None, :]


@pytest.mark.parametrize(
    "box,size",
    [((3, 5, 10, 14), 16), ((0, 0, 20, 24), 8), ((7, 2, 13, 9), 11), ((4, 4, 5, 5), 5)],
)
def test_resized_crop_and_flip_match_torchvision(box: tuple[int, int, int, int], size: int) -> None:
    img = _rand01(1, 20, 24)
    top, left, h, w = box
    frac = torch.tensor([[top / 20, left / 24, h / 20, w / 24]])
    ref = TF.resized_crop(img[0], top, left, h, w, [size, size], antialias=False)
    mask = _interior(top, left, h, w, size)
    assert mask.float().mean() > 0.3
    for flip in (False, True):
        ours = resized_crop(img, frac, torch.tensor([flip]), size)[0]
        expected = TF.horizontal_flip(ref) if flip else ref
        m = mask.flip(-1) if flip else mask
        # interior (source point inside the crop): identical maths, max abs error 1e-5
        torch.testing.assert_close(ours[:, m], expected[:, m], atol=1e-5, rtol=0)
        # crop border: we read the true neighbours instead of replicating the edge; mean abs error < 0.1
        assert (ours - expected).abs().mean() < 0.1
    assert torch.equal(hflip(img), TF.horizontal_flip(img))


def test_crop_theta_equals_affine_grid_path() -> None:
    img = _rand01(4, 9, 13)
    boxes = torch.tensor(
        [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.3, 0.1, 0.7, 0.4], [0.5, 0.5, 0.5, 0.5]]
    )
    flip = torch.tensor([False, True, True, False])
    grid = torch.nn.functional.affine_grid(crop_theta(boxes, flip), [4, 3, 7, 7], align_corners=False)
    ref = torch.nn.functional.grid_sample(img, grid, padding_mode="border", align_corners=False)
    torch.testing.assert_close(resized_crop(img, boxes, flip, 7), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "ours,theirs,factors",
    [
        (adjust_brightness, TF.adjust_brightness, [0.6, 1.0, 1.4, 0.0]),
        (adjust_contrast, TF.adjust_contrast, [0.6, 1.0, 1.4, 0.0]),
        (adjust_saturation, TF.adjust_saturation, [0.6, 1.0, 1.4, 0.0]),
        (adjust_hue, TF.adjust_hue, [-0.5, -0.1, 0.0, 0.37]),
    ],
)
def test_colour_ops_match_torchvision(ours, theirs, factors) -> None:  # type: ignore[no-untyped-def]
    x = _rand01(4)
    x[3, :, :3] = 0.5  # some gray pixels (zero chroma)
    x[2, 1, 3:5] = 1.0  # ties in the max channel
    x[2, 0, 3:5] = 1.0
    out = ours(x, torch.tensor(factors))
    for i, f in enumerate(factors):
        # max abs error 1e-5 (hue: 2e-5, float32 rounding of the HSV round trip)
        torch.testing.assert_close(out[i], theirs(x[i], f), atol=2e-5, rtol=0)


def _jitter_draws(b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """colour_jitter_ inputs: selected [b] (p 0.8), a random op order per sample, factors [4, b]."""
    selected = torch.rand(b, generator=g) < 0.8
    order = torch.argsort(torch.rand(b, 4, generator=g), dim=1)
    factors = torch.stack([0.6 + 0.8 * torch.rand(b, generator=g) for _ in range(3)] + [0.2 * torch.rand(b, generator=g) - 0.1])
    return selected, order, factors


def test_colour_jitter_matches_a_per_sample_loop_and_leaves_its_input_ops_pure() -> None:
    """colour_jitter_ regroups samples per position; the result must equal applying each sample's ops in its
    own order, skipping the inactive op and the unselected samples."""
    b = 48
    x = _rand01(b, 6, 7, seed=3)
    selected, order, factors = _jitter_draws(b, _gen(3))
    active = (True, True, False, True)
    assert len({tuple(o) for o in order[selected].tolist()}) >= 12  # many orders mixed in one batch
    ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    expected = x.clone()
    for i in range(b):
        if selected[i]:
            xi = x[i : i + 1]
            for op in order[i].tolist():
                if active[op]:
                    xi = ops[op](xi, factors[op, i : i + 1])
            expected[i] = xi[0]
    x_before = x.clone()
    for op in ops:  # the public ops do not modify their input
        op(x, factors[0])
    assert torch.equal(x, x_before)
    got = colour_jitter_(x.clone(), selected, order, factors, active)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert torch.equal(got[~selected], x[~selected])


# ----------------------------------------------------------------------------------------- linear colour mode

# NTSC YIQ (Y row: torchvision's luma weights), written out here rather than taken from views.py
_YIQ_REF = torch.tensor([[0.2989, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)


def _hue_rotate_ref(x: torch.Tensor, h: float) -> torch.Tensor:
    """Slow reference: pixel -> YIQ, rotate (I, Q) by 2 pi h, back to RGB. x [3, H, W] float64."""
    yiq = torch.einsum("ij,jhw->ihw", _YIQ_REF, x)
    c, s = math.cos(2 * math.pi * h), math.sin(2 * math.pi * h)
    i, q = yiq[1].clone(), yiq[2].clone()
    yiq[1], yiq[2] = c * i + s * q, -s * i + c * q  # clockwise: red -> green -> blue, like the HSV shift
    return torch.einsum("ij,jhw->ihw", torch.linalg.inv(_YIQ_REF), yiq)


def _gray_ref(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("j,jhw->hw", _YIQ_REF[0], x).expand_as(x)


def test_hue_rotation_is_a_rotation_about_the_gray_axis() -> None:
    h = torch.tensor([0.0, 1.0, -1.0, 0.25, 0.5, -0.3])
    t = hue_rotation(h).double()
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(t[:3], eye.expand(3, 3, 3), atol=1e-5, rtol=0)  # 0 and whole turns: identity
    torch.testing.assert_close(t[3] @ t[3], t[4], atol=1e-5, rtol=0)  # a quarter turn twice is a half turn
    torch.testing.assert_close(t[4] @ t[4], eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(t @ torch.ones(3, dtype=torch.float64), torch.ones(6, 3, dtype=torch.float64),
                               atol=1e-5, rtol=0)  # grays stay gray (r = g = b keeps its value)
    torch.testing.assert_close(_YIQ_REF[0] @ t, _YIQ_REF[0].expand(6, 3), atol=1e-5, rtol=0)  # luma kept
    red = torch.tensor([0.9, 0.1, 0.1])
    third = hue_rotation(torch.tensor([1 / 3, 2 / 3]))
    assert (third @ red).argmax(-1).tolist() == [1, 2]  # like torchvision's HSV shift: red -> green -> blue
    assert TF.adjust_hue(red.view(3, 1, 1), 1 / 3).flatten().argmax() == 1
    x = torch.rand(3, 4, 5, generator=_gen(1), dtype=torch.float64)
    got = torch.einsum("ij,jhw->ihw", t[5], x)
    torch.testing.assert_close(got, _hue_rotate_ref(x, -0.3), atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_linear_colour_matches_a_per_sample_loop(channels_last: bool) -> None:
    """colour_affine + apply_colour_affine == each sample's ops applied one after another without clamping
    (brightness, contrast with the current image's mean gray, saturation, YIQ hue), then grayscale, then one
    clamp. Factors up to 1.6 push pixels out of [0, 1], so the final clamp is exercised too."""
    b = 40
    x = _rand01(b, 6, 7, seed=5)
    g = _gen(5)
    selected = torch.rand(b, generator=g) < 0.8
    gray = torch.rand(b, generator=g) < 0.3
    order = torch.argsort(torch.rand(b, 4, generator=g), dim=1)
    factors = torch.stack([0.4 + 1.2 * torch.rand(b, generator=g) for _ in range(3)] + [torch.rand(b, generator=g) - 0.5])
    expected = torch.empty(b, 3, 6, 7, dtype=torch.float64)
    for i in range(b):
        xi = x[i].double()
        if selected[i]:
            for op in order[i].tolist():
                f = float(factors[op, i])
                if op == 0:
                    xi = f * xi
                elif op == 1:
                    xi = f * xi + (1 - f) * _gray_ref(xi).mean()
                elif op == 2:
                    xi = f * xi + (1 - f) * _gray_ref(xi)
                else:
                    xi = _hue_rotate_ref(xi, f)
        if gray[i]:
            xi = _gray_ref(xi)
        expected[i] = xi.clamp(0, 1)
    assert 0 < int((expected == 1).sum()) and 0 < int((expected == 0).sum())  # the clamp matters here
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    a, off = colour_affine(xin.mean(dim=(-2, -1)), selected, order, factors, gray)
    got = apply_colour_affine(xin, a, off)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=0)
    torch.testing.assert_close(got[~selected & ~gray], x[~selected & ~gray])  # untouched samples


def test_linear_colour_equals_exact_when_nothing_clamps_and_hue_is_off() -> None:
    """Without hue and without values leaving [0, 1], the two colour modes compute the same ops."""
    imgs = torch.randint(90, 160, (24, 12, 12, 3), dtype=torch.uint8, generator=_gen(2))
    spec = ViewSpec(size=8, brightness=0.1, contrast=0.1, saturation=0.1, hue=0.0, jitter_p=0.7, gray_p=0.3)
    recipe = ViewRecipe([spec, replace(spec)])
    exact, _ = make_views(imgs, recipe, _gen(7), channels_last=False)
    linear, _ = make_views(imgs, recipe, _gen(7), channels_last=False, colour="linear")
    for e, lin in zip(exact, linear):
        torch.testing.assert_close(lin, e, atol=2e-5, rtol=0)
    gray_only = ViewRecipe([replace(spec, jitter_p=0.0, gray_p=0.5)])  # the grayscale-only path
    exact, _ = make_views(imgs, gray_only, _gen(8), channels_last=False)
    linear, _ = make_views(imgs, gray_only, _gen(8), channels_last=False, colour="linear")
    torch.testing.assert_close(linear[0], exact[0], atol=2e-5, rtol=0)
    with pytest.raises(UserError, match="colour"):
        make_views(imgs, recipe, _gen(7), colour="fast")


@pytest.mark.slow
def test_compiled_colour_ops_match_eager() -> None:
    """--compile runs the colour ops through torch.compile (minutes of compilation on 2 cores: slow)."""
    g = _gen(4)
    for b in (37, 12):  # two slice sizes: dynamic shapes, no recompilation needed
        x = _rand01(b, 8, 9, seed=b)
        selected, order, factors = _jitter_draws(b, g)
        eager = colour_jitter_(x.clone(), selected, order, factors)
        compiled = colour_jitter_(x.clone(), selected, order, factors, compiled=True)
        torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)


def test_grayscale_matches_torchvision() -> None:
    x = _rand01(3)
    torch.testing.assert_close(rgb_to_grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        to_grayscale(x), TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("kernel_size", [3, 5, 9])
def test_gaussian_blur_matches_torchvision(kernel_size: int) -> None:
    x = _rand01(3, 12, 14)
    sigma = torch.tensor([0.1, 0.8, 2.0])
    out = gaussian_blur(x, sigma, kernel_size)
    for i, s in enumerate(sigma.tolist()):
        ref = TF.gaussian_blur(x[i], [kernel_size, kernel_size], [s, s])
        # separable vs 2-D kernel: same sums in another order; max abs error 1e-5
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)


def test_blur_kernel_size_is_simclr_ten_percent_odd() -> None:
    assert [blur_kernel_size(s) for s in (224, 96, 32, 8)] == [23, 9, 3, 3]


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_solarize_matches_torchvision(threshold: float) -> None:
    x = _rand01(2)
    x[0, 0, 0, :3] = torch.tensor([0.5, 0.3, 0.0])
    assert torch.equal(solarize(x, threshold), TF.solarize(x, threshold))  # exact


def test_normalize() -> None:
    x = _rand01(2)
    torch.testing.assert_close(normalize(x, IMAGENET_MEAN, IMAGENET_STD), (x - MEAN) / STD)


# ----------------------------------------------------------------------------------------- recipes


def test_simclr_recipe_strength_and_grayscale_input() -> None:
    r = simclr_recipe(32, strength=1.0, blur=True)
    a, b = r.views
    assert a == b
    assert (a.brightness, a.contrast, a.saturation, a.hue) == pytest.approx((0.8, 0.8, 0.8, 0.2))
    assert a.blur_p == 0.5 and a.jitter_p == 0.8 and a.gray_p == 0.2
    d = simclr_recipe(32).views[0]
    assert (d.brightness, d.hue, d.blur_p) == pytest.approx((0.4, 0.1, 0.0))
    g = simclr_recipe(28, grayscale_input=True).views[0]
    assert g.jitter_p == 0.0 and g.gray_p == 0.0 and g.hflip_p == 0.5


def test_byol_recipe_is_asymmetric() -> None:
    v1, v2 = byol_recipe(32).views
    assert v1 != v2
    assert (v1.blur_p, v2.blur_p, v1.solarize_p, v2.solarize_p) == (1.0, 0.1, 0.0, 0.2)
    assert (v1.brightness, v1.contrast, v1.saturation, v1.hue) == (0.4, 0.4, 0.2, 0.1)
    v1, v2 = byol_recipe(32, blur=False, grayscale_input=True).views
    assert v1.blur_p == v2.blur_p == 0.0 and v1.jitter_p == 0.0 and v2.solarize_p == 0.2


def test_multicrop_recipe() -> None:
    base = byol_recipe(32)
    r = multicrop_recipe(base, n_global=2, n_local=6)
    assert len(r.views) == 8
    assert [v.size for v in r.views] == [32, 32] + [default_local_size(32)] * 6
    assert default_local_size(32) == 12 and default_local_size(224) == 96
    assert r.views[0].solarize_p == 0.0 and r.views[1].solarize_p == 0.2  # asymmetry kept
    assert all(v.scale == (0.4, 1.0) for v in r.views[:2]) and all(
        v.scale == (0.05, 0.4) for v in r.views[2:]
    )
    r = multicrop_recipe(simclr_recipe(16), n_global=2, n_local=3, local_size=6)
    views, params = make_views(_images(4), r, _gen())
    assert [tuple(v.shape) for v in views] == [(4, 3, 16, 16)] * 2 + [(4, 3, 6, 6)] * 3
    area = torch.cat([p.boxes[:, 2] * p.boxes[:, 3] for p in params[2:]])
    assert area.max() <= 0.4 + 1e-6


# ----------------------------------------------------------------------------------------- eval


def test_eval_transform_matches_torchvision_resize() -> None:
    imgs = _images(3, 40, 30)  # h 40, w 30: Resize(16) (shorter side) + CenterCrop(16), torchvision's protocol
    out = eval_transform(imgs, 16)
    assert out.shape == (3, 3, 16, 16) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, eval_transform(imgs, 16))  # deterministic
    x = imgs.permute(0, 3, 1, 2).float() / 255
    ref = TF.normalize(TF.center_crop(TF.resize(x, 16, antialias=True), [16, 16]), list(IMAGENET_MEAN),
                       list(IMAGENET_STD))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)  # same float maths: max abs error 1e-5
    # crop_fraction 0.875: Resize(round(16 / 0.875) = 18) + CenterCrop(16)
    out2 = eval_transform(imgs, 16, crop_fraction=0.875)
    ref2 = TF.normalize(TF.center_crop(TF.resize(x, 18, antialias=True), [16, 16]), list(IMAGENET_MEAN),
                        list(IMAGENET_STD))
    torch.testing.assert_close(out2, ref2, atol=1e-5, rtol=0)
    # torchvision's uint8 path rounds to uint8: within 1/255 (+ rounding) before normalising
    ref8 = TF.center_crop(TF.resize(imgs.permute(0, 3, 1, 2), 16, antialias=True), [16, 16]).float() / 255
    assert ((out * STD + MEAN) - ref8).abs().max() <= 1 / 255 + 1e-5
    same = eval_transform(imgs[:, :16, :16], 16, channels_last=False)  # no resize needed
    torch.testing.assert_close(same, (x[:, :, :16, :16] - MEAN) / STD)


# ----------------------------------------------------------------------------------------- errors / devices


def test_bad_inputs_raise_user_errors() -> None:
    with pytest.raises(UserError, match="images"):
        make_views(torch.zeros(4, 8, 8, dtype=torch.uint8), simclr_recipe(8), _gen())
    with pytest.raises(UserError, match="channels"):
        make_views(torch.zeros(4, 8, 8, 5, dtype=torch.uint8), simclr_recipe(8), _gen())
    with pytest.raises(UserError, match="uint8"):
        make_views(torch.zeros(4, 8, 8, 3, dtype=torch.int32), simclr_recipe(8), _gen())
    with pytest.raises(UserError, match="scale"):
        ViewSpec(size=8, scale=(0.5, 0.1))
    with pytest.raises(UserError, match="gray_p"):
        replace(ViewSpec(size=8), gray_p=1.5)
    with pytest.raises(UserError, match="at least one view"):
        ViewRecipe([])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    imgs = _images(16, 24, 24)
    rec = multicrop_recipe(byol_recipe(16), n_local=2)
    cpu, pc = make_views(imgs, rec, _gen(1))
    gpu, pg = make_views(imgs.cuda(), rec, _gen(1))
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=0)  # different kernels, same maths
    assert torch.equal(pc[0].boxes, pg[0].boxes.cpu())
    ev = eval_transform(imgs.cuda(), 12)
    torch.testing.assert_close(ev.cpu(), eval_transform(imgs, 12), atol=1e-4, rtol=0)
    assert math.isfinite(float(ev.sum()))


def test_rescaled_recipe_scales_only_the_sides():
    base = multicrop_recipe(simclr_recipe(32), n_global=2, n_local=2)  # 32, 32, 12, 12
    low = rescaled_recipe(base, 24, 32)
    assert [v.size for v in low.views] == [24, 24, 9, 9]
    assert [replace(v, size=1) for v in low.views] == [replace(v, size=1) for v in base.views]
    assert (low.mean, low.std) == (base.mean, base.std)
    assert [v.size for v in rescaled_recipe(base, 8, 32).views] == [8, 8, 4, 4]  # at least 4 px
    with pytest.raises(UserError, match="rescaled_recipe"):
        rescaled_recipe(base, 40, 32)
