"""``--init``: a new run's encoder starts from given weights (a selfsup run, or torchvision/timm files)."""

from pathlib import Path

import pytest
import torch

from selfsup.checkpoint import load_encoder
from selfsup.cli import main
from selfsup.errors import CheckpointError
from selfsup.training.loop import pretrain
from selfsup.training.setup import setup_run

from .helpers import make_class_folder, tiny_config


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k].float().cpu(), b[k].float().cpu()), k


@pytest.mark.integration
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_init_from_a_selfsup_run_starts_from_its_encoder(tmp_path, method):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=8)
    pretrain(tiny_config(str(data), str(tmp_path / "first"), epochs=1))
    trained = load_encoder(tmp_path / "first")[0].state_dict()
    cfg = tiny_config(str(data), str(tmp_path / "second"), method=method, seed=7)
    fresh = setup_run(cfg, resume=False).method.backbone.state_dict()  # the same seed without --init
    cfg.backbone.init = str(tmp_path / "first" / "encoder.safetensors")
    run = setup_run(cfg, resume=False)  # everything before the first step
    _same(run.method.backbone.state_dict(), trained)
    assert any(not torch.equal(fresh[k], trained[k]) for k in trained)  # the check can tell the two apart
    teacher = getattr(run.method, "teacher_backbone", None)
    if teacher is not None:  # BYOL's EMA teacher is copied from the initialised backbone
        _same(teacher.state_dict(), trained)
    # a run folder works as well, and so does the full run (saved config states the init)
    cfg.backbone.init = str(tmp_path / "first")
    _same(setup_run(cfg, resume=False).method.backbone.state_dict(), trained)
    pretrain(cfg)
    assert (tmp_path / "second" / "encoder.safetensors").is_file()


def _tv_weights(tmp_path: Path) -> Path:
    import torchvision

    torch.manual_seed(3)
    net = torchvision.models.resnet18(weights=None)
    p = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), p)
    return p


@pytest.mark.integration
def test_torchvision_weights_load_into_the_standard_stem(tmp_path):
    weights = _tv_weights(tmp_path)
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cfg = tiny_config(str(data), str(tmp_path / "run"))
    cfg.backbone.name, cfg.data.image_size = "resnet18", 96
    cfg.backbone.small_stem = False
    cfg.backbone.init = f"torchvision:resnet18:{weights}"
    got = setup_run(cfg, resume=False).method.backbone.state_dict()
    want = torch.load(weights, weights_only=True)
    assert sorted(got) == sorted(f"net.{k}" for k in want if not k.startswith("fc."))
    for k, v in got.items():
        assert torch.equal(v, want[k[len("net."):]]), k
    assert not (tmp_path / "run").exists()


def test_mismatched_stem_is_one_line_exit_2_and_no_run_folder(tmp_path, capsys):
    weights = _tv_weights(tmp_path)
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "run"
    code = main(["pretrain", "--data", str(data), "--method", "simclr", "--backbone", "resnet18", "--image-size", "32",
                 "--init", f"torchvision:resnet18:{weights}", "--epochs", "1", "--batch-size", "4", "--no-progress",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "error" in err[0].lower(), err
    assert str(weights) in err[0] and "conv1.weight" in err[0] and "small_stem=false" in err[0], err[0]
    assert not out.exists()


def test_other_architecture_names_the_mismatch(tmp_path):
    weights = _tv_weights(tmp_path)
    cfg = tiny_config(str(make_class_folder(tmp_path / "data", classes=2, per_class=4)), str(tmp_path / "run"))
    cfg.backbone.init = f"torchvision:resnet18:{weights}"  # into cnn-compact
    with pytest.raises(CheckpointError, match=r"--init torchvision:resnet18:.*cnn-compact"):
        setup_run(cfg, resume=False)
    cfg.backbone.init = str(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="missing.safetensors"):
        setup_run(cfg, resume=False)


@pytest.mark.integration
def test_resume_ignores_init(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=8)
    pretrain(tiny_config(str(data), str(tmp_path / "first"), epochs=1))
    cfg = tiny_config(str(data), str(tmp_path / "second"), epochs=2, max_steps=2)
    cfg.backbone.init = str(tmp_path / "first")
    pretrain(cfg)
    saved = load_encoder(tmp_path / "second")[0].state_dict()
    (tmp_path / "first" / "encoder.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (tmp_path / "first" / "checkpoint.pt").unlink()  # the init source is gone: a resume must not need it
    cfg.train.max_steps = None
    run = setup_run(cfg, resume=True)
    _same(run.method.backbone.state_dict(), saved)  # the checkpoint's weights, not a fresh init


@pytest.mark.integration
def test_timm_vit_weights_need_the_same_patch_grid(tmp_path):
    import timm

    from selfsup.config import PretrainConfig
    from selfsup.training.init_weights import load_init_state

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    p = tmp_path / "vit.pth"
    torch.save(net.state_dict(), p)
    cfg = PretrainConfig()
    cfg.backbone.name, cfg.data.image_size, cfg.backbone.patch_size = "vit-tiny", 224, 28
    cfg.backbone.init = f"timm:vit_tiny_patch16_224:{p}"
    with pytest.raises(CheckpointError, match=r"vit\.pth: net\.pos_embed .*backbone\.patch_size"):
        load_init_state(cfg)
    cfg.backbone.patch_size = 16
    state = load_init_state(cfg)
    want = {k: v for k, v in net.state_dict().items() if not k.startswith("head.")}
    assert sorted(state) == sorted(f"net.{k}" for k in want)
    assert all(torch.equal(state[f"net.{k}"], v) for k, v in want.items())
