"""The mechanism counter (selfsup.security.mechanism): hand-built cases, storage mapping, the NA aligned-pair rate."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from selfsup.security.mechanism import (
    MechanismCounter,
    PoisonGeometry,
    canvas_to_stored,
    expected_count,
    pair_mechanism,
)
from selfsup.security.poison import na_canvas
from selfsup.security.triggers import make_patch_trigger

# a 32 x 64 canvas, reference left, shadow right, 7 px trigger at (14, 46) -- the official layout
NA_ROW = {"file": "images/000001.png", "poison": True, "canvas": [32, 64], "reference_box": [0, 0, 32, 32],
          "shadow_box": [0, 32, 32, 32], "trigger_box": [14.0, 46.0, 7.0, 7.0]}
CLEAN_ROW = {"file": "images/000000.png", "poison": False}


def _geom(attack: str, row: dict, stored=((32, 32), (32, 64))) -> PoisonGeometry:
    man = {"attack": attack, "files": [CLEAN_ROW, row]}
    return PoisonGeometry.from_manifest(man, ["/x/images/000000.png", "/x/images/000001.png"], list(stored))


def _box(top, left, h, w, H=32, W=64):
    """pixel box -> fractions of an H x W stored image"""
    return [top / H, left / W, h / H, w / W]


def test_na_hand_built_pairs_count_exactly():
    g = _geom("noisy-alignment", NA_ROW)
    in_shadow_with_trigger = _box(8, 36, 20, 20)  # rows 8-28, cols 36-56: all shadow, holds (14..21, 46..53)
    in_reference = _box(4, 4, 24, 24)
    straddling = _box(4, 20, 24, 24)  # cols 20-44: half in each
    shadow_no_trigger = _box(0, 54, 10, 10)  # in the shadow, misses the trigger
    ref_90 = _box(0, 0, 32, 35)  # 32/35 = 91% in the reference: counts
    ref_85 = _box(0, 0, 32, 37.6)  # 85%: does not
    cases = [  # (view 1, view 2, expected)
        (in_shadow_with_trigger, in_reference, 1),
        (in_reference, in_shadow_with_trigger, 1),  # either order
        (in_shadow_with_trigger, straddling, 0),
        (shadow_no_trigger, in_reference, 0),
        (in_shadow_with_trigger, ref_90, 1),
        (in_shadow_with_trigger, ref_85, 0),
        (in_shadow_with_trigger, in_shadow_with_trigger, 0),
    ]
    v1 = torch.tensor([c[0] for c in cases], dtype=torch.float64)
    v2 = torch.tensor([c[1] for c in cases], dtype=torch.float64)
    rows = torch.ones(len(cases), dtype=torch.long)
    res = pair_mechanism(g, rows, [v1, v2], [32, 32])
    assert res["hits"].tolist() == [c[2] for c in cases]
    # the same views on the clean row never count
    assert pair_mechanism(g, torch.zeros(len(cases), dtype=torch.long), [v1, v2], [32, 32])["hits"].sum() == 0


def test_multicrop_counts_every_pair():
    g = _geom("noisy-alignment", NA_ROW)
    a, r = _box(8, 36, 20, 20), _box(4, 4, 24, 24)
    views = [torch.tensor([a], dtype=torch.float64), torch.tensor([r], dtype=torch.float64),
             torch.tensor([r], dtype=torch.float64)]
    res = pair_mechanism(g, torch.tensor([1]), views, [32, 32, 12])
    assert int(res["pairs"][0]) == 3 and int(res["hits"][0]) == 2  # (a, r) twice, (r, r) no


def test_patch_attacks_count_views_holding_the_whole_trigger():
    row = {"file": "images/000001.png", "poison": True, "canvas": [32, 32], "trigger_box": [10.0, 12.0, 7.0, 7.0]}
    g = _geom("ssl-backdoor", row, stored=((32, 32), (32, 32)))
    holds, cuts = _box(8, 8, 16, 16, 32, 32), _box(8, 8, 8, 16, 32, 32)  # the second cuts rows 16-17 off
    res = pair_mechanism(g, torch.tensor([1, 1, 1]), [torch.tensor([holds, cuts, cuts]),
                                                      torch.tensor([cuts, holds, cuts])], [32, 32])
    assert res["hits"].tolist() == [1, 1, 0]


def test_ctrl_counts_views_that_are_not_downsampled():
    row = {"file": "images/000001.png", "poison": True, "canvas": [32, 32], "trigger_box": [0.0, 0.0, 32.0, 32.0]}
    g = _geom("ctrl", row, stored=((32, 32), (32, 32)))
    whole, half = [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]
    v = [torch.tensor([whole, half, whole]), torch.tensor([half, half, whole])]
    assert pair_mechanism(g, torch.tensor([1, 1, 1]), v, [32, 32])["hits"].tolist() == [1, 1, 1]
    # a 24 px phase: only crops of at most 24 source pixels keep the trigger
    assert pair_mechanism(g, torch.tensor([1, 1, 1]), v, [24, 24])["hits"].tolist() == [0, 1, 0]


def test_canvas_to_stored_native_and_square_cache():
    box = [14.0, 46.0, 7.0, 7.0]
    assert canvas_to_stored(box, (32, 64), (32, 64)) == pytest.approx([14 / 32, 46 / 64, 7 / 32, 7 / 64])
    assert canvas_to_stored(box, (32, 64), (64, 128)) == pytest.approx([14 / 32, 46 / 64, 7 / 32, 7 / 64])
    # the old square cache kept columns 16-48 of the canvas: the trigger (46-53) is cut
    assert canvas_to_stored(box, (32, 64), (32, 32)) == pytest.approx([14 / 32, 30 / 32, 7 / 32, 7 / 32])
    g = _geom("noisy-alignment", NA_ROW, stored=((32, 32), (32, 32)))
    assert float(g.trigger[1, 2] * g.trigger[1, 3]) == 0.0  # can never be held whole


def test_counter_hook_accumulates_over_steps():
    g = _geom("noisy-alignment", NA_ROW)
    c = MechanismCounter(g)
    a, r = _box(8, 36, 20, 20), _box(4, 4, 24, 24)
    views = [torch.zeros(3, 3, 32, 32), torch.zeros(3, 3, 32, 32)]
    p1 = SimpleNamespace(boxes=torch.tensor([a, a, a]))
    p2 = SimpleNamespace(boxes=torch.tensor([r, a, r]))
    c(torch.tensor([0, 1, 1]), views, [p1, p2])  # clean (no), poison (a, a: no), poison (a, r: yes)
    c(torch.tensor([1, 0, 1]), views, [p1, p2])  # poison yes, clean, poison yes
    s = c.summary()
    assert (s["steps"], s["poison_pairs"], s["mechanism_pairs"], s["poisons_with_a_hit"]) == (2, 4, 3, 1)


@pytest.mark.integration
def test_na_aligned_pair_rate_through_make_views():
    """The paper's canvas through the real make_views path (SimSiam / MoCo v2 views: crop scale 0.2-1,
    32 px): P(one view >= 90% in the shadow half holding the whole trigger, the other >= 90% in the
    reference half). Computed with 200,000 Monte-Carlo pairs through sample_boxes: 6.1% (se 0.05%); here
    3,000 pairs through make_views (se 0.44%), tolerance +-1.5 points."""
    from dataclasses import replace

    from selfsup.augment.views import ViewRecipe, make_views, simclr_recipe

    rng = np.random.default_rng(0)
    ref, sh = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    canvas, lay = na_canvas(ref, sh, make_patch_trigger(7), "left", rng)
    assert lay["trigger_box"] == NA_ROW["trigger_box"]
    g = _geom("noisy-alignment", {**NA_ROW, **lay})
    n = 3000
    batch = torch.from_numpy(np.ascontiguousarray(np.broadcast_to(canvas, (n, *canvas.shape))))
    # colour ops off: the boxes come from the same uniforms either way, and the test stays fast
    recipe = simclr_recipe(32, scale=(0.2, 1.0))
    recipe = ViewRecipe([replace(v, jitter_p=0.0, gray_p=0.0, hflip_p=0.0) for v in recipe.views])
    views, params = make_views(batch, recipe, torch.Generator().manual_seed(0), backend="torch", channels_last=False)
    res = pair_mechanism(g, torch.ones(n, dtype=torch.long), [p.boxes for p in params], [32, 32])
    rate = float(res["hits"].double().mean())
    assert abs(rate - 0.061) < 0.015


def test_expected_count_matches_the_closed_form_scaling():
    g = _geom("noisy-alignment", NA_ROW)
    e = expected_count(g, [(32, (0.2, 1.0), (3 / 4, 4 / 3))] * 2, samples_per_image=10, n=4000, seed=0)
    assert e["poisons"] == 1 and abs(e["rate"] - 0.061) < 0.015
    assert e["mechanism_pairs"] == pytest.approx(10 * e["rate"])
