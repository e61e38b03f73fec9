"""SimCLR and BYOL losses against their papers' formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses.contrastive import info_nce_loss, multi_view_nt_xent_loss, nt_xent_loss
from selfsup.losses.distillation import byol_loss, negative_cosine_loss


def nt_xent_reference(z1, z2, t, decoupled=False):
    """Slow NT-Xent straight from SimCLR Alg. 1: l(i,j) = -log exp(s_ij/t) / sum_{k!=i} exp(s_ik/t);
    decoupled: DCL (arXiv 2110.06848, Eq. 6), the sum over k != i, j."""
    z = torch.cat([z1, z2]).double()
    n = z.shape[0]
    b = z1.shape[0]
    sim = [[F.cosine_similarity(z[i], z[k], dim=0).item() for k in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        j = i + b if i < b else i - b
        denom = sum(math.exp(sim[i][k] / t) for k in range(n) if k != i and not (decoupled and k == j))
        total += -math.log(math.exp(sim[i][j] / t) / denom)
    return total / n


@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_nt_xent_matches_reference(t):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(nt_xent_reference(z1, z2, t), abs=1e-5)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_decoupled_nt_xent_matches_reference(t):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    got = nt_xent_loss(z1, z2, t, decoupled=True).item()
    assert got == pytest.approx(nt_xent_reference(z1, z2, t, decoupled=True), abs=1e-5)
    assert got < nt_xent_loss(z1, z2, t).item()  # a smaller denominator: strictly below NT-Xent


def test_decoupled_closed_form_and_gradient():
    # identical orthonormal views: -1/t + log(2B - 2) (all 2B - 2 negatives at similarity 0)
    b, t = 4, 0.5
    z = torch.eye(b, 8)
    assert nt_xent_loss(z, z.clone(), t, decoupled=True).item() == pytest.approx(-1 / t + math.log(2 * b - 2), abs=1e-6)
    z1 = torch.randn(5, 6, requires_grad=True)
    nt_xent_loss(z1, torch.randn(5, 6), 0.2, decoupled=True).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # how training calls it: the logits come out in bf16
        loss = nt_xent_loss(z1, torch.randn(5, 6), 0.2, decoupled=True)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def multi_view_reference(views, t, decoupled=False):
    """Slow multi-crop NT-Xent: for each anchor view v of image i and each other view u of i,
    -log e^{s(v_i,u_i)} / (e^{s(v_i,u_i)} + sum over the views w_j of every other image j), averaged."""
    n_views, b = len(views), views[0].shape[0]
    z = [F.normalize(v.double(), dim=1) for v in views]
    total, count = 0.0, 0
    for v in range(n_views):
        for i in range(b):
            negs = sum(math.exp(float(z[v][i] @ z[w][j]) / t) for w in range(n_views) for j in range(b) if j != i)
            for u in range(n_views):
                if u != v:
                    pos = math.exp(float(z[v][i] @ z[u][i]) / t)
                    total += -math.log(pos / (negs + (0.0 if decoupled else pos)))
                    count += 1
    return total / count


@pytest.mark.parametrize("n_views", [3, 5])
@pytest.mark.parametrize("decoupled", [False, True])
def test_multi_view_nt_xent_matches_reference(n_views, decoupled):
    g = torch.Generator().manual_seed(n_views)
    views = [torch.randn(4, 6, generator=g) for _ in range(n_views)]
    got = multi_view_nt_xent_loss(views, 0.3, decoupled=decoupled).item()
    assert got == pytest.approx(multi_view_reference(views, 0.3, decoupled), abs=1e-5)


@pytest.mark.parametrize("decoupled", [False, True])
def test_multi_view_nt_xent_is_nt_xent_for_two_views(decoupled):
    g = torch.Generator().manual_seed(11)
    z1, z2 = torch.randn(7, 5, generator=g, requires_grad=True), torch.randn(7, 5, generator=g)
    a = multi_view_nt_xent_loss([z1, z2], 0.2, decoupled=decoupled)
    b = nt_xent_loss(z1, z2, 0.2, decoupled=decoupled)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)
    (ga,) = torch.autograd.grad(a, z1)
    (gb,) = torch.autograd.grad(b, z1)
    assert torch.allclose(ga, gb, atol=1e-6)


def test_multi_view_nt_xent_bf16_autocast_and_bad_input():
    views = [torch.randn(5, 6, requires_grad=True) for _ in range(4)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = multi_view_nt_xent_loss(views, 0.1)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for v in views)
    with pytest.raises(ValueError, match="at least 2 views"):
        multi_view_nt_xent_loss([views[0]], 0.1)
    with pytest.raises(ValueError, match="equal shape"):
        multi_view_nt_xent_loss([views[0], torch.randn(4, 6)], 0.1)


def test_nt_xent_closed_form_orthogonal_identical_views():
    # identical views of B orthonormal embeddings: positive similarity 1, the other view's copy is
    # the positive, 2B-2 negatives with similarity 0 -> loss = -log(e^{1/t} / (e^{1/t} + (2B-2)))
    b, t = 4, 0.5
    z = torch.eye(b, 8)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * b - 2))
    assert nt_xent_loss(z, z.clone(), t).item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_symmetric_and_scale_invariant():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    a = nt_xent_loss(z1, z2, 0.2)
    assert nt_xent_loss(z2, z1, 0.2).item() == pytest.approx(a.item(), abs=1e-6)
    assert nt_xent_loss(3 * z1, 0.5 * z2, 0.2).item() == pytest.approx(a.item(), abs=1e-6)


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        nt_xent_loss(torch.randn(4, 3), torch.randn(5, 3))


def test_info_nce_reference():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    t = 0.3
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    ref = sum(-math.log(math.exp((qn[i] @ kn[i]).item() / t) / sum(math.exp((qn[i] @ kn[j]).item() / t)
                                                                     for j in range(4))) for i in range(4)) / 4
    assert info_nce_loss(q, k, t).item() == pytest.approx(ref, abs=1e-5)


def test_byol_loss_formula():
    g = torch.Generator().manual_seed(3)
    p, z = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    ref = ((F.normalize(p, dim=1) - F.normalize(z, dim=1)) ** 2).sum(1).mean()  # Eq. 2
    assert byol_loss(p, z).item() == pytest.approx(ref.item(), abs=1e-6)
    assert byol_loss(p, p.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, abs=1e-6)


def test_byol_loss_stops_gradient_to_target():
    p = torch.randn(3, 4, requires_grad=True)
    z = torch.randn(3, 4, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None
    z.grad = None
    negative_cosine_loss(p, z).backward()
    assert z.grad is None


def test_negative_cosine_bounds():
    p = torch.randn(3, 4)
    assert negative_cosine_loss(p, p).item() == pytest.approx(-1.0, abs=1e-6)
