"""Evaluation keeps its work: the on-disk feature cache, eval.json after every protocol, Ctrl-C."""

import json

import pytest
import torch

from .helpers import make_class_folder, tiny_cli_run


class CountingExtract:
    """Wraps selfsup.eval.features.extract_features and counts the images it encodes."""

    def __init__(self, real):
        self.real, self.calls, self.images = real, 0, 0

    def __call__(self, encoder, images, **kw):
        self.calls += 1
        self.images += int(images.shape[0])
        return self.real(encoder, images, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_cli_run(tmp_path_factory.mktemp("evalcache"))


def test_cached_features_keyed_by_checkpoint_data_and_transform(tmp_path, monkeypatch):
    from selfsup.config import BackboneConfig
    from selfsup.data import open_dataset
    from selfsup.eval import features as F
    from selfsup.models.backbones import build_backbone

    enc = build_backbone(BackboneConfig(name="cnn-compact", width=4), 16).eval()
    data = make_class_folder(tmp_path / "d", classes=2, per_class=4)
    ds = open_dataset(str(data), 16)
    counter = CountingExtract(F.extract_features)
    monkeypatch.setattr(F, "extract_features", counter)
    kw = {"image_size": 16, "cache_dir": tmp_path / "cache", "precision": "fp32"}
    a = F.cached_features(enc, ds, key="ckpt-A", **kw)
    b = F.cached_features(enc, ds, key="ckpt-A", **kw)
    assert counter.calls == 1 and torch.equal(a, b)
    assert torch.allclose(a, F.extract_features.real(enc, ds.images, image_size=16, precision="fp32"))
    F.cached_features(enc, ds, key="ckpt-B", **kw)  # another checkpoint
    assert counter.calls == 2

    def other_transform(x, size, **k):
        from selfsup.augment.ops import eval_transform

        return eval_transform(x, size, **k) * 0.5

    F.cached_features(enc, ds, key="ckpt-A", transform=other_transform, **kw)  # another eval transform
    assert counter.calls == 3
    more = make_class_folder(tmp_path / "d", classes=3, per_class=4)  # adds a class folder: other data
    F.cached_features(enc, open_dataset(str(more), 16), key="ckpt-A", **kw)
    assert counter.calls == 4
    assert len(list((tmp_path / "cache").glob("features-*.safetensors"))) == 4
    assert not list((tmp_path / "cache").glob("*.tmp")), "written atomically"


def test_checkpoint_key_changes_when_the_checkpoint_is_rewritten(tmp_path):
    import os

    from selfsup.eval.features import encoder_key

    ck = tmp_path / "checkpoint.pt"
    ck.write_bytes(b"x" * 10)
    k1 = encoder_key({"source": str(ck)})
    st = ck.stat()
    os.utime(ck, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert encoder_key({"source": str(ck)}) != k1


@pytest.mark.integration
def test_interrupted_eval_all_keeps_the_first_protocol_and_reuses_features(tiny, monkeypatch, capsys):
    from selfsup.cli import main
    from selfsup.eval import features as F
    from selfsup.eval import suite

    data, run = tiny
    real_run = suite.run_on_features

    def interrupt_linear(protocol, *a, **kw):
        if protocol == "linear":
            raise KeyboardInterrupt
        return real_run(protocol, *a, **kw)

    counter = CountingExtract(F.extract_features)
    monkeypatch.setattr(F, "extract_features", counter)
    monkeypatch.setattr(suite, "run_on_features", interrupt_linear)
    capsys.readouterr()
    args = ["eval", "all", "--checkpoint", str(run), "--train", str(data), "--test", str(data)]
    assert main(args) == 130
    out, err = capsys.readouterr()
    assert "pretrained" not in out and "knn" in out and "top1" in out, "the kNN table is printed as it finishes"
    assert "[1/6] knn" in err and "left" in err, "progress with a protocol count and an ETA"
    assert "keeps the finished protocols (knn)" in err
    res = json.loads((run / "eval.json").read_text())
    assert set(res) == {"meta", "knn"} and res["meta"]["complete"] is False
    assert set(res["knn"]) >= {"encoder", "pixels", "random", "settings", "time_s"}
    # encoder + random-init; --train and --test are one folder here, so its test features are a cache hit
    assert counter.calls == 2

    monkeypatch.setattr(suite, "run_on_features", real_run)
    assert main(["eval", "knn", "--checkpoint", str(run), "--train", str(data), "--test", str(data), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert counter.calls == 2, "the second eval read every feature from the cache"
    assert again["encoder"]["top1"] == res["knn"]["encoder"]["top1"]
    assert again["random"]["top1"] == res["knn"]["random"]["top1"]
    assert main(args + ["--out", str(run / "eval2.json")]) == 0
    assert counter.calls == 2
    done = json.loads((run / "eval2.json").read_text())
    assert done["meta"]["complete"] is True and "finetune@10%" not in done, "quick by default: no fine-tuning"
    assert {"knn", "linear", "fewshot", "retrieval", "clustering", "diagnostics"} <= set(done)
    from selfsup.report import write_report

    assert "Nearest neighbours" in write_report(run, run / "r.html", test=str(data)).read_text()
    assert counter.calls == 2, "the report reads the features `eval` cached"
    # --no-cache really extracts again (the counter can see extraction)
    assert main(["eval", "knn", "--checkpoint", str(run), "--train", str(data), "--test", str(data),
                 "--no-cache", "--no-baselines"]) == 0
    assert counter.calls == 4  # train and test


@pytest.mark.integration
def test_knn_and_linear_take_out_and_device_and_old_epochs_flag(tiny, tmp_path, capsys):
    from selfsup.cli import main

    data, run = tiny
    out = tmp_path / "lin.json"
    assert main(["eval", "linear", "--checkpoint", str(run), "--train", str(data), "--test", str(data),
                 "--device", "cpu", "--out", str(out), "--epochs", "7", "--no-baselines"]) == 0
    _, err = capsys.readouterr()
    assert "--epochs is the old name of --iters" in err
    res = json.loads(out.read_text())
    assert res["linear"]["settings"]["epochs"] == 7 and res["linear"]["encoder"]["epochs"] == 7
    assert main(["eval", "knn", "--checkpoint", str(run), "--train", str(data), "--test", str(data),
                 "--device", "cpu", "--out", str(tmp_path / "knn.json"), "--k", "5"]) == 0
    assert json.loads((tmp_path / "knn.json").read_text())["knn"]["settings"]["k"] == 5
