"""The command line end to end, and every bad input the foundation issue lists (one line, exit 2)."""

import json
import pickle

import pytest
import torch
import yaml

from selfsup.cli import build_parser, main

from .helpers import make_class_folder, tiny_cli_run

TINY = ["--image-size", "16", "--backbone", "cnn-compact", "--set", "backbone.width=4", "--set", "train.threads=1",
        "--no-progress"]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("selfsup: error:"), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture
def trained(tmp_path_factory):
    return tiny_cli_run(tmp_path_factory.mktemp("cli"))


@pytest.mark.integration
def test_pretrain_eval_embed_end_to_end(trained, tmp_path, capsys):
    data, run = trained
    capsys.readouterr()
    for proto in ("knn", "linear"):
        code, out, _ = _run(capsys, "eval", proto, "--checkpoint", str(run), "--train", str(data), "--test", str(data), "--json")
        assert code == 0
        res = json.loads(out)
        for key in ("encoder", "pixels", "random"):
            assert 0 <= res[key]["top1"] <= res[key]["top5"] <= 100
    code, out, _ = _run(capsys, "eval", "knn", "--checkpoint", str(run / "encoder.safetensors"), "--train", str(data),
                        "--test", str(data))
    assert code == 0 and "raw pixels (baseline)" in out and "random encoder (baseline)" in out
    emb = tmp_path / "emb.safetensors"
    code, out, _ = _run(capsys, "embed", "--checkpoint", str(run), "--data", str(data), "--out", str(emb))
    assert code == 0
    from selfsup.embed import read_embeddings

    e = read_embeddings(emb)
    assert e["features"].shape == (30, 32) and len(e["paths"]) == 30 and e["paths"][0].endswith(".png")
    code, out, _ = _run(capsys, "embed", "--checkpoint", str(run), "--data", str(data), "--out", str(tmp_path / "e.npz"))
    assert code == 0 and read_embeddings(tmp_path / "e.npz")["features"].shape == (30, 32)


def test_missing_path(tmp_path, capsys):
    code, _, err = _run(capsys, "pretrain", "--data", str(tmp_path / "nope"), "--method", "simclr", "--out", str(tmp_path / "r"), *TINY)
    _assert_one_line_error(code, err, str(tmp_path / "nope"))
    assert not (tmp_path / "r").exists()


def test_empty_folder_and_folder_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "pretrain", "--data", str(tmp_path / "empty"), "--method", "simclr", "--out", str(tmp_path / "r"), *TINY)
    _assert_one_line_error(code, err, str(tmp_path / "empty"))
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "notes.txt").write_text("hello")
    code, _, err = _run(capsys, "pretrain", "--data", str(tmp_path / "txt"), "--method", "simclr", "--out", str(tmp_path / "r"), *TINY)
    _assert_one_line_error(code, err, str(tmp_path / "txt"))
    assert not (tmp_path / "r").exists()


def test_batch_size_larger_than_dataset_is_capped_with_a_warning(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", classes=2, per_class=3)
    code, _, err = _run(capsys, "pretrain", "--data", str(data), "--method", "simclr", "--batch-size", "100",
                        "--out", str(tmp_path / "r"), *TINY)
    assert code == 0, err
    warning = [ln for ln in err.splitlines() if ln.startswith("warning: --batch-size 100")]
    assert len(warning) == 1 and str(data) in warning[0] and "using batch 6" in warning[0]
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 6  # the run folder states the batch that ran


@pytest.mark.integration
def test_single_class_folder_given_to_eval(trained, tmp_path, capsys):
    _, run = trained
    one = make_class_folder(tmp_path / "one", classes=1, per_class=4)
    code, _, err = _run(capsys, "eval", "knn", "--checkpoint", str(run), "--train", str(one), "--test", str(one))
    _assert_one_line_error(code, err, str(one))


@pytest.mark.integration
def test_checkpoint_from_another_backbone(trained, capsys):
    data, run = trained
    code, _, err = _run(capsys, "eval", "knn", "--checkpoint", str(run), "--backbone", "resnet18",
                        "--train", str(data), "--test", str(data))
    _assert_one_line_error(code, err, "cnn-compact", "resnet18")
    code, _, err = _run(capsys, "pretrain", "--out", str(run), "--resume", "--backbone", "resnet18", "--no-progress")
    _assert_one_line_error(code, err, "cnn-compact", "resnet18")


def test_file_that_is_not_a_checkpoint(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", classes=2, per_class=3)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 100)
    code, _, err = _run(capsys, "eval", "knn", "--checkpoint", str(junk), "--train", str(data), "--test", str(data))
    _assert_one_line_error(code, err, str(junk))
    # a plain tensor file written by torch.save is readable but is not a selfsup checkpoint
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    code, _, err = _run(capsys, "eval", "knn", "--checkpoint", str(other), "--train", str(data), "--test", str(data))
    _assert_one_line_error(code, err, str(other), "not a selfsup checkpoint")


class _Evil:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['SELFSUP_PWNED'], 'w').write('pwned')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the crafted file's protocol; expected
def test_malicious_pickle_is_never_executed(tmp_path, capsys, monkeypatch):
    flag = tmp_path / "pwned"
    monkeypatch.setenv("SELFSUP_PWNED", str(flag))
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "selfsup-checkpoint", "x": _Evil()}, f)
    data = make_class_folder(tmp_path / "d", classes=2, per_class=3)
    code, _, err = _run(capsys, "eval", "knn", "--checkpoint", str(evil), "--train", str(data), "--test", str(data))
    _assert_one_line_error(code, err, str(evil))
    assert not flag.exists()


def test_every_command_has_help_with_an_example(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        text = p.format_help()
        if name == "eval":
            for proto_name, proto in next(a for a in p._actions if a.dest == "protocol").choices.items():
                assert "example" in proto.format_help(), proto_name
        assert "example" in text, name


def test_methods_lists_family_and_paper(capsys):
    code, out, _ = _run(capsys, "methods")
    assert code == 0 and "simclr" in out and "contrastive" in out and "arXiv 2002.05709" in out


@pytest.mark.parametrize("bf16, minutes", [(True, 5.0), (False, 14.0)])
def test_demo_takes_longer_without_native_bf16(monkeypatch, tmp_path, capsys, bf16, minutes):
    """5 minutes with native bf16; 14 in fp32 (about the same number of steps), with a note saying why."""
    from selfsup import runtime
    from selfsup.training import loop as train

    seen = {}

    class Stop(Exception):
        pass

    def fake_pretrain(cfg, **kw):
        seen["budget"] = cfg.train.time_budget
        raise Stop

    monkeypatch.setattr(runtime, "resolve_device", lambda name="auto": torch.device("cpu"))  # also on a GPU host
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: bf16)
    monkeypatch.setattr(train, "pretrain", fake_pretrain)
    with pytest.raises(Stop):
        main(["demo", "--out", str(tmp_path / "demo")])
    assert seen["budget"] == minutes
    out = capsys.readouterr().out
    assert ("14 minutes instead of 5" in out) == (not bf16)

