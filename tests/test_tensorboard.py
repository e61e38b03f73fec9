"""``--log tensorboard``: RUN/tensorboard/ holds the scalars of metrics.jsonl; a one-line error without the extra."""

import builtins
import importlib.util
import json
import sys

import pytest

from selfsup.cli import main
from selfsup.training.loop import pretrain

from .helpers import make_class_folder, tiny_config

HAS_TB = importlib.util.find_spec("tensorboard") is not None


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.integration
@pytest.mark.skipif(not HAS_TB, reason="the optional tensorboard extra is not installed (pip install 'selfsup[tensorboard]')")
def test_event_file_holds_the_metrics_rows(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=8)
    cfg = tiny_config(str(data), str(tmp_path / "run"), epochs=2, knn_every=1, log="tensorboard")
    cfg.data.val = str(data)
    pretrain(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    got = _scalars(tmp_path / "run" / "tensorboard")
    train = [r for r in rows if "loss" in r]
    assert len(train) == 4
    for key in ("loss", "lr", "images_per_s", "emb_std", "rankme"):
        want = [(r["step"], r[key]) for r in train]
        assert [s for s, _ in got[f"train/{key}"]] == [s for s, _ in want], key
        assert [v for _, v in got[f"train/{key}"]] == pytest.approx([v for _, v in want], rel=1e-6), key
    knn = [(r["step"], r["knn_top1"]) for r in rows if r.get("eval") == "knn"]
    assert len(knn) == 2  # one per epoch; the last is written after the loop's writer was closed
    assert got["eval/knn_top1"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in knn]


def test_missing_tensorboard_is_one_line_and_creates_nothing(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith(("tensorboard", "torch.utils.tensorboard")):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m.startswith(("tensorboard", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(data), "--method", "simclr", "--backbone", "cnn-compact", "--image-size",
                 "16", "--epochs", "1", "--batch-size", "4", "--no-progress", "--log", "tensorboard", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "pip install 'selfsup[tensorboard]'" in err[0]
    assert not out.exists()
