"""`selfsup export`: TorchScript and ONNX files that compute what the PyTorch encoder computes."""

import json

import pytest
import torch


@pytest.fixture(scope="module", params=["cnn-compact", "vit-tiny"])
def run_dir(request, tmp_path_factory):
    """A run folder holding encoder.safetensors + encoder.json (as `selfsup pretrain` writes them)."""
    from selfsup.checkpoint import export_encoder
    from selfsup.config import BackboneConfig, to_dict
    from selfsup.models.backbones import build_backbone

    cfg = BackboneConfig(name=request.param, width=4, patch_size=4)
    torch.manual_seed(0)
    enc = build_backbone(cfg, 16)
    run = tmp_path_factory.mktemp("export") / "run"
    run.mkdir()
    export_encoder(run, enc, {"backbone": to_dict(cfg), "image_size": 16, "method": "simclr", "steps": 0})
    return run


def _reference(run, x):
    from selfsup.checkpoint import load_encoder

    enc, _ = load_encoder(run)
    with torch.no_grad():
        return enc.eval()(x)


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated upstream; it still loads
def test_torchscript_export_matches_pytorch(run_dir, tmp_path, capsys):
    from selfsup.cli import main

    out = tmp_path / "enc.pt"
    assert main(["export", "--checkpoint", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    assert "checked with torch.jit.load" in capsys.readouterr().out
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(7))  # a batch size never traced
    with torch.no_grad():
        got = torch.jit.load(str(out))(x)
    want = _reference(run_dir, x)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-4)
    meta = json.loads(out.with_name("enc.pt.json").read_text())
    assert meta["image_size"] == 16 and meta["num_features"] == want.shape[1]


@pytest.mark.integration
def test_onnx_export_matches_pytorch(run_dir, tmp_path):
    pytest.importorskip("onnx", reason="the onnx package is not installed (pip install 'selfsup[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'selfsup[onnx]')")
    from selfsup.export import export_encoder

    out = tmp_path / "enc.onnx"
    res = export_encoder(str(run_dir), out, format="onnx")
    assert res["checked_with"] == "onnxruntime" and res["max_abs_diff"] < 1e-4
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(["features"], {"images": x.numpy()})[0])
    assert torch.allclose(got, _reference(run_dir, x), atol=1e-5, rtol=1e-4)


def test_a_wrong_export_is_caught_and_bad_input_is_one_line(tmp_path, capsys):
    from selfsup.cli import main
    from selfsup.errors import ConfigError
    from selfsup.export import _check_output

    want = torch.ones(2, 8)
    assert _check_output("f", want + 1e-6, want, 1e-4, 1e-4) < 1e-5
    with pytest.raises(ConfigError, match="differs from PyTorch"):
        _check_output("f", want * 1.01, want, 1e-4, 1e-4)
    assert main(["export", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "e.onnx")]) == 2
    assert "not found" in capsys.readouterr().err
