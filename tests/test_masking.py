"""Masking utilities and FAMT weights vs slow references (selfsup.augment.masking)."""

from __future__ import annotations

import cmath
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from selfsup.augment.masking import (
    MASKED,
    THROWN,
    VISIBLE,
    expand_cell_split,
    famt_attention_weights,
    famt_frequency_weights,
    lowpass_kernel,
    patchify,
    pool_to_cells,
    sample_split,
    split_counts,
    unpatchify,
    weighted_permutation,
    weights_to_view,
)
from selfsup.augment.ops import resized_crop
from selfsup.errors import ConfigError


def _ref_attention_weights(a: np.ndarray) -> np.ndarray:
    """Explicit loops over batch, heads, rows and columns."""
    b, h, n, _ = a.shape
    out = np.zeros((b, n - 1))
    for s in range(b):
        omega = [sum(a[s, hh, i, 0] for i in range(1, n)) / (n - 1) for hh in range(h)]
        for j in range(1, n):
            c = sum(omega[hh] * a[s, hh, 0, j] for hh in range(h)) / h
            g = 0.0
            for hh in range(h):
                col = sum(a[s, hh, i, j] for i in range(1, n)) / (n - 1)
                g += a[s, hh, 0, 0] * col
            out[s, j - 1] = c + g / h
    return out


def test_attention_weights_match_loop_reference():
    torch.manual_seed(0)
    attn = torch.randn(2, 3, 7, 7).softmax(-1)
    got = famt_attention_weights(attn).numpy()
    np.testing.assert_allclose(got, _ref_attention_weights(attn.double().numpy()), rtol=1e-5, atol=1e-7)


def _ref_frequency_weights(t: np.ndarray) -> np.ndarray:
    """Explicit DFT over the token axis, filter the magnitude, keep the phase, explicit inverse DFT."""
    b, n, d = t.shape
    m0, d0 = (n - 1) / 2, (0.15 * n / 2) ** 2
    kern = [1 - math.exp(-((k - m0) ** 2) / (2 * d0)) for k in range(n)]
    out = np.zeros((b, n))
    for s in range(b):
        den = sum(abs(t[s, j, dd]) for j in range(n) for dd in range(d)) / n
        for dd in range(d):
            spec = [sum(t[s, j, dd] * cmath.exp(-2j * math.pi * k * j / n) for j in range(n)) for k in range(n)]
            filt = [cmath.rect(abs(z) * kern[k], cmath.phase(z)) for k, z in enumerate(spec)]
            for j in range(n):
                val = sum(filt[k] * cmath.exp(2j * math.pi * k * j / n) for k in range(n)) / n
                out[s, j] += abs(val)
        out[s] /= den
    return out


def test_frequency_weights_match_loop_reference():
    torch.manual_seed(1)
    tok = torch.randn(2, 9, 4)
    got = famt_frequency_weights(tok).numpy()
    np.testing.assert_allclose(got, _ref_frequency_weights(tok.double().numpy()), rtol=1e-4, atol=1e-6)


def test_lowpass_kernel_is_zero_at_highest_frequency():
    k = lowpass_kernel(9)
    assert float(k[4]) == pytest.approx(0.0)
    assert float(k[0]) > 0.99 and float(k[8]) > 0.99


def test_first_draw_probability_is_proportional_to_weight():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 0.5])
    n = 40_000
    g = torch.Generator().manual_seed(0)
    perm = weighted_permutation(w.expand(n, -1), g)
    counts = torch.bincount(perm[:, 0], minlength=6).numpy()
    wd = w.double().numpy()
    expected = wd / wd.sum() * n
    assert chisquare(counts, expected).pvalue > 1e-3
    # second draw given first = 4 (weight 10): proportional to the remaining weights
    rest = perm[perm[:, 0] == 4][:, 1]
    w2 = wd.copy()
    w2[4] = 0
    exp2 = w2 / w2.sum() * rest.numel()
    c2 = torch.bincount(rest, minlength=6).numpy()
    assert c2[4] == 0
    keep = exp2 > 0
    assert chisquare(c2[keep], exp2[keep]).pvalue > 1e-3


def test_zero_weights_are_drawn_last():
    w = torch.tensor([[0.0, 1.0, 0.0, 2.0]]).expand(500, -1)
    perm = weighted_permutation(w, torch.Generator().manual_seed(0))
    assert set(perm[:, :2].flatten().tolist()) == {1, 3}


