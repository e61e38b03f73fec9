"""Evaluation protocols on tiny features with known structure, against formulas and slow references."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup.eval.clustering import clustering_metrics, hungarian_accuracy
from selfsup.eval.diagnostics import alignment, feature_std, rankme, uniformity
from selfsup.eval.fewshot import confidence_interval, fewshot_eval, logistic_predict
from selfsup.eval.finetune import encoder_blocks, parse_fraction, stratified_subset
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe
from selfsup.eval.retrieval import average_precision, retrieval_metrics

from .helpers import tiny_cli_run


def separable(n_per=20, classes=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per)
    x = F.one_hot(y, dim).float() * 5 + 0.2 * torch.randn(len(y), dim, generator=g)
    return x, y


def random_feats(n_per=50, classes=4, dim=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per)
    return torch.randn(len(y), dim, generator=g), y[torch.randperm(len(y), generator=g)]


# ------------------------------------------------------------------------------------------ separable = 100 %


@pytest.mark.integration  # imports sklearn/scipy/faiss the first time: a few seconds on a busy CPU
def test_separable_features_give_perfect_scores():
    x, y = separable()
    xt, yt = separable(seed=5)
    assert knn_accuracy(x, y, xt, yt, k=10)["top1"] == 100.0
    assert linear_probe(x, y, xt, yt, num_classes=4, epochs=30)["top1"] == 100.0
    c = clustering_metrics(xt, yt, n_init=2)
    assert c["accuracy"] == 100.0 and c["nmi"] == pytest.approx(100.0) and c["ari"] == pytest.approx(100.0)
    r = retrieval_metrics(x, y, xt, yt)
    assert r["mAP"] == pytest.approx(100.0) and r["recall@1"] == 100.0
    fs = fewshot_eval(xt, yt, n_way=4, k_shots=(1,), n_query=5, episodes=20)
    assert fs["1shot_prototype"] == 100.0 and fs["1shot_logistic"] == 100.0


def test_random_features_are_at_chance():
    # 4 balanced classes: chance = 25 %. Tolerances cover the sampling noise of 200 test points (sd ~3 %).
    x, y = random_feats()
    xt, yt = random_feats(seed=2)
    assert abs(knn_accuracy(x, y, xt, yt, k=20)["top1"] - 25) < 12
    c = clustering_metrics(xt, yt, n_init=2)
    assert c["nmi"] < 10 and abs(c["ari"]) < 5 and c["accuracy"] < 45
    r = retrieval_metrics(x, y, xt, yt)
    assert abs(r["mAP"] - 25) < 5  # AP of a random ranking ~ fraction of relevant items
    fs = fewshot_eval(xt, yt, n_way=4, k_shots=(1,), n_query=5, episodes=100, classifiers=("prototype",))
    assert abs(fs["1shot_prototype"] - 25) < 6


# ------------------------------------------------------------------------------------------ few-shot


def test_fewshot_ci_shrinks_with_episodes_and_matches_t_formula():
    x, y = random_feats(n_per=30, classes=6)
    cis = [fewshot_eval(x, y, n_way=5, k_shots=(1,), n_query=5, episodes=e, classifiers=("prototype",))
           ["1shot_prototype_ci95"] for e in (20, 80, 320)]
    assert cis[0] > cis[1] > cis[2] > 0
    vals = np.array([10.0, 20.0, 30.0, 40.0])
    mean, half = confidence_interval(vals)
    assert mean == 25.0 and half == pytest.approx(3.182446 * vals.std(ddof=1) / 2, rel=1e-5)  # t_{0.975,3}


def test_fewshot_logistic_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    xs = F.normalize(torch.randn(1, 15, 8, generator=g), dim=-1)
    ys = torch.arange(3).repeat_interleave(5)[None]
    xq = F.normalize(torch.randn(1, 40, 8, generator=g), dim=-1)
    pred = logistic_predict(xs, ys, 3, xq)[0].numpy()
    ref = LogisticRegression(C=1.0, max_iter=1000, tol=1e-10).fit(xs[0].numpy(), ys[0].numpy())
    assert (pred == ref.predict(xq[0].numpy())).mean() >= 0.975


# ------------------------------------------------------------------------------------------ retrieval


def test_map_on_a_hand_computed_example():
    # ranking relevance [1, 0, 1, 0, 1]: AP = (1/1 + 2/3 + 3/5) / 3
    ap = average_precision(torch.tensor([[True, False, True, False, True]]))
    assert float(ap) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0.0, 1.0]])
    yg = torch.tensor([0, 1, 0, 1, 0])
    q, yq = torch.tensor([[1.0, 0.0]]), torch.tensor([0])  # ranking = gallery order
    r = retrieval_metrics(g, yg, q, yq, ks=(1, 2, 5))
    assert r["mAP"] == pytest.approx(100 * (1 + 2 / 3 + 3 / 5) / 3, rel=1e-5)
    q2 = torch.tensor([[0.0, 1.0]])  # ranking reversed: relevance [1, 0, 1, 0, 1] again for label 0
    assert retrieval_metrics(g, yg, q2, yq)["mAP"] == pytest.approx(r["mAP"], rel=1e-5)
    q3, yq3 = torch.tensor([[1.0, 0.0]]), torch.tensor([1])  # relevance [0, 1, 0, 1, 0]: AP = (1/2 + 2/4) / 2
    assert retrieval_metrics(g, yg, q3, yq3)["mAP"] == pytest.approx(50.0, rel=1e-5)


def test_recall_never_decreases_with_k_and_matches_bruteforce():
    x, y = random_feats(n_per=20, classes=5)
    xt, yt = random_feats(n_per=6, classes=5, seed=3)
    ks = (1, 2, 3, 5, 10, 20)
    r = retrieval_metrics(x, y, xt, yt, ks=ks)
    vals = [r[f"recall@{k}"] for k in ks]
    assert all(a <= b for a, b in zip(vals, vals[1:]))
    sims = F.normalize(xt, dim=1) @ F.normalize(x, dim=1).t()
    for k in ks:
        top = sims.topk(k, dim=1).indices
        assert r[f"recall@{k}"] == pytest.approx(100 * float((y[top] == yt[:, None]).any(1).float().mean()))
    r2 = retrieval_metrics(x, y, xt, yt, ks=ks, map=False, use_faiss=True)
    assert [r2[f"recall@{k}"] for k in ks] == vals


# ------------------------------------------------------------------------------------------ clustering


def test_hungarian_accuracy_of_a_permuted_labelling_is_100():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    perm = np.array([2, 0, 1])
    assert hungarian_accuracy(y, perm[y]) == 100.0
    assert hungarian_accuracy(y, np.array([0, 0, 1, 1, 2, 2, 0])) == pytest.approx(100 * 6 / 7)


# ------------------------------------------------------------------------------------------ diagnostics


def test_rankme_full_rank_and_rank_one():
    assert rankme(torch.eye(32)) == pytest.approx(32, rel=1e-4)
    g = torch.Generator().manual_seed(0)
    assert rankme(torch.randn(50, 1, generator=g) @ torch.randn(1, 16, generator=g)) == pytest.approx(1.0, abs=1e-3)
    # slow reference: entropy of normalised singular values via numpy
    z = torch.randn(40, 10, generator=g)
    s = np.linalg.svd(z.double().numpy(), compute_uv=False)
    p = s / s.sum() + 1e-7
    assert rankme(z) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)


def test_alignment_uniformity_vs_slow_references():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, 6, generator=g), torch.randn(30, 6, generator=g)
    na, nb = F.normalize(a, dim=1).double(), F.normalize(b, dim=1).double()
    ref_align = sum(float((na[i] - nb[i]).norm() ** 2) for i in range(30)) / 30
    assert alignment(a, b) == pytest.approx(ref_align, rel=1e-6)
    assert alignment(a, a) == pytest.approx(0.0, abs=1e-12)
    pairs = [math.exp(-2 * float((na[i] - na[j]).norm() ** 2)) for i in range(30) for j in range(i + 1, 30)]
    assert uniformity(a) == pytest.approx(math.log(sum(pairs) / len(pairs)), rel=1e-6)
    assert uniformity(torch.ones(10, 4)) == pytest.approx(0.0, abs=1e-9)  # collapsed: the maximum, 0
    assert feature_std(torch.ones(10, 4)) == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------------------------------ fine-tune helpers


def test_stratified_subset_and_fractions():
    y = np.repeat(np.arange(4), [100, 50, 10, 3])
    sub = stratified_subset(y, 0.1, seed=0)
    assert list(np.bincount(y[sub])) == [10, 5, 1, 1]
    assert np.array_equal(sub, stratified_subset(y, 0.1, seed=0))
    assert not np.array_equal(sub, stratified_subset(y, 0.1, seed=1))
    assert parse_fraction("1%") == 0.01 and parse_fraction("100%") == 1.0 and parse_fraction("0.1") == 0.1
    from selfsup.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_fraction("0%")


def test_encoder_blocks_follow_forward_order():
    from selfsup.config import BackboneConfig
    from selfsup.models.backbones import build_backbone

    enc = build_backbone(BackboneConfig(name="cnn-compact", width=2), 8)
    names = [n for n, _ in encoder_blocks(enc, 8)]
    assert names[-2:] == ["downs.3", "blocks.3"] and names.index("downs.1") < names.index("blocks.1")


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return tiny_cli_run(tmp_path_factory.mktemp("suite"), val=True)


@pytest.mark.integration
def test_eval_all_writes_eval_json_with_settings_and_times(tiny_run, capsys):
    from selfsup.cli import main

    data, run = tiny_run
    capsys.readouterr()
    code = main(["eval", "all", "--checkpoint", str(run), "--train", str(data), "--test", str(data),
                 "--episodes", "30", "--n-query", "4", "--ft-min-steps", "5", "--labels", "10%,100%"])
    out = capsys.readouterr().out
    assert code == 0 and "retrieval" in out and "finetune@100%" in out and "rankme" in out
    res = json.loads((run / "eval.json").read_text())
    for key in ("knn", "linear", "finetune@10%", "finetune@100%", "fewshot", "retrieval", "clustering", "diagnostics"):
        assert key in res and res[key]["time_s"] >= 0 and res[key]["settings"], key
    assert res["fewshot"]["settings"]["episodes"] == 30 and res["fewshot"]["encoder"]["episodes"] == 30
    assert set(res["knn"]) >= {"encoder", "pixels", "random"}
    assert res["meta"]["n_train"] == 30 and res["meta"]["total_time_s"] > 0
    code = main(["eval", "retrieval", "--checkpoint", str(run), "--train", str(data), "--test", str(data), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and r["retrieval"]["encoder"]["recall@1"] >= r["retrieval"]["encoder"]["mAP"] - 1e-6


@pytest.mark.integration
def test_external_encoders_by_name_with_local_weights(tmp_path):
    import timm
    import torchvision
    from safetensors.torch import save_file

    from selfsup.checkpoint import load_encoder

    net = torchvision.models.resnet18(weights=None, num_classes=10)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "r18.pth")
    enc, info = load_encoder(f"torchvision:resnet18:{tmp_path / 'r18.pth'}:32")
    net.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    net.eval()
    assert info["image_size"] == 32 and info["num_features"] == 512
    assert torch.allclose(enc(x), net(x), atol=1e-5)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=16)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(tmp_path / "vit.safetensors"))
    enc2, info2 = load_encoder(f"timm:vit_tiny_patch16_224:{tmp_path / 'vit.safetensors'}:32")
    vit.reset_classifier(0)
    vit.eval()
    assert info2["num_features"] == 192 and torch.allclose(enc2(x), vit(x), atol=1e-5)
    from selfsup.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(f"torchvision:resnet18:{tmp_path / 'missing.pth'}")


@pytest.mark.integration
def test_search_command_table_and_json(tiny_run, tmp_path, capsys):
    from selfsup.cli import main

    data, run = tiny_run
    idx = tmp_path / "emb.safetensors"
    assert main(["embed", "--checkpoint", str(run), "--data", str(data), "--out", str(idx)]) == 0
    capsys.readouterr()
    from selfsup.search import search

    q = sorted((data / "class1").glob("*.png"))[0]
    res = search(str(idx), str(q), k=5)
    assert res[0]["neighbours"][0]["path"] == str(q) and res[0]["neighbours"][0]["score"] == pytest.approx(1, abs=1e-4)
    scores = [n["score"] for n in res[0]["neighbours"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 5
    res2 = search(str(idx), str(data / "class2"), k=3)
    assert len(res2) == 10 and all(r["neighbours"][0]["class"] == "class2" for r in res2)
