"""Tests for selfsup.eval: feature extraction, weighted kNN, linear probe, baselines, feature cache."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError, DataError
from selfsup.eval import knn as knn_mod
from selfsup.eval.baselines import evaluate_with_baselines, random_encoder_like, reinitialized_copy
from selfsup.eval.features import (
    autocast_context,
    cached_features,
    extract_features,
    pixel_features,
    raw_pixels,
    resolve_precision,
)
from selfsup.eval.knn import knn_accuracy, knn_predict, topk_accuracy
from selfsup.eval.linear import fit_standardizer, linear_probe, standardize_features

# ------------------------------------------------------------------------------------------------ helpers


def slow_knn_scores(train, labels, test, k, t, c):
    """Reference: explicit loop over test points (Wu et al. 2018, Sec. 3.4), in float64."""
    tr = train.double() / train.double().norm(dim=1, keepdim=True)
    te = test.double() / test.double().norm(dim=1, keepdim=True)
    out = torch.zeros(te.shape[0], c, dtype=torch.float64)
    for j in range(te.shape[0]):
        sims = [(float(tr[i] @ te[j]), int(labels[i])) for i in range(tr.shape[0])]
        sims.sort(key=lambda p: -p[0])
        for s, y in sims[: min(k, len(sims))]:
            out[j, y] += math.exp(s / t)
    return out


def clusters(n_per, c, f, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(c, f) * 3.0
    x = centres.repeat_interleave(n_per, 0) + noise * torch.randn(n_per * c, f, generator=g)
    y = torch.arange(c).repeat_interleave(n_per)
    return x, y


def stand_in_transform(x, size, *, channels_last=True, dtype=torch.float32):
    """Tiny replacement for views.eval_transform: uint8 NHWC -> float NCHW in [-1, 1], resized."""
    if x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    x = x.to(dtype) / 127.5 - 1.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


class TinyEncoder(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 6)
        self.num_features = 6
        self.seen_dtypes: list[torch.dtype] = []

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        out = self.fc(h)
        self.seen_dtypes.append(out.dtype)
        return out


def images(n=20, s=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, s, s, 3), dtype=np.uint8)


def dataset(n=20, s=8, c=3, seed=0, paths=True):
    imgs = images(n, s, seed)
    labels = np.arange(n, dtype=np.int64) % c
    return SimpleNamespace(images=imgs, labels=labels, classes=[str(i) for i in range(c)],
                           paths=[f"img{seed}_{i}.png" for i in range(n)] if paths else None, num_classes=c)


# ------------------------------------------------------------------------------------------------ kNN


@pytest.mark.parametrize("k,t", [(10, 0.1), (1, 0.07), (7, 0.5), (500, 0.2)])
def test_knn_matches_slow_reference(k, t):
    g = torch.Generator().manual_seed(1)
    tr, te = torch.randn(60, 8, generator=g), torch.randn(15, 8, generator=g)
    y = torch.randint(0, 4, (60,), generator=g)
    got = knn_predict(tr, y, te, k=k, temperature=t, num_classes=4, chunk_size=4, use_faiss=False)
    ref = slow_knn_scores(tr, y, te, k, t, 4)
    assert got.shape == (15, 4)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_knn_faiss_equals_torch():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(2)
    tr, te = torch.randn(300, 16, generator=g), torch.randn(40, 16, generator=g)
    y = torch.randint(0, 5, (300,), generator=g)
    a = knn_predict(tr, y, te, k=20, temperature=0.1, use_faiss=False)
    b = knn_predict(tr, y, te, k=20, temperature=0.1, use_faiss=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ref = slow_knn_scores(tr, y, te, 20, 0.1, 5)
    torch.testing.assert_close(b.double(), ref, rtol=1e-5, atol=1e-5)


def test_knn_auto_backend_picks_faiss_only_for_large_problems(monkeypatch):
    calls = []
    real = knn_mod._neighbours_faiss
    monkeypatch.setattr(knn_mod, "_neighbours_faiss", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(knn_mod, "faiss_available", lambda: True)
    tr, y, te = torch.randn(50, 4), torch.randint(0, 2, (50,)), torch.randn(10, 4)
    knn_predict(tr, y, te, k=5)
    assert calls == []
    monkeypatch.setattr(knn_mod, "FAISS_AUTO_PAIRS", 100)
    pytest.importorskip("faiss")
    knn_predict(tr, y, te, k=5)
    assert calls == [1]


def test_knn_separable_clusters_100_percent():
    tr_x, tr_y = clusters(20, 5, 16, seed=0)
    te_x, te_y = clusters(10, 5, 16, seed=1)
    res = knn_accuracy(tr_x, tr_y, te_x, te_y, k=20, temperature=0.1)
    assert res["top1"] == 100.0 and res["top5"] == 100.0
    assert res["k"] == 20 and res["temperature"] == 0.1


def test_knn_random_labels_near_chance():
    # 10 classes, 2,000 test points: top1 ~ Binomial(2000, 0.1)/20 -> std 0.67 points; tolerance 4 points (6 std)
    g = torch.Generator().manual_seed(3)
    tr, te = torch.randn(3000, 32, generator=g), torch.randn(2000, 32, generator=g)
    ytr, yte = torch.randint(0, 10, (3000,), generator=g), torch.randint(0, 10, (2000,), generator=g)
    res = knn_accuracy(tr, ytr, te, yte, k=50, temperature=0.1, num_classes=10)
    assert abs(res["top1"] - 10.0) < 4.0
    assert abs(res["top5"] - 50.0) < 6.0  # Binomial(2000, 0.5): std 1.1 points


def test_knn_k1_is_nearest_neighbour_and_independent_of_temperature():
    g = torch.Generator().manual_seed(4)
    tr, te = torch.randn(100, 6, generator=g), torch.randn(30, 6, generator=g)
    y = torch.randint(0, 7, (100,), generator=g)
    cos = F.normalize(te, dim=1) @ F.normalize(tr, dim=1).t()
    nn_label = y[cos.argmax(1)]
    for t in (0.01, 0.1, 1.0, 10.0):
        scores = knn_predict(tr, y, te, k=1, temperature=t, num_classes=7)
        assert torch.equal(scores.argmax(1), nn_label)
        assert int((scores > 0).sum()) == 30  # exactly one voting class per test point
    accs = {knn_accuracy(tr, y, te, nn_label, k=1, temperature=t)["top1"] for t in (0.05, 0.5, 5.0)}
    assert accs == {100.0}


def test_knn_scale_invariance_and_small_temperature():
    g = torch.Generator().manual_seed(5)
    tr, te = torch.randn(80, 5, generator=g), torch.randn(20, 5, generator=g)
    y = torch.randint(0, 3, (80,), generator=g)
    a = knn_predict(tr, y, te, k=9, temperature=0.2)
    b = knn_predict(3.0 * tr, y, 0.5 * te, k=9, temperature=0.2)  # cosine: positive scaling is irrelevant
    torch.testing.assert_close(a, b)
    # T = 0.005 would overflow float32 (e^200); scores are then scaled by exp(-1/T) but rank the same
    s = knn_predict(tr, y, te, k=9, temperature=0.005)
    assert torch.isfinite(s).all()
    ref = slow_knn_scores(tr, y, te, 9, 0.005, 3)
    assert torch.equal(s.argmax(1), ref.argmax(1))


def test_top5_at_least_top1_and_topk_accuracy():
    g = torch.Generator().manual_seed(6)
    tr, te = torch.randn(200, 8, generator=g), torch.randn(100, 8, generator=g)
    ytr, yte = torch.randint(0, 20, (200,), generator=g), torch.randint(0, 20, (100,), generator=g)
    res = knn_accuracy(tr, ytr, te, yte, k=30, num_classes=20)
    assert res["top5"] >= res["top1"]
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(scores, torch.tensor([2, 0, 0]), ks=(1, 2, 5))
    assert acc["top1"] == pytest.approx(100 / 3) and acc["top2"] == pytest.approx(200 / 3)
    assert acc["top5"] == 100.0  # fewer classes than 5: every label is in the top 5


def test_knn_bad_inputs():
    tr, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    with pytest.raises(DataError):
        knn_predict(tr, y, torch.randn(3, 5))
    with pytest.raises(ConfigError):
        knn_predict(tr, y, torch.randn(3, 4), k=0)
    with pytest.raises(ConfigError):
        knn_predict(tr, y, torch.randn(3, 4), temperature=0.0)
    with pytest.raises(DataError):
        knn_predict(tr, -torch.ones(10, dtype=torch.long), torch.randn(3, 4))


# ------------------------------------------------------------------------------------------------ linear


def test_linear_separable_clusters_100_percent():
    tr_x, tr_y = clusters(30, 5, 16, noise=0.3, seed=0)
    te_x, te_y = clusters(20, 5, 16, noise=0.3, seed=1)
    res = linear_probe(tr_x, tr_y, te_x, te_y, num_classes=5, epochs=50)
    assert res["top1"] == 100.0 and res["train_top1"] == 100.0
    assert res["top5"] >= res["top1"]


def test_linear_random_labels_near_chance():
    # Binomial(2000, 0.1): std 0.67 points; tolerance 4 points
    g = torch.Generator().manual_seed(7)
    tr, te = torch.randn(2000, 32, generator=g), torch.randn(2000, 32, generator=g)
    ytr, yte = torch.randint(0, 10, (2000,), generator=g), torch.randint(0, 10, (2000,), generator=g)
    res = linear_probe(tr, ytr, te, yte, num_classes=10, epochs=50)
    assert abs(res["top1"] - 10.0) < 4.0
    assert res["top5"] >= res["top1"]


def test_linear_matches_sklearn_optimum():
    sklm = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(8)
    w_true = torch.randn(12, 4, generator=g)
    x = torch.randn(600, 12, generator=g) * torch.linspace(0.5, 3, 12) + 1.0
    y = (x @ w_true + 2.0 * torch.randn(600, 4, generator=g)).argmax(1)
    wd = 1e-2
    res = linear_probe(x, y, x, y, num_classes=4, epochs=300, weight_decay=wd)
    mean, std = fit_standardizer(x)
    xs = standardize_features(x, mean, std).double().numpy()
    # ours: mean CE + wd/2 ||W||^2  <=>  sklearn: C * sum CE + 1/2 ||W||^2 with C = 1/(wd N)
    clf = sklm.LogisticRegression(C=1.0 / (wd * 600), max_iter=5000, tol=1e-10).fit(xs, y.numpy())
    p = torch.from_numpy(clf.predict_proba(xs))
    sk_loss = float(F.nll_loss(p.log(), y)) + 0.5 * wd * float((torch.from_numpy(clf.coef_) ** 2).sum())
    assert res["train_loss"] == pytest.approx(sk_loss, rel=1e-4)
    assert res["top1"] == pytest.approx(100.0 * clf.score(xs, y.numpy()), abs=0.5)


def test_linear_deterministic_under_seed():
    g = torch.Generator().manual_seed(9)
    tr, te = torch.randn(300, 10, generator=g), torch.randn(100, 10, generator=g)
    ytr, yte = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (100,), generator=g)
    for opt in ("lbfgs", "adamw"):
        kw = {"num_classes": 3, "epochs": 5, "seed": 3, "optimizer": opt, "batch_size": 64}
        torch.manual_seed(0)
        a = linear_probe(tr, ytr, te, yte, **kw)
        torch.manual_seed(123)  # the global RNG must not matter
        b = linear_probe(tr, ytr, te, yte, **kw)
        assert a == b
        assert a["optimizer"] == opt and a["seed"] == 3


def test_standardisation_uses_train_statistics_only():
    x = torch.randn(50, 3) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([2.0, -1.0, 7.0])
    mean, std = fit_standardizer(x)
    torch.testing.assert_close(mean, torch.from_numpy(x.numpy().mean(0)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std, torch.from_numpy(x.numpy().std(0)), rtol=1e-5, atol=1e-5)
    z = standardize_features(x, mean, std)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    # Train: class 0 at -1, class 1 at +1. Test: class-1 points far to the right (5..6). With train
    # statistics they are all class 1 (100%); standardising the test set by its own mean would put half
    # of them below zero and score ~50%.
    tr = torch.tensor([[-1.0], [-1.1], [-0.9], [1.0], [1.1], [0.9]])
    ytr = torch.tensor([0, 0, 0, 1, 1, 1])
    te = torch.linspace(5.0, 6.0, 10)[:, None]
    yte = torch.ones(10, dtype=torch.long)
    assert linear_probe(tr, ytr, te, yte, num_classes=2, epochs=30)["top1"] == 100.0


def test_linear_auto_weight_decay_uses_train_split_only():
    tr_x, tr_y = clusters(40, 3, 8, noise=2.0, seed=0)
    te_x, te_y = clusters(10, 3, 8, noise=2.0, seed=1)
    grid = (1e-4, 1e-2, 1.0)
    a = linear_probe(tr_x, tr_y, te_x, te_y, num_classes=3, epochs=20, weight_decay="auto", wd_grid=grid)
    b = linear_probe(tr_x, tr_y, te_x, (te_y + 1) % 3, num_classes=3, epochs=20, weight_decay="auto", wd_grid=grid)
    assert set(a["wd_search"]) == {"0.0001", "0.01", "1"}
    assert a["wd_search"] == b["wd_search"] and a["weight_decay"] == b["weight_decay"]  # test labels unused
    best = max(a["wd_search"].values())
    assert a["wd_search"][f"{a['weight_decay']:g}"] == best
    with pytest.raises(ConfigError):
        linear_probe(tr_x, tr_y, te_x, te_y, num_classes=3, weight_decay="big")


def test_linear_bad_inputs():
    x, y = torch.randn(10, 3), torch.randint(0, 2, (10,))
    with pytest.raises(DataError):
        linear_probe(x, y, x, y + 5, num_classes=2)
    with pytest.raises(ConfigError):
        linear_probe(x, y, x, y, num_classes=2, optimizer="sgd")


# ------------------------------------------------------------------------------------------------ features


def test_resolve_precision(monkeypatch):
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError):
        resolve_precision("int8", cpu)
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    import selfsup.runtime as runtime  # the one implementation, shared with the training loop

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", cpu) is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") is None


def test_autocast_context():
    assert isinstance(autocast_context("cpu", None), contextlib.nullcontext)
    with autocast_context("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_extract_features_shapes_eval_mode_and_batch_independence():
    torch.manual_seed(0)
    enc = TinyEncoder()
    enc.train()
    enc.bn.running_mean.fill_(0.3)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    imgs = images(20, 8)
    kw = {"image_size": 8, "precision": "fp32", "transform": stand_in_transform}
    a = extract_features(enc, imgs, batch_size=7, **kw)
    b = extract_features(enc, imgs, batch_size=64, **kw)
    c = extract_features(enc, torch.from_numpy(imgs), batch_size=5, image_size=12, precision="fp32",
                         transform=stand_in_transform)
    assert a.shape == (20, 6) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert c.shape == (20, 6)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for k, v in enc.state_dict().items():  # BatchNorm running stats untouched
        assert torch.equal(v, before[k]), k
    assert enc.training  # previous mode restored
    # eval mode during extraction: per-sample features do not depend on the rest of the batch
    enc.eval()
    single = torch.cat([enc(stand_in_transform(torch.from_numpy(imgs[i : i + 1]), 8)) for i in range(20)])
    torch.testing.assert_close(a, single.detach(), rtol=1e-5, atol=1e-6)


def test_extract_features_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    enc = TinyEncoder()
    imgs = images(6, 8)
    f32 = extract_features(enc, imgs, image_size=8, precision="fp32", transform=stand_in_transform)
    enc.seen_dtypes.clear()
    bf = extract_features(enc, imgs, image_size=8, precision="bf16", transform=stand_in_transform)
    assert enc.seen_dtypes == [torch.bfloat16]
    assert bf.dtype == torch.float32
    torch.testing.assert_close(bf, f32, rtol=5e-2, atol=5e-2)


def test_extract_features_with_real_eval_transform():
    enc = TinyEncoder()
    f = extract_features(enc, images(5, 8), image_size=16, precision="fp32")
    assert f.shape == (5, 6) and torch.isfinite(f).all()


def test_extract_features_empty_raises():
    with pytest.raises(DataError):
        extract_features(TinyEncoder(), np.zeros((0, 8, 8, 3), np.uint8), image_size=8, transform=stand_in_transform)


def test_pixel_features_mean_centred():
    imgs = images(30, 6)
    raw = raw_pixels(imgs)
    torch.testing.assert_close(raw, torch.from_numpy(imgs.reshape(30, -1).astype(np.float32) / 255.0))
    p = pixel_features(imgs)
    assert p.shape == (30, 6 * 6 * 3)
    torch.testing.assert_close(p.mean(0), torch.zeros(p.shape[1]), atol=1e-6, rtol=0)
    torch.testing.assert_close(p, raw - raw.mean(0))
    small = pixel_features(imgs, size=3)
    assert small.shape == (30, 27)
    torch.testing.assert_close(small.mean(0), torch.zeros(27), atol=1e-6, rtol=0)
    m = torch.full((108,), 0.5)
    torch.testing.assert_close(pixel_features(imgs, mean=m), raw - 0.5)


def test_cached_features_reuses_safetensors(tmp_path):
    torch.manual_seed(0)
    enc = TinyEncoder()
    ds = dataset(12, 8)
    kw = {"cache_dir": tmp_path, "image_size": 8, "precision": "fp32", "transform": stand_in_transform}
    a = cached_features(enc, ds, key="ckpt-A", **kw)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1
    calls = len(enc.seen_dtypes)
    b = cached_features(enc, ds, key="ckpt-A", **kw)
    assert len(enc.seen_dtypes) == calls  # loaded, not recomputed
    assert torch.equal(a, b)
    cached_features(enc, ds, key="ckpt-B", **kw)  # another checkpoint: another file
    cached_features(enc, dataset(12, 8, seed=1), key="ckpt-A", **kw)  # other paths: another file
    assert len(list(tmp_path.glob("*.safetensors"))) == 3
    files[0].write_bytes(b"not a safetensors file")  # corrupt: recomputed
    c = cached_features(enc, ds, key="ckpt-A", **kw)
    assert torch.equal(a, c)
    nopaths = dataset(12, 8, paths=False)
    torch.testing.assert_close(cached_features(enc, nopaths, key="ckpt-A", **kw), a)


# ------------------------------------------------------------------------------------------------ baselines


def test_random_encoder_like_seeded():
    torch.manual_seed(42)
    state = torch.get_rng_state()
    a, b, c = (random_encoder_like(TinyEncoder, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    assert not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv.weight, c.conv.weight)


class WithRawParam(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, 4))
        self.lin = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)

    def forward(self, x):
        return self.ln(self.lin(x + self.pos))


def test_reinitialized_copy_redraws_every_parameter():
    m = WithRawParam()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.5 + 1.0)  # "trained" weights
    r = reinitialized_copy(m, seed=0)
    for (name, p), q in zip(m.named_parameters(), r.parameters()):
        assert not torch.equal(p, q), name
    torch.testing.assert_close(r.ln.weight, torch.ones(4))
    assert all(torch.equal(p, q) for p, q in zip(r.parameters(), reinitialized_copy(m, seed=0).parameters()))


@pytest.mark.parametrize("protocol,kw", [("knn", {"k": 5}), ("linear", {"epochs": 10})])
def test_evaluate_with_baselines(protocol, kw, tmp_path):
    torch.manual_seed(0)
    enc = TinyEncoder()
    tr, te = dataset(24, 8, seed=0), dataset(12, 8, seed=1)
    res = evaluate_with_baselines(
        protocol, encoder=enc, train=tr, test=te, image_size=8, encoder_factory=TinyEncoder,
        transform=stand_in_transform, precision="fp32", progress=False, cache_dir=tmp_path, cache_key="x", **kw,
    )
    assert set(res) == {"encoder", "pixels", "random"}
    for r in res.values():
        assert 0.0 <= r["top1"] <= r["top5"] <= 100.0
    res2 = evaluate_with_baselines(
        protocol, encoder=enc, train=tr, test=te, image_size=8, baselines=("random",),
        transform=stand_in_transform, precision="fp32", progress=False, **kw,
    )
    assert set(res2) == {"encoder", "random"}
    assert res2["encoder"] == res["encoder"]


def test_evaluate_with_baselines_pixel_knn_matches_direct():
    tr, te = dataset(24, 8, seed=0), dataset(12, 8, seed=1)
    res = evaluate_with_baselines("knn", encoder=TinyEncoder(), train=tr, test=te, image_size=8, baselines=("pixels",),
                                  transform=stand_in_transform, precision="fp32", progress=False, k=3)
    rtr = raw_pixels(tr.images)
    m = rtr.mean(0)
    direct = knn_accuracy(rtr - m, torch.as_tensor(tr.labels), raw_pixels(te.images) - m, torch.as_tensor(te.labels),
                          k=3, num_classes=3)
    assert res["pixels"] == direct


def test_evaluate_with_baselines_errors():
    tr = dataset(6, 8)
    unl = SimpleNamespace(**{**vars(dataset(6, 8)), "labels": None})
    with pytest.raises(DataError, match="labels"):
        evaluate_with_baselines("knn", encoder=TinyEncoder(), train=tr, test=unl, image_size=8,
                                transform=stand_in_transform, progress=False)
    with pytest.raises(ConfigError):
        evaluate_with_baselines("svm", encoder=TinyEncoder(), train=tr, test=tr, image_size=8)
