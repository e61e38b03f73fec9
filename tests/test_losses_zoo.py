"""Zoo losses against slow references written from the papers' equations, closed forms and invariants."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses.clustering import sinkhorn, swav_loss
from selfsup.losses.contrastive import (
    enqueue,
    moco_queue_loss,
    mocov3_loss,
    nearest_neighbour,
    nnclr_loss,
)
from selfsup.losses.dino import dino_center_update, dino_loss, teacher_temperature
from selfsup.losses.redundancy import barlow_twins_loss, vicreg_loss, vicreg_terms

TOL = 1e-5


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / math.sqrt(float((v * v).sum()))


def _ref_infonce_row(q: torch.Tensor, pos: torch.Tensor, cands: list[torch.Tensor], tau: float) -> float:
    """-log exp(q.pos/tau) / sum_c exp(q.c/tau) with unit vectors, one anchor at a time."""
    num = math.exp(float(_unit(q) @ _unit(pos)) / tau)
    den = sum(math.exp(float(_unit(q) @ _unit(c)) / tau) for c in cands)
    return -math.log(num / den)


def test_moco_queue_loss_matches_loop() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, queue = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g), torch.randn(7, 6, generator=g)
    ref = sum(_ref_infonce_row(q[i], k[i], [k[i]] + list(queue), 0.2) for i in range(5)) / 5
    assert float(moco_queue_loss(q, k, queue, 0.2)) == pytest.approx(ref, abs=TOL)


def test_mocov3_loss_matches_loop() -> None:
    g = torch.Generator().manual_seed(1)
    q1, q2, k1, k2 = (torch.randn(4, 5, generator=g) for _ in range(4))
    tau = 0.5

    def ctr(q: torch.Tensor, k: torch.Tensor) -> float:
        return sum(_ref_infonce_row(q[i], k[i], list(k), tau) for i in range(4)) / 4 * 2 * tau

    ref = ctr(q1, k2) + ctr(q2, k1)
    assert float(mocov3_loss(q1, q2, k1, k2, tau)) == pytest.approx(ref, abs=TOL)


def test_nearest_neighbour_and_nnclr_loss_match_loop() -> None:
    g = torch.Generator().manual_seed(2)
    z, support, p = torch.randn(4, 3, generator=g), torch.randn(9, 3, generator=g), torch.randn(4, 3, generator=g)
    nn_z = nearest_neighbour(z, support)
    for i in range(4):
        sims = [float(_unit(z[i]) @ _unit(s)) for s in support]
        best = max(range(9), key=lambda j: sims[j])
        assert torch.allclose(nn_z[i], _unit(support[best]), atol=1e-6)
    ref = sum(_ref_infonce_row(nn_z[i], p[i], list(p), 0.1) for i in range(4)) / 4
    assert float(nnclr_loss(nn_z, p, 0.1)) == pytest.approx(ref, abs=1e-4 * max(1.0, ref))


def test_enqueue_pointer_arithmetic() -> None:
    queue = torch.zeros(5, 2)
    ptr = torch.zeros(1, dtype=torch.long)
    filled = torch.zeros(1, dtype=torch.long)
    keys = torch.arange(1, 7, dtype=torch.float32).repeat(2, 1).T  # rows 1..6
    enqueue(queue, ptr, keys[:3], filled)
    assert int(ptr) == 3 and int(filled) == 3
    assert queue[:3, 0].tolist() == [1, 2, 3] and queue[3:, 0].tolist() == [0, 0]
    enqueue(queue, ptr, keys[3:6], filled)  # wraps around: rows 3, 4, 0
    assert int(ptr) == 1 and int(filled) == 5
    assert queue[:, 0].tolist() == [6, 2, 3, 4, 5]
    # more keys than slots: only the newest 5 survive, pointer moves by n mod K
    big = torch.arange(10, 17, dtype=torch.float32).repeat(2, 1).T  # 7 rows 10..16
    enqueue(queue, ptr, big, filled)
    assert int(ptr) == (1 + 7) % 5 and int(filled) == 5
    assert sorted(queue[:, 0].tolist()) == [12, 13, 14, 15, 16]
    assert queue[(int(ptr) - 1) % 5, 0] == 16  # newest just before the pointer


def _ref_barlow(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float = 1e-5) -> float:
    n, d = z1.shape

    def std(z: torch.Tensor) -> list[list[float]]:
        out = [[0.0] * d for _ in range(n)]
        for j in range(d):
            col = [float(z[b, j]) for b in range(n)]
            mu = sum(col) / n
            var = sum((c - mu) ** 2 for c in col) / n
            for b in range(n):
                out[b][j] = (col[b] - mu) / math.sqrt(var + eps)
        return out

    a, bb = std(z1), std(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[b][i] * bb[b][j] for b in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lambd * c**2
    return loss


def test_barlow_twins_matches_loop() -> None:
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    ref = _ref_barlow(z1, z2, 5e-3)
    assert float(barlow_twins_loss(z1, z2, 5e-3)) == pytest.approx(ref, rel=1e-5, abs=TOL)


def test_barlow_twins_zero_for_identical_decorrelated_standardized() -> None:
    # columns of a Hadamard matrix without its constant column: zero mean, unit variance, uncorrelated
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    h8 = torch.kron(torch.kron(h2, h2), h2)
    z = h8[:, 1:]  # [8, 7]
    assert float(barlow_twins_loss(z, z.clone(), 5e-3)) < TOL


def _ref_vicreg(z1: torch.Tensor, z2: torch.Tensor, lam: float, mu: float, nu: float, gamma: float, eps: float) -> float:
    n, d = z1.shape
    inv = sum(float(z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)

    def var_cov(z: torch.Tensor) -> tuple[float, float]:
        cols = [[float(z[b, j]) for b in range(n)] for j in range(d)]
        means = [sum(c) / n for c in cols]
        cov = [[sum((cols[i][b] - means[i]) * (cols[j][b] - means[j]) for b in range(n)) / (n - 1) for j in range(d)]
               for i in range(d)]
        v = sum(max(0.0, gamma - math.sqrt(cov[j][j] + eps)) for j in range(d)) / d
        c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    v1, c1 = var_cov(z1)
    v2, c2 = var_cov(z2)
    return lam * inv + mu * (v1 + v2) / 2 + nu * (c1 + c2)


def test_vicreg_matches_loop() -> None:
    g = torch.Generator().manual_seed(4)
    z1, z2 = 0.7 * torch.randn(6, 4, generator=g), 0.7 * torch.randn(6, 4, generator=g)
    ref = _ref_vicreg(z1, z2, 25.0, 25.0, 1.0, 1.0, 1e-4)
    assert float(vicreg_loss(z1, z2)) == pytest.approx(ref, rel=1e-5, abs=TOL)


def test_vicreg_variance_term_zero_when_std_at_least_gamma() -> None:
    g = torch.Generator().manual_seed(5)
    z = torch.randn(16, 4, generator=g)
    z = 2.0 * (z - z.mean(0)) / z.std(0)  # every std is exactly 2 >= gamma = 1
    _, var, _ = vicreg_terms(z, z.flip(0))
    assert float(var) == 0.0
    inv, _, _ = vicreg_terms(z, z.clone())
    assert float(inv) == 0.0


def _ref_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """Alg. 1 of SwAV with explicit loops: alternate row (prototype) and column (sample) scaling."""
    b, k = scores.shape
    q = [[math.exp(float(scores[i, j]) / eps) for i in range(b)] for j in range(k)]  # [K][B]
    tot = sum(sum(r) for r in q)
    q = [[v / tot for v in r] for r in q]
    for _ in range(iters):
        for j in range(k):
            s = sum(q[j])
            q[j] = [v / s / k for v in q[j]]
        for i in range(b):
            s = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / s / b
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)])


def test_sinkhorn_matches_loop() -> None:
    g = torch.Generator().manual_seed(6)
    scores = torch.randn(5, 3, generator=g).clamp(-1, 1)
    assert torch.allclose(sinkhorn(scores, 0.05, 3), _ref_sinkhorn(scores, 0.05, 3), atol=TOL)


def test_sinkhorn_marginals() -> None:
    g = torch.Generator().manual_seed(7)
    b, k = 12, 4
    q = sinkhorn(torch.randn(b, k, generator=g).clamp(-1, 1), epsilon=0.5, iterations=200)
    assert torch.allclose(q.sum(dim=1), torch.ones(b), atol=TOL)  # each sample's code sums to 1
    assert torch.allclose(q.sum(dim=0), torch.full((k,), b / k), atol=TOL)  # equal partition
    q3 = sinkhorn(torch.randn(b, k, generator=g), epsilon=0.05, iterations=3)
    assert torch.allclose(q3.sum(dim=1), torch.ones(b), atol=TOL)  # exact after the last column step


def test_swav_loss_matches_loop() -> None:
    g = torch.Generator().manual_seed(8)
    scores = [torch.randn(3, 4, generator=g) for _ in range(3)]
    codes = [torch.softmax(torch.randn(3, 4, generator=g), 1) for _ in range(2)]
    tau = 0.1
    ref = 0.0
    for q, s in zip(codes, [0, 1]):
        sub = 0.0
        for v in range(3):
            if v == s:
                continue
            for b in range(3):
                logits = [float(x) / tau for x in scores[v][b]]
                lse = math.log(sum(math.exp(x) for x in logits))
                sub += -sum(float(q[b, kk]) * (logits[kk] - lse) for kk in range(4)) / 3
        ref += sub / 2
    ref /= 2
    assert float(swav_loss(scores, codes, [0, 1], tau)) == pytest.approx(ref, rel=1e-5, abs=TOL)


def test_dino_loss_matches_loop() -> None:
    g = torch.Generator().manual_seed(9)
    student = [torch.randn(3, 5, generator=g) for _ in range(4)]
    teacher = [torch.randn(3, 5, generator=g) for _ in range(2)]
    center = 0.1 * torch.randn(1, 5, generator=g)
    ts, tt = 0.1, 0.04
    ref, n = 0.0, 0
    for it in range(2):
        for iv in range(4):
            if it == iv:
                continue
            for b in range(3):
                t = [(float(teacher[it][b, k]) - float(center[0, k])) / tt for k in range(5)]
                tl = math.log(sum(math.exp(x) for x in t))
                s = [float(student[iv][b, k]) / ts for k in range(5)]
                sl = math.log(sum(math.exp(x) for x in s))
                ref += -sum(math.exp(t[k] - tl) * (s[k] - sl) for k in range(5)) / 3
            n += 1
    assert float(dino_loss(student, teacher, center, ts, tt)) == pytest.approx(ref / n, rel=1e-5, abs=TOL)


def test_dino_loss_of_identical_distributions_is_the_entropy() -> None:
    g = torch.Generator().manual_seed(10)
    t = torch.randn(4, 6, generator=g)
    center = torch.randn(1, 6, generator=g)
    ts, tt = 0.1, 0.04
    s = (t - center) * ts / tt  # student distribution softmax(s / ts) == teacher softmax((t - c) / tt)
    logp = torch.log_softmax((t - center) / tt, dim=1)
    entropy = float(-(logp.exp() * logp).sum(1).mean())
    assert float(dino_loss([s, s, s], [t, t], center, ts, tt)) == pytest.approx(entropy, abs=TOL)


def test_dino_center_update_formula() -> None:
    g = torch.Generator().manual_seed(11)
    c, t = torch.randn(1, 5, generator=g), torch.randn(8, 5, generator=g)
    assert torch.allclose(dino_center_update(c, t, 0.9), 0.9 * c + 0.1 * t.mean(0, keepdim=True), atol=1e-6)


def test_teacher_temperature_warmup() -> None:
    assert teacher_temperature(0.0) == pytest.approx(0.04)
    assert teacher_temperature(15.0) == pytest.approx(0.055)
    assert teacher_temperature(30.0) == pytest.approx(0.07)
    assert teacher_temperature(100.0) == pytest.approx(0.07)
