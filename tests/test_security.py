"""Security: Noisy-Alignment geometry and its Monte-Carlo rationale, poison folders, metrics, budgets, audits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.fft import dctn
from torch import nn

from selfsup.errors import ConfigError, DataError, UserError
from selfsup.security.metrics import attack_success_rate, clean_accuracy, fooling_rate
from selfsup.security.poison import (
    ORIENTATIONS,
    PoisonSpec,
    alignment_probability,
    balanced_orientations,
    build_poisoned_folder,
    na_canvas,
    poison_count,
    resolve_target,
)
from selfsup.security.triggers import (
    apply_ctrl_trigger,
    make_patch_trigger,
    paste_patch,
    rgb_to_ycbcr,
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


# ------------------------------------------------------------------------------- Noisy Alignment geometry


def test_trigger_scaling_follows_the_paper_ratio():
    assert scaled_trigger_size(224) == 50
    assert scaled_trigger_size(32) == 7
    assert scaled_trigger_size(64) == 14
    assert scaled_trigger_size(8) == 3  # floor of 3 px


@pytest.mark.parametrize("fit", ["native", "square"])
@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_na_canvas_geometry(fit, orientation):
    s = 32
    ref, shadow, trig = _img(s, 200), _img(s, 40), make_patch_trigger(7, seed=1)
    canvas, lay = na_canvas(ref, shadow, trig, orientation, fit=fit, alpha=0.2)
    horizontal = orientation in ("left", "right")
    if fit == "native":
        assert canvas.shape[:2] == ((s, 2 * s) if horizontal else (2 * s, s))
    else:
        assert canvas.shape[:2] == (s, s)
    rt, rl, rh, rw = lay["reference_box"]
    st, sl, sh, sw = lay["shadow_box"]
    # the two halves tile the canvas and the reference sits where the orientation says
    assert rh * rw + sh * sw == canvas.shape[0] * canvas.shape[1]
    if orientation == "left":
        assert rl == 0 and sl == rw
    if orientation == "right":
        assert sl == 0 and rl == sw
    if orientation == "top":
        assert rt == 0 and st == rh
    if orientation == "bottom":
        assert st == 0 and rt == sh
    assert np.all(canvas[rt : rt + rh, rl : rl + rw] == 200)  # reference half untouched by the trigger
    tt, tl, th, tw = lay["trigger_box"]
    assert st <= tt and tt + th <= st + sh and sl <= tl and tl + tw <= sl + sw  # inside the shadow half
    assert abs((tt + th / 2) - (st + sh / 2)) <= 0.5 and abs((tl + tw / 2) - (sl + sw / 2)) <= 0.5  # centred
    expect = np.rint(0.2 * 40 + 0.8 * trig.astype(np.float64)).astype(np.uint8)
    np.testing.assert_array_equal(canvas[tt : tt + th, tl : tl + tw], expect)
    outside = canvas[st : st + sh, sl : sl + sw].copy()
    outside[tt - st : tt - st + th, tl - sl : tl - sl + tw] = 40
    assert np.all(outside == 40)


def test_all_four_orientations_occur_and_are_balanced():
    rng = np.random.default_rng(0)
    o = balanced_orientations(10, rng)
    counts = {k: o.count(k) for k in ORIENTATIONS}
    assert set(counts) == set(ORIENTATIONS) and min(counts.values()) >= 2 and max(counts.values()) <= 3


def test_monte_carlo_na_layout_beats_random_layout():
    """P(view 1 >= 90% in the triggered shadow part and contains the trigger, view 2 >= 90% in the reference half).

    Same crop distribution as training (scale (0.08, 1), ratio (3/4, 4/3), selfsup.augment.views.sample_boxes). The
    random layout keeps the canvas and the half-size reference block but places it at a uniformly random
    offset along the long side, with the trigger uniformly in the remaining shadow part.
    """
    kw = {"n": 4000, "seed": 0}
    na = alignment_probability("na", height=32, width=64, trigger_frac=(7 / 32, 7 / 64), **kw)
    rnd = alignment_probability("random", height=32, width=64, trigger_frac=(7 / 32, 7 / 64), **kw)
    assert na["p_triggered"] > 2.5 * rnd["p_triggered"]
    assert na["p_halves"] > 1.5 * rnd["p_halves"]
    assert 0.05 < na["p_triggered"] < 0.12  # ~0.077 with 200k samples
    # a tall canvas (reference top/bottom) is the same problem transposed
    tall = alignment_probability("na", height=64, width=32, trigger_frac=(7 / 64, 7 / 32), **kw)
    assert abs(tall["p_triggered"] - na["p_triggered"]) < 0.03


@pytest.mark.integration
def test_monte_carlo_square_fit_still_beats_random():
    """The square canvas selfsup's loader needs: near-square crops rarely fit a 1 x 1/2 half (~0.5%)."""
    kw = {"n": 100_000, "seed": 0}
    sq_na = alignment_probability("na", height=32, width=32, trigger_frac=(7 / 32, 7 / 32), **kw)
    sq_rnd = alignment_probability("random", height=32, width=32, trigger_frac=(7 / 32, 7 / 32), **kw)
    assert sq_na["p_halves"] > 1.5 * sq_rnd["p_halves"]
    assert sq_na["p_triggered"] > 2 * sq_rnd["p_triggered"]


