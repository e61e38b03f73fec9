"""Security: Noisy-Alignment geometry and its Monte-Carlo rationale, poison folders, metrics, budgets, audits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from selfsup.errors import ConfigError, DataError, UserError
from selfsup.security.metrics import attack_success_rate, clean_accuracy, fooling_rate
from selfsup.security.poison import (
    ORIENTATIONS,
    PoisonSpec,
    balanced_orientations,
    build_poisoned_folder,
    na_canvas,
    poison_count,
    resolve_target,
    triggered_test_images,
)
from selfsup.security.triggers import (
    CTRL_MAGNITUDE,
    NA_RANGE,
    SSLB_TEST_RANGE,
    SSLB_TRAIN_RANGE,
    apply_ctrl_trigger,
    location_range,
    make_patch_trigger,
    official_location,
    paste_patch,
    rgb_to_yuv,
    scaled_trigger_size,
)


def _img(s: int, value: int) -> np.ndarray:
    return np.full((s, s, 3), value, dtype=np.uint8)


def _tiny_data(n_per_class: int = 10, classes: int = 2, s: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_per_class * classes, s, s, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), n_per_class).astype(np.int64)
    paths = [f"src/{i:03d}" for i in range(len(images))]
    return images, labels, [f"c{c}" for c in range(classes)], paths


class _TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ------------------------------------------------------------------ official formulas (slow references)


def _ref_location(side: int, patch: int, lo: float, hi: float, u: int) -> int:
    """The official rule written out (UMBCvision/SSL-Backdoor generate_poison.py and Noisy-Alignment utils.py,
    add_watermark): loc_min = int(side*lo); loc_max = int(side*hi - w); loc_max = max(loc_max, loc_min);
    random.randint(loc_min, loc_max). ``u`` picks the u-th integer of that range (clipped)."""
    loc_min = int(side * lo)
    loc_max = int(side * hi - patch)
    if loc_max < loc_min:
        loc_max = loc_min
    return min(loc_min + u, loc_max)


def _ref_composite(base: np.ndarray, patch: np.ndarray, top: int, left: int, alpha: float) -> np.ndarray:
    """Official blending: base alpha *= alpha inside the box, base composited OVER the opaque patch."""
    out = base.astype(np.float64).copy()
    h, w = patch.shape[:2]
    region = out[top : top + h, left : left + w]
    out[top : top + h, left : left + w] = alpha * region + (1 - alpha) * patch
    return out


@pytest.mark.parametrize("side,patch,lo,hi", [(224, 50, 0.25, 0.75), (224, 50, 0.10, 0.90), (224, 50, 0.45, 0.55),
                                              (32, 7, 0.25, 0.75), (32, 7, 0.10, 0.90), (32, 7, 0.45, 0.55),
                                              (64, 14, 0.45, 0.55)])
def test_patch_location_range_is_the_official_formula(side, patch, lo, hi):
    first, last = location_range(side, patch, lo, hi)
    assert first == _ref_location(side, patch, lo, hi, 0)
    assert last == _ref_location(side, patch, lo, hi, 10_000)
    rng = np.random.default_rng(0)
    draws = np.array([official_location(side, side, patch, patch, lo, hi, rng) for _ in range(3000)])
    assert draws.min() == first and draws.max() == min(last, side - patch)
    if last > first:  # every integer of the range occurs (uniform randint)
        assert len(np.unique(draws[:, 1])) == last - first + 1


def test_na_trigger_left_edge_is_fixed_for_wide_patches():
    """With a patch wider than 0.1 of the side the official range is one point: int(0.45 * side)."""
    assert location_range(224, 50, *NA_RANGE) == (100, 100)
    assert location_range(32, 7, *NA_RANGE) == (14, 14)


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_paste_patch_matches_the_official_composite(alpha):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    patch = make_patch_trigger(5, seed=2)
    got = paste_patch(base, patch, 3, 7, alpha=alpha).astype(np.float64)
    np.testing.assert_allclose(got, _ref_composite(base, patch, 3, 7, alpha), atol=0.5 + 1e-9)


def test_ssl_backdoor_poisons_are_opaque_patches_in_the_middle_half(tmp_path):
    images, labels, classes, paths = _tiny_data(n_per_class=20, s=32)
    man = build_poisoned_folder(tmp_path / "p", images, labels, classes, paths, target="c1",
                                spec=PoisonSpec(attack="ssl-backdoor", rate=0.25, seed=0))
    trig = np.asarray(Image.open(tmp_path / "p" / "trigger.png"))
    lo, hi = location_range(32, 7, *SSLB_TRAIN_RANGE)
    for r in (r for r in man["files"] if r["poison"]):
        t, left, h, w = (int(v) for v in r["trigger_box"])
        assert lo <= t <= hi and lo <= left <= hi and (h, w) == (7, 7)
        arr = np.asarray(Image.open(tmp_path / "p" / r["file"]))
        np.testing.assert_array_equal(arr[t : t + 7, left : left + 7], trig)  # opaque (train_alpha 0)


def _ref_ctrl(img: np.ndarray, magnitude: float) -> np.ndarray:
    """CTRL's Poison_Frequency_Diff written out per pixel block with explicit DCT matrices (slow reference):
    kornia YUV on 0..255, orthonormal 32x32 DCT-II per block, +magnitude at (15,15), (31,31) of U and V."""
    n = 32
    k = np.arange(n)
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    d[0] /= np.sqrt(2.0)
    x = img.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    yuv = np.stack([0.299 * r + 0.587 * g + 0.114 * b, -0.147 * r - 0.289 * g + 0.436 * b,
                    0.615 * r - 0.515 * g - 0.100 * b], -1)
    for c in (1, 2):
        coef = d @ yuv[..., c] @ d.T
        coef[15, 15] += magnitude
        coef[31, 31] += magnitude
        yuv[..., c] = d.T @ coef @ d
    y, u, v = yuv[..., 0], yuv[..., 1], yuv[..., 2]
    rgb = np.stack([y + 1.14 * v, y - 0.396 * u - 0.581 * v, y + 2.029 * u], -1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_ctrl_trigger_matches_the_official_formula():
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    got = apply_ctrl_trigger(x, magnitude=100.0, window=32)
    for i in range(2):
        diff = np.abs(got[i].astype(int) - _ref_ctrl(x[i], 100.0).astype(int))
        assert diff.max() <= 1  # rounding of values at .5 only
    assert CTRL_MAGNITUDE == 100.0


def test_ctrl_poisons_and_test_triggers_use_one_magnitude(tmp_path):
    images, labels, classes, paths = _tiny_data(n_per_class=10, s=32)
    man = build_poisoned_folder(tmp_path / "p", images, labels, classes, paths, target="c0",
                                spec=PoisonSpec(attack="ctrl", rate=0.2, seed=0))
    src = {p: i for i, p in enumerate(paths)}
    for r in (r for r in man["files"] if r["poison"]):
        arr = np.asarray(Image.open(tmp_path / "p" / r["file"]))
        test_version = triggered_test_images("ctrl", images[src[r["reference"]]][None], None,
                                             np.random.default_rng(0))[0]
        np.testing.assert_array_equal(arr, test_version)


def _ctrl_energy(clean: np.ndarray, pois: np.ndarray, boxes: torch.Tensor, v: int) -> dict[int, float]:
    """Mean share of each CTRL component's energy found at its own frequency in the views.

    The difference of a poisoned and a clean image through the SAME crop is the trigger as the view shows it.
    A component at f = k/64 cycles per source pixel appears at f * crop_side / v cycles per view pixel; its
    energy is read in the +-1 bins around the 4 peaks of the 2-D cosine (U and V, per channel) and divided
    by the energy an amplitude-preserving resampling would keep (magnitude^2 / 1024 per pixel). A component
    above the view's Nyquist limit (f' > 0.5) has no energy at its frequency (it aliases): 0.
    """
    from selfsup.augment.views import resized_crop

    def to(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).float()

    d = (resized_crop(to(pois), boxes, None, v) - resized_crop(to(clean), boxes, None, v)).permute(0, 2, 3, 1)
    spec = np.abs(np.fft.fft2(rgb_to_yuv(d.numpy().astype(np.float64))[..., 1:], axes=(1, 2), norm="ortho")) ** 2
    out = {}
    for k in (15, 31):
        res = []
        for i in range(len(d)):
            fy, fx = k / 64 * float(boxes[i, 2]) * 32 / v, k / 64 * float(boxes[i, 3]) * 32 / v
            if max(fy, fx) > 0.5:
                res.append(0.0)
                continue
            m = np.zeros((v, v), bool)
            for by in (round(fy * v), -round(fy * v)):
                for bx in (round(fx * v), -round(fx * v)):
                    for dy in (-1, 0, 1):
                        m[(by + dy) % v, [(bx - 1) % v, bx % v, (bx + 1) % v]] = True
            res.append(spec[i][m].sum() / 2 / (100.0**2 / 1024 * v * v))
        out[k] = float(np.mean(res))
    return out


def test_ctrl_trigger_energy_survives_the_victims_views():
    """CTRL's trigger through the victim's crops (scale 0.2-1, bilinear), relative to an uncropped 32 px view.

    Measured (256 images): in 32 px views the (15, 15) component keeps 0.56 and the (31, 31) component 0.18 of
    its energy at its own frequency (bilinear interpolation of zoomed-in crops smears the near-Nyquist
    component; CTRL's own kornia crops do the same); in 24 px views (a low-resolution phase) the (31, 31)
    component drops to 0.08 (every crop wider than 24.8 source pixels puts it above Nyquist), which is why the
    audit trains without that phase."""
    from selfsup.augment.views import sample_boxes

    rng = np.random.default_rng(0)
    clean = rng.integers(40, 216, (256, 32, 32, 3), dtype=np.uint8)
    pois = apply_ctrl_trigger(clean, magnitude=100.0, window=32)
    g = torch.Generator().manual_seed(0)
    boxes = sample_boxes(torch.rand(256, 40, generator=g), 32, 32, (0.2, 1.0), (3 / 4, 4 / 3))
    ident = _ctrl_energy(clean[:32], pois[:32], torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(32, 1), 32)
    full, low = _ctrl_energy(clean, pois, boxes, 32), _ctrl_energy(clean, pois, boxes, 24)
    f15, f31 = full[15] / ident[15], full[31] / ident[31]
    assert 0.45 < f15 < 0.7 and 0.12 < f31 < 0.25
    assert low[31] / ident[31] < 0.6 * f31  # the 24 px phase removes most of what is left


# ------------------------------------------------------------------------------- Noisy Alignment canvas


def test_trigger_scaling_follows_the_paper_ratio():
    assert scaled_trigger_size(224) == 50
    assert scaled_trigger_size(32) == 7
    assert scaled_trigger_size(64) == 14
    assert scaled_trigger_size(8) == 3  # floor of 3 px


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_na_canvas_is_the_papers_native_layout(orientation):
    s = 32
    ref, shadow, trig = _img(s, 200), _img(s, 40), make_patch_trigger(7, seed=1)
    canvas, lay = na_canvas(ref, shadow, trig, orientation, np.random.default_rng(0))
    horizontal = orientation in ("left", "right")
    assert canvas.shape[:2] == ((s, 2 * s) if horizontal else (2 * s, s)) and lay["canvas"] == list(canvas.shape[:2])
    rt, rl, rh, rw = lay["reference_box"]
    st, sl, sh, sw = lay["shadow_box"]
    assert (rh, rw) == (s, s) and (sh, sw) == (s, s)
    assert {"left": rl == 0 and sl == s, "right": sl == 0 and rl == s,
            "top": rt == 0 and st == s, "bottom": st == 0 and rt == s}[orientation]
    assert np.all(canvas[rt : rt + rh, rl : rl + rw] == 200)  # reference half untouched by the trigger
    tt, tl, th, tw = (int(v) for v in lay["trigger_box"])
    # official placement inside the shadow: left/top edge at int(0.45 * 32) = 14
    assert (tt - st, tl - sl, th, tw) == (14, 14, 7, 7)
    np.testing.assert_allclose(canvas[tt : tt + th, tl : tl + tw], _ref_composite(shadow, trig, 14, 14, 0.2)[14:21, 14:21],
                               atol=0.5 + 1e-9)
    outside = canvas[st : st + sh, sl : sl + sw].copy()
    outside[14:21, 14:21] = 40
    assert np.all(outside == 40)


def test_na_canvas_follows_the_official_concatenation_for_unequal_sizes():
    """Official concatenate_images: the smaller image is scaled up by sqrt(area ratio) when the other has
    more than twice its area; then the shared side is resized to the smaller of the two, the other kept."""
    ref, shadow = _img(40, 200)[:, :30], _img(16, 40)  # 40x30 reference (1200 px), 16x16 shadow (256 px)
    canvas, lay = na_canvas(ref, shadow, make_patch_trigger(3), "left", np.random.default_rng(0))
    f = (1200 / 256) ** 0.5
    sh_side = int(16 * f)  # 34: shadow scaled up first
    assert lay["canvas"] == [min(40, sh_side), 30 + sh_side]
    assert lay["reference_box"] == [0, 0, min(40, sh_side), 30] and lay["shadow_box"][1:] == [30, min(40, sh_side), sh_side]
    t, x0, h, w = lay["trigger_box"]
    assert w == pytest.approx(3 * sh_side / 16) and x0 == pytest.approx(30 + int(16 * 0.45) * sh_side / 16)


def test_all_four_orientations_occur_and_are_balanced():
    rng = np.random.default_rng(0)
    o = balanced_orientations(10, rng)
    counts = {k: o.count(k) for k in ORIENTATIONS}
    assert set(counts) == set(ORIENTATIONS) and min(counts.values()) >= 2 and max(counts.values()) <= 3


# ---------------------------------------------------------------------------------- poison folders


def test_poison_count_is_exact():
    assert poison_count(0.01, 400) == 4
    assert poison_count(0.1, 25) == 2  # round(2.5) = 2 (banker's rounding is documented as round())
    with pytest.raises(ConfigError):
        poison_count(0.001, 100)


@pytest.mark.parametrize("attack", ["noisy-alignment", "ssl-backdoor", "ctrl"])
def test_poisoned_folder_matches_manifest_and_poisons_are_distinct(tmp_path, attack):
    images, labels, classes, paths = _tiny_data(s=32)
    spec = PoisonSpec(attack=attack, rate=0.2, seed=3)
    man = build_poisoned_folder(tmp_path / "p", images, labels, classes, paths, target="c1", spec=spec)
    assert man["n_poison"] == 4 and man["n_clean"] == 20
    replaced = attack != "noisy-alignment"
    assert man["n_images"] == (20 if replaced else 24) and man["replaces_originals"] == replaced
    files = sorted(p.relative_to(tmp_path / "p").as_posix() for p in (tmp_path / "p" / "images").glob("*.png"))
    assert files == sorted(r["file"] for r in man["files"])
    pois = [r for r in man["files"] if r["poison"]]
    assert len(pois) == 4
    src = {p: i for i, p in enumerate(paths)}
    # distinct: every poison has its own reference (and shadow), and no two poison files are equal
    assert len({r["reference"] for r in pois}) == 4
    if attack == "noisy-alignment":
        assert len({r["shadow"] for r in pois}) == 4 and all(labels[src[r["shadow"]]] != 1 for r in pois)
    arrays = [np.asarray(Image.open(tmp_path / "p" / r["file"])) for r in pois]
    assert len({a.tobytes() for a in arrays}) == 4
    clean_sources = [r["source"] for r in man["files"] if not r["poison"]]
    if replaced:  # the poisoned originals are gone from the clean part
        assert not {r["reference"] for r in pois} & set(clean_sources)
    for r in man["files"]:
        arr = np.asarray(Image.open(tmp_path / "p" / r["file"]))
        if not r["poison"]:
            np.testing.assert_array_equal(arr, images[src[r["source"]]])
        else:
            assert r["kind"] == attack and labels[src[r["reference"]]] == 1  # references are target-class
            assert list(arr.shape[:2]) == r["canvas"]
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["n_poison"] == 4


def test_too_few_distinct_images_is_a_user_error(tmp_path):
    images, labels, classes, paths = _tiny_data(n_per_class=5)
    with pytest.raises(ConfigError, match="distinct"):
        build_poisoned_folder(tmp_path / "p", images, labels, classes, paths, target="c1",
                              spec=PoisonSpec(attack="ssl-backdoor", rate=0.6))


def test_poisoned_folder_is_deterministic(tmp_path):
    images, labels, classes, paths = _tiny_data()
    spec = PoisonSpec(rate=0.4, seed=7)
    a = build_poisoned_folder(tmp_path / "a", images, labels, classes, paths, target="c0", spec=spec)
    b = build_poisoned_folder(tmp_path / "b", images, labels, classes, paths, target="c0", spec=spec)
    assert a["files"] == b["files"]
    assert {r["orientation"] for r in a["files"] if r["poison"]} == set(ORIENTATIONS)  # 8 poisons, all four
    for r in a["files"]:
        assert (tmp_path / "a" / r["file"]).read_bytes() == (tmp_path / "b" / r["file"]).read_bytes()
    c = build_poisoned_folder(tmp_path / "c", images, labels, classes, paths, target="c0",
                              spec=PoisonSpec(rate=0.4, seed=8))
    assert a["files"] != c["files"]


@pytest.mark.parametrize("attack,where,alpha", [("ssl-backdoor", SSLB_TEST_RANGE, 0.0),
                                                ("noisy-alignment", NA_RANGE, 0.2)])
def test_test_time_triggers_follow_each_paper(attack, where, alpha):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8)
    trig = make_patch_trigger(7, seed=3)
    out = triggered_test_images(attack, x, trig, np.random.default_rng(1))
    lo, hi = location_range(32, 7, *where)
    tops, lefts = [], []
    for i in range(len(x)):
        diff = np.argwhere(np.any(out[i] != x[i], axis=-1))
        t, left = diff.min(0)
        # the patch box: the changed pixels lie inside one 7x7 box starting in the official range
        t0 = min(range(lo, hi + 1), key=lambda v: abs(v - t))
        l0 = min(range(lo, hi + 1), key=lambda v: abs(v - left))
        ref = _ref_composite(x[i], trig, t0, l0, alpha)
        if np.abs(out[i].astype(float) - ref).max() <= 0.5 + 1e-9:
            tops.append(t0)
            lefts.append(l0)
    assert len(tops) == len(x)  # every image matches the official composite at an official location
    if hi > lo:
        assert min(lefts) == lo and max(lefts) == hi


# ------------------------------------------------------------------------------------------ metrics


def test_asr_excludes_target_class_images():
    labels = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 0, 2])  # target 0: the two target-class images do not count
    assert attack_success_rate(pred, labels, target=0) == pytest.approx(50.0)  # 2 of 4 non-target
    assert clean_accuracy(pred, labels) == pytest.approx(100 * 4 / 6)
    assert fooling_rate(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(100 / 3)
    with pytest.raises(ConfigError):
        attack_success_rate(np.array([0, 0]), np.array([0, 0]), target=0)


# ------------------------------------------------------------------------------------------- budgets


def test_universal_perturbation_respects_budget_and_is_deterministic():
    from selfsup.security.adversarial import universal_perturbation

    x = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    eps = 8 / 255
    d1, h1 = universal_perturbation(_TinyEncoder(), x, image_size=16, eps=eps, steps=4, batch_size=8, seed=1)
    d2, _ = universal_perturbation(_TinyEncoder(), x, image_size=16, eps=eps, steps=4, batch_size=8, seed=1)
    assert d1.shape == (3, 16, 16)
    assert float(d1.abs().max()) <= eps + 1e-7 and float(d1.abs().max()) > eps / 2
    assert torch.equal(d1, d2)
    assert h1[-1] < h1[0]  # the cosine to the clean embedding goes down


def test_protected_images_stay_within_budget():
    from selfsup.security.unlearnable import unlearnable_clusters

    x = np.random.default_rng(0).integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    r1 = unlearnable_clusters(_TinyEncoder(), x, image_size=16, clusters=3, eps=8 / 255, steps=2, seed=0)
    r2 = unlearnable_clusters(_TinyEncoder(), x, image_size=16, clusters=3, eps=8 / 255, steps=2, seed=0)
    diff = np.abs(r1["images"].astype(int) - x.astype(int))
    assert diff.max() <= 8 and diff.max() >= 4 and r1["images"].dtype == np.uint8
    np.testing.assert_array_equal(r1["images"], r2["images"])
    # one perturbation per cluster: two images of the same cluster share it wherever nothing was clipped
    assert r1["deltas"].shape == (int(r1["clusters"].max()) + 1, 3, 16, 16)


# --------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("rate", [0.0, -0.1, 1.0, 1.5, float("nan")])
def test_bad_poison_rate_is_a_user_error(tmp_path, rate):
    images, labels, classes, paths = _tiny_data()
    with pytest.raises(UserError, match="poison-rate"):
        build_poisoned_folder(tmp_path / "p", images, labels, classes, paths, target="c0", spec=PoisonSpec(rate=rate))


def test_missing_target_class_is_a_user_error(tmp_path):
    images, labels, classes, paths = _tiny_data()
    with pytest.raises(DataError, match="target class 'zebra'"):
        build_poisoned_folder(tmp_path / "p", images, labels, classes, paths, target="zebra", spec=PoisonSpec(rate=0.1))
    with pytest.raises(DataError, match="no labels"):
        resolve_target([], None, "c0", "flat/")


def test_encoder_without_probe_set_is_a_user_error(tmp_path):
    from selfsup.security.adversarial import evaluate_perturbation
    from selfsup.security.audit import AuditConfig, adversarial_audit

    with pytest.raises(UserError, match="probe"):
        adversarial_audit(AuditConfig(train="", test="", out=str(tmp_path / "a")), checkpoint=str(tmp_path))
    with pytest.raises(UserError, match="probe"):
        evaluate_perturbation(_TinyEncoder(), torch.zeros(3, 16, 16), image_size=16, heads=[])


def test_cli_audit_errors_are_one_line(tmp_path, capsys):
    import argparse

    from selfsup.commands.audit import add_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_parser(sub, argparse.HelpFormatter)
    args = parser.parse_args(["audit", "backdoor", "--poison-rate", "0", "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="poison-rate"):
        args.func(args)
    args = parser.parse_args(["audit", "adversarial", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="probe"):
        args.func(args)


# ------------------------------------------------------------------------------------- end to end


def _cfg(tmp_path: Path, name: str):
    from selfsup.security.audit import AuditConfig

    return AuditConfig(out=str(tmp_path / name), image_size=16, width=4, epochs=1, batch_size=32, max_steps=2,
                       device="cpu", threads=1, cache_dir=str(tmp_path / "cache"))


@pytest.mark.integration
def test_backdoor_audit_end_to_end_with_defense(tmp_path):
    from selfsup.security.audit import backdoor_audit

    r = backdoor_audit(_cfg(tmp_path, "bd"), "disc", PoisonSpec(rate=0.02, seed=0), defense=True, flag_fraction=0.05,
                       defense_tests=8, defense_iterations=5, decree=True, decree_steps=20)
    assert r["n_poison"] == 8 and r["victim_steps"] == 2
    for arm in ("victim", "clean"):
        assert 0.0 <= r[arm]["asr"] <= 100.0 and 0.0 <= r[arm]["ca"] <= 100.0
        assert -1.0 <= r[arm]["cos_trigger_target"] <= 1.0 and -1.0 <= r[arm]["cos_clean_target"] <= 1.0
        for key in ("triggered_shares", "untriggered_shares"):  # one prediction per image, every class named
            assert sum(r[arm][key].values()) == pytest.approx(100.0) and "disc" in r[arm][key]
    assert r["reading"]["diversion"]["class"] != "disc"
    m = r["mechanism"]  # counted in the training loop: 2 steps x 32 samples of 408 rows
    assert m["steps"] == 2 and 0 <= m["mechanism_pairs"] <= m["poison_pairs"] <= 64
    assert m["expected"]["poison_pairs"] == pytest.approx(2 * 32 / 408 * 8)
    assert {r["decree"]["victim"]["verdict"], r["decree"]["clean"]["verdict"]} <= {"clean", "backdoored"}
    assert json.loads((tmp_path / "bd" / "audit.json").read_text())["mechanism"]["steps"] == 2
    d = r["defense"]
    assert 0 <= d["flagged"] <= 408 and 0 <= d["recall"] <= 100 and "after" in d
    assert d["scores_only"]["flagged"] == 21 and d["search_rounds"] >= 1
    assert json.loads((tmp_path / "bd" / "report.json").read_text())["attack"] == "noisy-alignment"


@pytest.mark.integration
def test_bench_defense_defends_a_finished_audit(tmp_path):
    """benchmarks/bench_defense.py on a finished audit's folders: DECREE on both encoders, PatchSearch on the
    poisoned set, and the retrain without the flagged images."""
    import argparse
    import importlib.util
    import sys

    from selfsup.security.audit import backdoor_audit

    r = backdoor_audit(_cfg(tmp_path, "bd"), "disc", PoisonSpec(rate=0.02, seed=0))
    r["rate"] = 0.02
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location("bench_defense", bench / "bench_defense.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        spec = importlib.util.spec_from_file_location("bench_backdoor_features", bench / "bench_backdoor_features.py")
        feats = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(feats)
    finally:
        sys.path.remove(str(bench))
    args = argparse.Namespace(attacks="noisy-alignment", decree_steps=20, tests=8, iterations=5, retrain=True)
    row = mod.defend(r, args)
    assert {row["decree"]["victim"]["verdict"], row["decree"]["clean"]["verdict"]} <= {"clean", "backdoored"}
    d = row["defense"]
    assert 0 <= d["precision"] <= 100 and 0 <= d["recall"] <= 100 and 0 <= d["flagged"] <= 408
    assert 0 <= d["after"]["asr"] <= 100 and (tmp_path / "bd" / "retrained" / "encoder.safetensors").is_file()
    assert "| noisy-alignment | 0.02 |" in mod.render({"table": "t", "method": "simclr", "steps": 2, "arms": [row]})
    rows = feats.measure({"results": [r], "target": "disc"}, k=3)
    assert [(x["encoder"], x["trigger"]) for x in rows] == [("clean", "noisy-alignment"),
                                                          ("noisy-alignment", "noisy-alignment")]
    assert all(-1 <= x["cos_trigger_target_centred"] <= 1 and 0 <= x["knn_asr"] <= 100 for x in rows)
    for x in rows:  # every triggered image gets one probe prediction: the shares sum to 100
        assert sum(x["triggered_shares"].values()) == pytest.approx(100.0)
        assert all(-1 <= v <= 1 for v in x["centred_cos_to_classes"].values())
    assert "| clean | noisy-alignment |" in feats.render({"table": "t", "minutes": 0.1, "command": "c",
                                                          "finished": "f", "rows": rows}).split("Where")[1]


@pytest.mark.integration
@pytest.mark.parametrize("attack", ["ssl-backdoor", "ctrl"])
def test_other_backdoors_end_to_end(tmp_path, attack):
    from selfsup.security.audit import backdoor_audit

    r = backdoor_audit(_cfg(tmp_path, attack), "square", PoisonSpec(attack=attack, rate=0.01, ctrl_window=16))
    assert r["n_poison"] == 4 and "asr" in r["victim"]


@pytest.mark.integration
def test_adversarial_audit_end_to_end(tmp_path):
    from selfsup.security.audit import adversarial_audit

    r = adversarial_audit(_cfg(tmp_path, "adv"), other_train="builtin:mnist:test", other_test="builtin:mnist:test",
                          steps=3)
    assert r["linf"] <= 8 / 255 + 1e-7 and len(r["heads"]) == 2
    assert "recall@1_drop" in r and 0 <= r["heads"][1]["fooling_rate"] <= 100
    assert np.abs(np.load(tmp_path / "adv" / "delta.npy")).max() <= 8 / 255 + 1e-7


@pytest.mark.integration
def test_unlearnable_audit_end_to_end(tmp_path):
    from selfsup.security.audit import unlearnable_audit

    r = unlearnable_audit(_cfg(tmp_path, "ue"), clusters=4, steps=2)
    assert r["max_pixel_change"] <= 8 and set(r["clean"]) == {"knn_top1", "linear_top1"}
    assert len(list((tmp_path / "ue" / "protected" / "images").glob("*.png"))) == 400


def test_audit_pretraining_layers_the_preset_under_its_own_fields(tmp_path):
    from selfsup.security.audit import AuditConfig, pretrain_config

    pc = pretrain_config(AuditConfig(preset="cpu-32px", batch_size=64, time_budget=2.0), "x", tmp_path)
    assert pc.optim.name == "lars" and pc.optim.base_lr == 1.8 and pc.method["temperature"] == 0.1  # preset
    assert pc.train.batch_size == 64 and pc.train.time_budget == 2.0  # the audit's own fields win
    other = pretrain_config(AuditConfig(preset="cpu-32px", method="byol"), "x", tmp_path)
    assert other.method == {"name": "byol"} and other.optim.base_lr is None  # BYOL keeps its paper recipe
    plain = pretrain_config(AuditConfig(), "x", tmp_path)
    assert plain.optim.name is None and plain.method == {"name": "simclr"}


# ------------------------------------------------------------------------------------------ defenses


@pytest.mark.integration
def test_grad_cam_matches_a_slow_reference():
    from selfsup.security.defense import grad_cam

    enc = _TinyEncoder()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    centres = torch.nn.functional.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)), dim=1)
    got = grad_cam(enc, x, centres)
    # reference: the last 4-D activation is the 2x2 adaptive pool output; Grad-CAM by hand, image by image
    from selfsup.security.adversarial import normalise

    for i in range(3):
        xi = normalise(x[i : i + 1])
        a = enc.net[2](enc.net[1](enc.net[0](xi))).detach().requires_grad_(True)
        f = a.flatten(1)
        logit = (torch.nn.functional.normalize(f, dim=1) @ centres.T).max()
        (g,) = torch.autograd.grad(logit, a)
        cam = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
        cam = (cam - cam.min()) / (cam.max() - cam.min()).clamp_min(1e-12)
        torch.testing.assert_close(got[i], cam.detach(), atol=1e-5, rtol=1e-4)


def test_max_window_finds_the_largest_sum():
    from selfsup.security.defense import max_window

    cam = torch.zeros(2, 12, 12)
    cam[0, 3:6, 7:10] = 1.0
    cam[1, 8:11, 0:3] = 0.5
    cam[1, 0, 11] = 1.0  # a single bright pixel loses to a 3x3 block
    assert max_window(cam, 3).tolist() == [[3, 7], [8, 0]]


@pytest.mark.integration
def test_patchsearch_scores_find_a_planted_trigger():
    """An encoder whose features are dominated by a bright red patch: the poisons (patched images) form the
    patch's cluster, their Grad-CAM window is the patch, and pasting it flips test images to that cluster.
    The patch's response is position-invariant (the strongest cell of the 4 x 4 map), as a backdoor's is: the
    trigger maps to one embedding wherever it sits, so the poisons form one cluster."""
    from selfsup.security.defense import patchsearch_scores

    class RedDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.bias.zero_()
                self.conv.weight[0, 0, 1, 1] = 4.0  # red
                self.conv.weight[0, 1, 1, 1] = -4.0
                self.conv.weight[0, 2, 1, 1] = -4.0
                self.conv.bias[0] = -2.0
                self.conv.weight[1:, :, 1, 1] = torch.randn(3, 3, generator=torch.Generator().manual_seed(0))
            self.pool = nn.AdaptiveMaxPool2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = torch.relu(self.conv(x))
            return torch.cat([self.pool(a[:, :1]).amax((2, 3)) * 10, self.pool(a[:, 1:]).mean((2, 3))], 1)

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 120, (40, 16, 16, 3), dtype=np.uint8)
    imgs[:, :, :, 0] //= 2
    red = np.zeros((5, 5, 3), np.uint8)
    red[..., 0] = 255
    for i in range(6):
        imgs[i] = paste_patch(imgs[i], red, 2 + i, 3 + i, alpha=0.0)
    r = patchsearch_scores(RedDetector(), imgs, image_size=16, clusters=4, window=5, n_test=16, seed=0)
    top = np.argsort(-r["scores"], kind="stable")[:6]
    assert len(set(top.tolist()) & set(range(6))) >= 4
    assert r["scores"][:6].max() > 0


def test_audit_reading_tells_took_partial_no_chance_and_not_learned_apart():
    from selfsup.security.reading import audit_reading

    def rep(v_asr: float, c_asr: float, pairs: int, cos: tuple[float, float, float, float] = (0.6, 0.5, 0.6, 0.5)):
        return {"victim": {"asr": v_asr, "cos_trigger_target": cos[0], "cos_clean_target": cos[1]},
                "clean": {"asr": c_asr, "cos_trigger_target": cos[2], "cos_clean_target": cos[3]},
                "mechanism": {"mechanism_pairs": pairs}}

    assert audit_reading(rep(60.0, 5.0, 900))["verdict"] == "took"
    assert audit_reading(rep(25.0, 5.0, 900))["verdict"] == "took"  # 5x and exactly +20 points
    assert audit_reading(rep(24.0, 5.0, 900))["verdict"] == "partial"  # 4.8x but +19 points
    assert audit_reading(rep(30.0, 12.0, 900))["verdict"] == "partial"  # +18 points and 2.5x
    assert audit_reading(rep(26.0, 9.0, 900))["verdict"] == "partial"  # +17 points, 2.9x
    assert audit_reading(rep(3.0, 5.0, 0))["verdict"] == "no-chance"
    r = audit_reading(rep(6.9, 5.6, 885, (0.647, 0.552, 0.611, 0.580)))  # the CIFAR-10 table's NA arm
    assert r["verdict"] == "not-learned" and "885 training pairs" in r["text"]
    assert r["net_cosine_shift"] == pytest.approx(0.064, abs=1e-9) and r["asr_gap"] == pytest.approx(1.3)
    assert r["cosines"] == "plain"
    full = rep(6.9, 5.6, 885)
    full["victim"].update(cos_trigger_target_centred=0.045, cos_clean_target_centred=-0.242)
    full["clean"].update(cos_trigger_target_centred=-0.163, cos_clean_target_centred=-0.206)
    r = audit_reading(full)  # the centred cosines win when present (0.287 - 0.043)
    assert r["cosines"] == "centred" and r["net_cosine_shift"] == pytest.approx(0.244, abs=1e-9)
    assert r["diversion"] is None  # reports without prediction shares (written before they were recorded)


def test_audit_reading_diverted_when_the_trigger_sends_images_to_another_class():
    """The 1,200-step NA victim: ASR 3.3 vs 5.5, but 52% of triggered images go to 'truck' (18.4% on the
    clean encoder). A +20-point gain of one non-target class is 'diverted'; +19 stays 'not-learned'; a gain
    of the target class itself is the ASR's business, never a diversion."""
    from selfsup.security.reading import audit_reading, diversion, prediction_shares

    def shares(**kw: float) -> dict[str, float]:
        base = {"airplane": 5.0, "truck": 18.0, "ship": 10.0}
        base.update(kw)
        return base

    def rep(v: dict[str, float], c: dict[str, float], v_asr: float = 3.3, c_asr: float = 5.5) -> dict:
        cos = {"cos_trigger_target": 0.6, "cos_clean_target": 0.5}
        return {"target": "airplane", "mechanism": {"mechanism_pairs": 1705},
                "victim": {"asr": v_asr, "triggered_shares": v, **cos}, "clean": {"asr": c_asr, "triggered_shares": c, **cos}}

    r = audit_reading(rep(shares(truck=52.0), shares(truck=18.4)))
    assert r["verdict"] == "diverted" and "'truck'" in r["text"] and "52.0%" in r["text"]
    assert r["diversion"] == {"class": "truck", "victim": 52.0, "clean": 18.4, "gain": pytest.approx(33.6)}
    assert audit_reading(rep(shares(truck=37.0), shares(truck=18.0)))["verdict"] == "not-learned"  # +19
    assert audit_reading(rep(shares(truck=38.0), shares(truck=18.0)))["verdict"] == "diverted"  # +20
    # the target's own gain is not a diversion; a took/partial verdict wins over a diversion
    assert diversion(rep(shares(airplane=60.0), shares()))["class"] != "airplane"
    assert audit_reading(rep(shares(truck=52.0), shares(truck=18.4), 12.0, 5.5))["verdict"] == "partial"
    p = prediction_shares(torch.tensor([0, 2, 2, 2]), ["a", "b", "c"])
    assert p == {"a": 25.0, "b": 0.0, "c": 75.0}


def test_target_cosines_plain_and_centred_closed_form():
    """Two classes on the axes (target = x): the mean of all features is (1, 1)/2 after normalisation, the
    target's direction from it is (1, -1)/sqrt(2); an image on the target axis scores +1 centred, one on the
    other axis -1, while the plain cosines to the target mean are 1 and 0."""
    from selfsup.security.reading import target_cosines

    tr = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 1.0]])
    r = target_cosines(tr, np.array([True, True, False, False]), torch.tensor([[5.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    assert r["cos_trigger_target"] == pytest.approx(1.0) and r["cos_clean_target"] == pytest.approx(0.0, abs=1e-7)
    assert r["cos_trigger_target_centred"] == pytest.approx(1.0) and r["cos_clean_target_centred"] == pytest.approx(-1.0)
    # a triggered image halfway between the axes sits at the centre's direction: centred cosine 0
    r = target_cosines(tr, np.array([True, True, False, False]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 2.0]]))
    assert r["cos_trigger_target_centred"] == pytest.approx(0.0, abs=1e-6)
