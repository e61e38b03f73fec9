"""Method-level invariants of the zoo: teachers, queues, centers, frozen layers, resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from selfsup.augment.views import make_views
from selfsup.losses.dino import dino_center_update
from selfsup.methods import Batch, Progress, registry
from selfsup.methods.rotnet import rotate_batch
from selfsup.models.backbones import CompactCNN

TINY = dict(proj_hidden_dim=16, proj_out_dim=8, pred_hidden_dim=8, queue_size=32, out_dim=32, head_hidden_dim=16,
            head_bottleneck_dim=8, num_prototypes=6, n_local_crops=1, queue_start_epoch=0)
B = 4


def build(name: str, seed: int = 0, **over: object) -> torch.nn.Module:
    spec = registry()[name]
    names = {f.name for f in dataclasses.fields(spec.config_cls)}
    kw = {k: v for k, v in {**TINY, **over}.items() if k in names}
    torch.manual_seed(seed)
    return spec.build(CompactCNN(width=2), spec.config_cls(**kw), image_size=16)


def batch(method: torch.nn.Module, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (B, 16, 16, 3), dtype=torch.uint8, generator=g)
    views, params = make_views(imgs, method.view_recipe, g, channels_last=False)
    return Batch(views=views, index=torch.arange(B), params=params)


def progress(step: int = 0, epoch: int = 0) -> Progress:
    return Progress(step=step, total_steps=100, epoch=epoch, steps_per_epoch=10)


@pytest.mark.parametrize("name", ["mocov2", "mocov3", "dino"])
def test_teachers_get_no_gradient(name: str) -> None:
    m = build(name)
    m(batch(m), progress()).loss.backward()
    teachers = [mod for n, mod in m.named_children() if n.startswith("teacher")]
    assert teachers
    for t in teachers:
        for p in t.parameters():
            assert not p.requires_grad and p.grad is None


def test_mocov2_queue_enqueue_dequeue() -> None:
    m = build("mocov2")
    old = m.queue.clone()
    b = batch(m)
    torch.manual_seed(1)
    m(b, progress())
    assert int(m.queue_ptr) == B
    assert torch.equal(m.queue[B:], old[B:])  # untouched
    torch.manual_seed(1)
    with torch.no_grad():
        k = F.normalize(m._keys(b.views[1]), dim=1)
    assert torch.allclose(m.queue[:B], k, atol=1e-5)  # newest keys at the old pointer
    for _ in range(7):  # 8 batches of 4 fill the 32 slots exactly: pointer back to 0
        m(b, progress())
    assert int(m.queue_ptr) == 0


def test_nnclr_support_set_update_and_lookup() -> None:
    m = build("nnclr")
    b = batch(m)
    assert int(m.queue_filled) == 0
    m(b, progress())
    assert int(m.queue_filled) == B and int(m.queue_ptr) == B
    with torch.no_grad():
        z1 = m.projector(m.backbone(torch.cat(b.views)))[:B]
    assert torch.allclose(m.queue[:B], F.normalize(z1, dim=1), atol=1e-5)
    nn1 = m.support_neighbours(torch.randn(3, m.queue.shape[1]))
    for row in nn1:  # every neighbour is a stored support vector
        assert torch.isclose((m.queue[:B] - row).abs().sum(1).min(), torch.tensor(0.0), atol=1e-6)


def test_dino_center_update_in_forward() -> None:
    m = build("dino")
    b = batch(m)
    c0 = m.center.clone()
    with torch.no_grad():
        t = m.teacher_head(m.teacher_backbone(torch.cat(b.views[:2])))
    m(b, progress())
    assert torch.allclose(m.center, dino_center_update(c0, t, 0.9), atol=1e-6)
    assert torch.allclose(m.center, 0.9 * c0 + 0.1 * t.mean(0, keepdim=True), atol=1e-6)


@pytest.mark.parametrize("name,attr", [("dino", "head.last_layer"), ("swav", "prototypes")])
def test_frozen_layers_in_first_epoch(name: str, attr: str) -> None:
    m = build(name)
    mod = m.get_submodule(attr)
    m(batch(m), progress(step=0, epoch=0)).loss.backward()
    for p in mod.parameters():
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    m.zero_grad(set_to_none=True)
    m(batch(m), progress(step=10, epoch=1)).loss.backward()
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in mod.parameters())


def test_simsiam_predictor_fixed_lr_group() -> None:
    m = build("simsiam")
    groups = m.param_groups()
    fixed = [g for g in groups if g.get("fixed_lr")]
    assert len(fixed) == 1
    assert {id(p) for p in fixed[0]["params"]} == {id(p) for p in m.predictor.parameters()}
    n_all = sum(len(g["params"]) for g in groups)
    assert n_all == len([p for p in m.parameters() if p.requires_grad])


def test_rotnet_rotations_and_labels() -> None:
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    xr, y = rotate_batch(x)
    assert y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for r in range(4):
        back = torch.rot90(xr[2 * r : 2 * r + 2], -r, dims=(-2, -1))
        assert torch.equal(back, x)
    assert torch.equal(xr[2, 0], torch.tensor([[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]))  # 90 deg counter-clockwise


@pytest.mark.parametrize("name", ["mocov2", "mocov3", "nnclr", "dino", "swav", "simclr"])
def test_resume_gives_identical_next_step(name: str) -> None:
    m = build(name, seed=0)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):  # fill queues / centers / teachers
        pr = progress(step=step + 10, epoch=1)
        torch.manual_seed(step)
        loss = m(batch(m, seed=step), pr).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_step(pr) if hasattr(m, "after_step") else None
    fresh = build(name, seed=123)
    fresh.load_state_dict(m.state_dict())
    pr = progress(step=12, epoch=1)
    b = batch(m, seed=5)
    torch.manual_seed(7)
    a = m(b, pr).loss
    torch.manual_seed(7)
    c = fresh(b, pr).loss
    assert torch.allclose(a, c, atol=1e-6)


def test_simclr_multicrop_views_and_loss_wiring() -> None:
    from selfsup.errors import ConfigError
    from selfsup.losses.contrastive import multi_view_nt_xent_loss, nt_xent_loss
    from selfsup.models.multiview import forward_by_size

    two = build("simclr", n_local_crops=0)
    assert [v.size for v in two.view_recipe.views] == [16, 16]
    m = build("simclr", n_local_crops=3, local_size=8, local_min_scale=0.1, local_max_scale=0.3, temperature=0.3)
    views = m.view_recipe.views
    assert [v.size for v in views] == [16, 16, 8, 8, 8]
    assert [v.scale for v in views] == [(0.08, 1.0)] * 2 + [(0.1, 0.3)] * 3  # globals keep min_scale
    b = batch(m)
    out = m(b, progress())
    z, h0 = forward_by_size(m.backbone, m.projector, b.views)
    assert len(z) == 5 and z[2].shape == z[0].shape
    assert torch.allclose(out.loss, multi_view_nt_xent_loss(z, 0.3), atol=1e-6)
    assert torch.allclose(out.embeddings, h0)
    out.loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    # two views: still exactly the paper's NT-Xent
    b2 = batch(two)
    z2, _ = forward_by_size(two.backbone, two.projector, b2.views)
    assert torch.allclose(two(b2, progress()).loss, nt_xent_loss(z2[0], z2[1], two.cfg.temperature), atol=1e-6)
    with pytest.raises(ConfigError, match="local_min_scale"):
        build("simclr", n_local_crops=2, local_min_scale=0.5, local_max_scale=0.4)
    with pytest.raises(ConfigError, match="n_local_crops"):
        build("simclr", n_local_crops=-1)