@pytest.mark.parametrize("mask_high", [True, False])
def test_split_counts_are_exact_and_disjoint(mask_high):
    length = 64
    n_mask, n_throw = split_counts(length, 0.45, 0.40)
    assert (n_mask, n_throw) == (29, 26)
    w = torch.rand(5, length) + 0.01
    s = sample_split(5, length, n_mask, n_throw, weights=w, mask_high=mask_high,
                     generator=torch.Generator().manual_seed(0))
    assert s.masked.shape == (5, 29) and s.thrown.shape == (5, 26) and s.visible.shape == (5, 9)
    for b in range(5):
        all_ids = torch.cat([s.visible[b], s.masked[b], s.thrown[b]]).sort().values
        assert torch.equal(all_ids, torch.arange(length))
    assert torch.equal((s.state == MASKED).sum(1), torch.full((5,), 29))
    assert torch.equal((s.state == THROWN).sum(1), torch.full((5,), 26))
    assert torch.equal((s.state == VISIBLE).sum(1), torch.full((5,), 9))


def test_mask_high_chooses_which_end_is_masked():
    length = 16
    w = torch.full((200, length), 1e-4)
    w[:, :4] = 1e4  # four dominant patches
    hi = sample_split(200, length, 4, 4, weights=w, mask_high=True, generator=torch.Generator().manual_seed(0))
    lo = sample_split(200, length, 4, 4, weights=w, mask_high=False, generator=torch.Generator().manual_seed(0))
    assert bool((hi.state[:, :4] == MASKED).all())
    assert bool((lo.state[:, :4] == VISIBLE).all())


def test_bad_ratios_raise():
    with pytest.raises(ConfigError):
        split_counts(64, 0.7, 0.4)


def test_expand_cell_split_covers_cells():
    s = sample_split(3, 4, 2, 1, generator=torch.Generator().manual_seed(0))  # 2x2 cells
    fine = expand_cell_split(s, grid=4, cell=2)
    st = fine.state.reshape(3, 4, 4)
    for b in range(3):
        for c in range(4):
            r, q = divmod(c, 2)
            assert bool((st[b, 2 * r : 2 * r + 2, 2 * q : 2 * q + 2] == s.state[b, c]).all())
    assert fine.masked.shape == (3, 8) and fine.thrown.shape == (3, 4) and fine.visible.shape == (3, 4)
    w = torch.arange(16.0).reshape(1, 16)
    cells = pool_to_cells(w, 4, 2)
    assert cells.tolist() == [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7, 8 + 9 + 12 + 13, 10 + 11 + 14 + 15]]


def test_patchify_roundtrip_and_layout():
    x = torch.randn(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    # patch 1 = row 0, column 1; flattened as (py, px, c)
    assert torch.equal(p[0, 1].reshape(4, 4, 3), x[0, :, 0:4, 4:8].permute(1, 2, 0))
    assert torch.equal(unpatchify(p, 4), x)


# ---- geometry: the weight map follows the crop box (top, left, height, width) and the flip


def _peak_map(r: int, c: int, g: int = 8) -> torch.Tensor:
    m = torch.ones(1, g, g)
    m[0, r, c] = 5.0
    return m


@pytest.mark.parametrize("flip", [False, True])
def test_weight_map_follows_crop_and_flip(flip):
    # source grid 8x8, peak at row 2, column 5; crop top 0.25, left 0.5, 0.5 x 0.5 of the source -> the crop
    # holds source rows 2..5 and columns 4..7, i.e. the peak is at view row 0, column 1 (2 when flipped)
    box = torch.tensor([[0.25, 0.5, 0.5, 0.5]])
    out = weights_to_view(_peak_map(2, 5), box, torch.tensor([flip]), out_grid=4).reshape(4, 4)
    r, c = divmod(int(out.argmax()), 4)
    assert (r, c) == (0, 2 if flip else 1)
    assert float(out.max()) == pytest.approx(5.0)
    # a (left, top) mix-up would put the crop at rows 4..7 / columns 2..5 and miss the peak entirely
    swapped = weights_to_view(_peak_map(2, 5), box[:, [1, 0, 3, 2]], torch.tensor([flip]), 4)
    assert float(swapped.max()) == pytest.approx(1.0)


def test_weight_map_matches_the_image_crop():
    """The view patch where a bright source patch lands after views.resized_crop gets the map's peak."""
    g, p = 8, 4
    img = torch.zeros(1, 1, g * p, g * p)
    img[..., 3 * p : 4 * p, 6 * p : 7 * p] = 1.0  # source patch (3, 6)
    m = torch.zeros(1, g, g)
    m[0, 3, 6] = 1.0
    box = torch.tensor([[0.25, 0.375, 0.625, 0.625]])  # rows 2..6.999, columns 3..7.999 of the grid
    for flip in (False, True):
        fl = torch.tensor([flip])
        view = resized_crop(img, box, fl, 5 * p)  # 5x5 view patches of 4 px: one source patch each
        patch_mass = patchify(view.expand(1, 3, -1, -1), p).sum(-1).reshape(-1)
        wv = weights_to_view(m, box, fl, out_grid=5)
        assert int(patch_mass.argmax()) == int(wv.argmax())
        assert int(wv.argmax()) == 1 * 5 + (5 - 1 - 3 if flip else 3)