# ---------------------------------------------------------------------------------- poison folders


def test_poison_count_is_exact():
    assert poison_count(0.01, 400) == 4
    assert poison_count(0.1, 25) == 2  # round(2.5) = 2 (banker's rounding is documented as round())
    with pytest.raises(ConfigError):
        poison_count(0.001, 100)


@pytest.mark.parametrize("attack", ["noisy-alignment", "ssl-backdoor", "ctrl"])
def test_poisoned_folder_matches_manifest(tmp_path, attack):
    images, labels, classes, paths = _tiny_data()
    spec = PoisonSpec(attack=attack, rate=0.2, ctrl_window=16, seed=3)
    man = build_poisoned_folder(tmp_path / "p", images, labels, classes, paths, target="c1", spec=spec)
    assert man["n_poison"] == 4 and man["n_clean"] == 20
    files = sorted(p.relative_to(tmp_path / "p").as_posix() for p in (tmp_path / "p" / "images").glob("*.png"))
    assert files == sorted(r["file"] for r in man["files"])
    assert sum(r["poison"] for r in man["files"]) == 4
    src = {p: i for i, p in enumerate(paths)}
    for r in man["files"]:
        arr = np.asarray(Image.open(tmp_path / "p" / r["file"]))
        if not r["poison"]:
            np.testing.assert_array_equal(arr, images[src[r["source"]]])
        else:
            assert r["kind"] == attack and labels[src[r["reference"]]] == 1  # references are target-class
            assert not np.array_equal(arr, images[src[r["reference"]]])
            if attack == "noisy-alignment":
                assert labels[src[r["shadow"]]] != 1
    assert json.loads((tmp_path / "p" / "manifest.json").read_text())["n_poison"] == 4


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


def test_ctrl_trigger_sits_in_chrominance_high_frequencies():
    rng = np.random.default_rng(0)
    x = rng.integers(60, 196, (2, 32, 32, 3), dtype=np.uint8)  # away from clipping
    y = apply_ctrl_trigger(x, magnitude=50.0, window=32)
    d = rgb_to_ycbcr(y.astype(np.float64)) - rgb_to_ycbcr(x.astype(np.float64))
    coef = dctn(d, axes=(1, 2), norm="ortho")
    for c in (1, 2):  # Cb, Cr
        assert abs(coef[0, 15, 15, c] - 50) < 3 and abs(coef[0, 31, 31, c] - 50) < 3
        assert abs(coef[0, 0, 0, c]) < 3
    assert np.abs(d[..., 0]).max() < 2.0  # luma only changes by rounding
    assert np.abs(y.astype(int) - x.astype(int)).max() <= 20  # invisible-ish


def test_paste_patch_blend_formula():
    img, patch = _img(8, 100), np.full((3, 3, 3), 250, np.uint8)
    out = paste_patch(img, patch, 2, 4, alpha=0.2)
    assert np.all(out[2:5, 4:7] == 220) and out[0, 0, 0] == 100  # 0.2*100 + 0.8*250


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
                       defense_tests=8)
    assert r["n_poison"] == 8 and r["victim_steps"] == 2
    for arm in ("victim", "clean"):
        assert 0.0 <= r[arm]["asr"] <= 100.0 and 0.0 <= r[arm]["ca"] <= 100.0
    d = r["defense"]
    assert d["flagged"] == 21 and 0 <= d["recall"] <= 100 and "after" in d
    assert json.loads((tmp_path / "bd" / "report.json").read_text())["attack"] == "noisy-alignment"


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
