"""MAE, SimMIM and FAMT methods: losses vs slow references, thrown patches, schedule, resume, smoke."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from selfsup.augment.masking import MASKED, THROWN, expand_cell_split, sample_split
from selfsup.augment.views import make_views
from selfsup.config import BackboneConfig
from selfsup.errors import ConfigError
from selfsup.methods import Batch, Progress, registry
from selfsup.methods.mae import mae_loss
from selfsup.models.backbones import build_backbone

SIZE, PATCH = 16, 4  # 4 x 4 = 16 patches


_BACKBONES: dict[int, torch.nn.Module] = {}


def _backbone(size: int) -> torch.nn.Module:
    """vit-tiny cut to 2 blocks (same code paths, a fraction of the time), built once per size."""
    if size not in _BACKBONES:
        bb = build_backbone(BackboneConfig(name="vit-tiny", patch_size=PATCH), size)
        bb.net.blocks = bb.net.blocks[:2]
        _BACKBONES[size] = bb
    return copy.deepcopy(_BACKBONES[size])


def _build(name: str, size: int = SIZE, **cfg):
    spec = registry()[name]
    return spec.build(_backbone(size), spec.config_cls(**cfg), image_size=size)


def _images(n: int = 4, size: int = SIZE) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _batch(method, imgs: torch.Tensor) -> Batch:
    views, params = make_views(imgs, method.view_recipe, torch.Generator().manual_seed(1), channels_last=False)
    return Batch(views=views, index=torch.arange(imgs.shape[0]), params=params)


def _patch(x: torch.Tensor, b: int, j: int, p: int) -> torch.Tensor:
    g = x.shape[-1] // p
    r, c = divmod(j, g)
    return x[b, :, r * p : (r + 1) * p, c * p : (c + 1) * p].permute(1, 2, 0).reshape(-1)


def test_mae_loss_matches_slow_reference():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 3, 12), torch.randn(2, 3, 12) * 3 + 1
    ref = 0.0
    for b in range(2):
        for j in range(3):
            t = target[b, j].double()
            t = (t - t.mean()) / torch.sqrt(t.var(unbiased=True) + 1e-6)
            ref += float(((pred[b, j].double() - t) ** 2).mean())
    assert float(mae_loss(pred, target)) == pytest.approx(ref / 6, rel=1e-5)
    assert float(mae_loss(pred, target, norm_pix=False)) == pytest.approx(float(((pred - target) ** 2).mean()))


@pytest.mark.parametrize("name", ["mae", "famt-mae"])
def test_mae_loss_uses_masked_patches_only(name):
    m = _build(name).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    split = sample_split(2, 16, m.n_mask, m.n_throw, generator=torch.Generator().manual_seed(0))
    loss, _, pred = m.forward_split(x, split)
    ref = 0.0
    for b in range(2):
        for k, j in enumerate(split.masked[b].tolist()):
            t = _patch(x, b, j, PATCH).double()
            t = (t - t.mean()) / torch.sqrt(t.var() + 1e-6)
            ref += float(((pred[b, k].detach().double() - t) ** 2).mean())
    assert float(loss.detach()) == pytest.approx(ref / pred.shape[0] / pred.shape[1], rel=1e-4)


@pytest.mark.parametrize("name", ["famt-mae", "famt-simmim"])
def test_thrown_patches_absent_from_encoder_and_loss(name):
    m = _build(name).eval()
    g = torch.Generator().manual_seed(0)
    if name == "famt-mae":
        split = sample_split(2, 16, m.n_mask, m.n_throw, generator=g)
        expect_tokens = 1 + split.visible.shape[1]
    else:
        split = expand_cell_split(sample_split(2, m.num_cells, m.n_mask, m.n_throw, generator=g), m.grid, m.cell)
        expect_tokens = 1 + split.visible.shape[1] + split.masked.shape[1]
    assert int((split.state == THROWN).sum()) > 0
    seen = []
    hook = m.backbone.net.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    x = torch.randn(2, 3, SIZE, SIZE)
    loss_clean, _, _ = m.forward_split(x, split)
    poisoned = x.clone()
    thrown_px = split.state.reshape(2, 1, m.grid, 1, m.grid, 1).expand(2, 3, m.grid, PATCH, m.grid, PATCH)
    poisoned.view(2, 3, m.grid, PATCH, m.grid, PATCH)[thrown_px == THROWN] = float("nan")
    assert torch.isnan(poisoned).any()
    loss_nan, _, _ = m.forward_split(poisoned, split)
    hook.remove()
    assert torch.isfinite(loss_nan)
    assert float(loss_nan.detach()) == pytest.approx(float(loss_clean.detach()), rel=1e-5)
    assert seen == [expect_tokens, expect_tokens]


def test_famt_split_counts():
    m = _build("famt-mae", size=32)  # 64 patches: 29 masked, 26 thrown, 9 visible
    assert (m.n_mask, m.n_throw) == (29, 26)
    s = _build("famt-simmim", size=32)  # 8 px mask cells -> 16 cells: 7 masked, 4 thrown
    assert (s.mask_patch_size, s.num_cells, s.n_mask, s.n_throw) == (8, 16, 7, 4)
    assert _build("simmim", size=32).n_mask == 10  # 60% of 16 cells


def test_simmim_loss_is_l1_on_masked_pixels():
    m = _build("simmim").eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    split = expand_cell_split(sample_split(2, m.num_cells, m.n_mask, 0, generator=torch.Generator().manual_seed(0)),
                              m.grid, m.cell)
    loss, _, pred = m.forward_split(x, split)
    # reference: full-image prediction map, L1 weighted by the pixel mask (SimMIM Eq. 1)
    recon = torch.zeros_like(x)
    pix_mask = torch.zeros_like(x)
    g = m.grid
    for b in range(2):
        for k, j in enumerate(split.masked[b].tolist()):
            r, c = divmod(j, g)
            recon[b, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = (
                pred[b, k].detach().reshape(PATCH, PATCH, 3).permute(2, 0, 1))
            pix_mask[b, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = 1
    ref = float(((recon - x).abs() * pix_mask).sum() / pix_mask.sum())
    assert float(loss.detach()) == pytest.approx(ref, rel=1e-5)
    assert int((split.state == MASKED).sum()) == 2 * m.n_mask * m.cell**2


@pytest.mark.parametrize("name", ["mae", "simmim", "famt-mae", "famt-simmim"])
def test_one_step_finite_and_gradients_reach_all_params(name):
    m = _build(name)
    imgs = _images()
    if name.startswith("famt"):
        m.refresh_weights(imgs)
        assert m.famt.ready
    out = m(_batch(m, imgs), Progress(step=0, total_steps=10, epoch=0, steps_per_epoch=1))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing
    if name.startswith("famt"):
        assert out.logs["famt_weighted"] == 1.0


def test_non_vit_backbone_is_rejected():
    spec = registry()["mae"]
    bb = build_backbone(BackboneConfig(name="cnn-compact", width=8), 16)
    with pytest.raises(ConfigError, match="ViT backbone"):
        spec.build(bb, spec.config_cls(), image_size=16)


class _DS:
    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)


def test_refresh_schedule_and_training_mode_restored():
    m = _build("famt-mae", warmup_epochs=2, refresh_every=3, refresh_batch_size=3)
    ds = _DS(_images(5).numpy())
    m.train()
    seen = []
    for ep in range(7):
        m.on_epoch_start(ep, ds)
        seen.append(int(m.famt.refreshed_at))
    assert seen == [-1, -1, 2, 2, 2, 5, 5]
    assert m.training and m.backbone.training
    assert m.famt.weights.shape == (5, 16) and bool((m.famt.weights > 0).all())


def test_refresh_weights_follow_the_formulas():
    from selfsup.augment.masking import famt_weights, vit_attention_and_tokens
    from selfsup.augment.ops import eval_transform

    m = _build("famt-mae")
    imgs = _images(3)
    got = m.refresh_weights(imgs)
    m.eval()
    x = eval_transform(imgs, SIZE, m.view_recipe.mean, m.view_recipe.std, channels_last=False)
    attn, tok = vit_attention_and_tokens(m.backbone.net, x)
    torch.testing.assert_close(got, famt_weights(attn, tok))
    # the tokens are the last block's output BEFORE the final norm (the official forward_encoder_test):
    # the final norm applied to them gives the encoder's output tokens, and they are not normalised themselves
    full = m.backbone.forward_tokens(x)[:, 1:]
    torch.testing.assert_close(m.backbone.net.norm(tok), full, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(tok, full, atol=1e-3)


def test_weights_are_checkpointed_when_num_images_is_set():
    imgs = _images(4)
    m = _build("famt-mae", num_images=4)
    m.refresh_weights(imgs, epoch=3)
    state = m.state_dict()
    assert "famt.weights" in state and "famt.refreshed_at" in state
    m2 = _build("famt-mae", num_images=4)
    m2.load_state_dict(state, strict=True)
    assert m2.famt.ready and torch.equal(m2.famt.weights, m.famt.weights)
    with pytest.raises(ConfigError, match="num_images"):
        _build("famt-mae", num_images=3).refresh_weights(imgs)


def test_lazy_weights_are_not_saved_and_recomputed_after_resume():
    imgs = _images(4)
    m = _build("famt-mae", warmup_epochs=0, refresh_every=5)
    m.on_epoch_start(0, _DS(imgs.numpy()))
    state = m.state_dict()
    assert "famt.weights" not in state and int(state["famt.refreshed_at"]) == 0
    m2 = _build("famt-mae", warmup_epochs=0, refresh_every=5)
    m2.load_state_dict(state, strict=True)
    assert not m2.famt.ready  # weights not restored: random masking until the next epoch start
    m2.on_epoch_start(2, _DS(imgs.numpy()))  # not a scheduled refresh, but the weights are missing
    assert m2.famt.ready and int(m2.famt.refreshed_at) == 2


@pytest.mark.parametrize("name,expect", [("famt-mae", (48, 0)), ("famt-simmim", (7, 0))])
def test_warmup_is_plain_random_masking_without_throwing(name, expect):
    """Official code: random_masking(x, mask_ratio=0.75) before the first refresh, nothing thrown (MAE);
    SimMIM: 44% of the mask cells. 32 px, patch 4: 64 patches -> 48 masked; 16 cells -> 7 masked."""
    m = _build(name, size=32)
    assert not m.famt.ready
    x = torch.zeros(3, 3, 32, 32)
    batch = Batch(views=[x], index=torch.arange(3), params=[])
    split = m.sample_split(batch, x) if name == "famt-mae" else m.sample_cell_split(batch, x)
    assert (split.masked.shape[1], split.thrown.shape[1]) == expect
    assert int((split.state == THROWN).sum()) == 0
    m.refresh_weights(_images(3, 32))  # after a refresh: weighted masking AND throwing
    split = m.sample_split(batch, x) if name == "famt-mae" else m.sample_cell_split(batch, x)
    assert (split.masked.shape[1], split.thrown.shape[1]) == (m.n_mask, m.n_throw) and m.n_throw > 0


@pytest.mark.integration
def test_after_a_refresh_masking_falls_on_high_weight_patches():
    """FAMT's mechanism: after a refresh, masked patches land in the top quarter of each image's weights far
    more often than random masking puts them there (25%). The last block's attention is sharpened (q and k
    scaled by 6) as a stand-in for a trained encoder, whose CLS attention is concentrated; an untrained
    2-block ViT gives nearly flat weights (max/min about 1.5). Measured: 44% of the masked patches (the most
    possible is 16 of 29 = 55%) against 25% for random masking."""
    m = _build("famt-mae", size=32)
    with torch.no_grad():
        qkv = m.backbone.net.blocks[-1].attn.qkv
        qkv.weight[: 2 * qkv.weight.shape[1]] *= 6.0
    n = 16
    w = m.refresh_weights(_images(n, 32))
    top = torch.zeros_like(w, dtype=torch.bool).scatter_(1, w.argsort(1, descending=True)[:, :16], True)
    x = torch.zeros(n, 3, 32, 32)
    batch = Batch(views=[x], index=torch.arange(n), params=[])
    torch.manual_seed(0)
    share = [float(top.gather(1, m.sample_split(batch, x).masked).float().mean()) for _ in range(10)]
    rand = [float(top.gather(1, sample_split(n, 64, m.n_mask, m.n_throw).masked).float().mean()) for _ in range(10)]
    assert abs(np.mean(rand) - 0.25) < 0.03
    assert np.mean(share) > 0.38 and np.mean(share) > 1.5 * np.mean(rand)
