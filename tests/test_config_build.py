"""The one config builder: the CLI and the Python API build the same configuration, and nothing is mutated."""

from __future__ import annotations

import copy

import pytest

from selfsup.cli import build_parser
from selfsup.commands.pretrain import config_from_args
from selfsup.config import PretrainConfig, to_dict
from selfsup.config.build import FLAG_FIELDS, build_config
from selfsup.errors import ConfigError

from .helpers import make_class_folder, tiny_config

CASES = [
    # (CLI arguments, API keywords)
    (["--data", "d", "--out", "o"], {"data": "d", "out": "o"}),
    (["--preset", "cpu-32px", "--data", "d", "--out", "o"], {"preset": "cpu-32px", "data": "d", "out": "o"}),
    (["--preset", "cpu-32px", "--method", "barlowtwins", "--data", "d", "--out", "o", "--lr", "0.5"],
     {"preset": "cpu-32px", "method": "barlowtwins", "data": "d", "out": "o", "lr": 0.5}),
    (["--method", "byol", "--data", "d", "--out", "o", "--epochs", "3", "--batch-size", "64", "--max-steps", "9",
      "--image-size", "24", "--optimizer", "sgd", "--precision", "fp32", "--device", "cpu", "--seed", "4",
      "--knn-every", "2", "--time-budget", "1.5", "--compile", "--strict", "--no-progress",
      "--set", "optim.clip_grad=1.0", "--set", "method.momentum_base=0.99"],
     {"method": "byol", "data": "d", "out": "o", "epochs": 3, "batch_size": 64, "max_steps": 9, "image_size": 24,
      "optimizer": "sgd", "precision": "fp32", "device": "cpu", "seed": 4, "knn_every": 2, "time_budget": 1.5,
      "compile": True, "strict": True, "progress": False,
      "set": ["optim.clip_grad=1.0", "method.momentum_base=0.99"]}),
]


def _cli(args: list[str]) -> PretrainConfig:
    return config_from_args(build_parser().parse_args(["pretrain", *args]))


@pytest.mark.parametrize("cli, api", CASES)
def test_cli_and_api_build_identical_configs(cli, api):
    assert to_dict(_cli(cli)) == to_dict(build_config(**api))


def test_cli_and_api_agree_with_a_config_file_and_a_preset_layered_under_it(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method: {name: simclr, temperature: 0.3}\noptim: {base_lr: 0.7}\ntrain: {epochs: 4}\n")
    cli = _cli(["--preset", "cpu-64px", "--config", str(f), "--data", "d", "--out", "o", "--set", "train.seed=3"])
    api = build_config(preset="cpu-64px", config=str(f), data="d", out="o", set=["train.seed=3"])
    assert to_dict(cli) == to_dict(api)
    assert cli.method["temperature"] == 0.3 and cli.optim.base_lr == 0.7 and cli.train.seed == 3  # file, then flags


def test_every_cli_flag_is_an_api_keyword():
    import inspect

    from selfsup.api import pretrain

    params = set(inspect.signature(pretrain).parameters)
    assert set(FLAG_FIELDS) <= params
    assert {"method", "preset", "config", "set", "out", "resume"} <= params


def test_resume_starts_from_the_saved_config_in_both_front_ends(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: {path: saved, image_size: 20}\nmethod: {name: byol}\n")
    cli = _cli(["--out", str(run), "--resume", "--epochs", "7"])
    api = build_config(out=str(run), resume=True, epochs=7)
    assert to_dict(cli) == to_dict(api)
    assert cli.data.path == "saved" and cli.data.image_size == 20 and cli.method == {"name": "byol"}
    assert cli.train.epochs == 7


def test_builder_changes_none_of_its_inputs(tmp_path):
    base = PretrainConfig()
    base.method = {"name": "simclr", "temperature": 0.4}
    layer = {"train": {"epochs": 3}, "method": {"name": "simclr"}}
    before_base, before_layer = copy.deepcopy(base), copy.deepcopy(layer)
    built = build_config(config=base, epochs=5, set={"optim": {"lr": 0.1}})
    assert base == before_base and built is not base and built.train.epochs == 5 and built.optim.lr == 0.1
    build_config(config=layer, method="byol")
    assert layer == before_layer
    with pytest.raises(ConfigError, match="preset"):
        build_config(preset="cpu-32px", config=base)


def test_unknown_keyword_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown pretrain option 'epoch'"):
        build_config(epoch=3)


@pytest.mark.integration
@pytest.mark.parametrize("method", ["simclr", "famt-mae"])
def test_pretrain_leaves_the_config_it_was_given_unchanged(tmp_path, method):
    from selfsup.api import pretrain as api_pretrain
    from selfsup.training.loop import pretrain

    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cfg = tiny_config(str(data), str(tmp_path / "run"), method=method, max_steps=1, epochs=1)
    if method == "famt-mae":  # per-image state sized from the data: derived, not written into cfg
        cfg.backbone.name, cfg.backbone.patch_size = "vit-tiny", 4
    before = copy.deepcopy(cfg)
    pretrain(cfg)
    assert cfg == before
    api_pretrain(config=cfg, out=str(tmp_path / "api"))  # the API takes a PretrainConfig as it is, too
    assert cfg == before
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "lr: " in saved and "lr: null" not in saved  # the run itself saved the resolved copy
    if method == "famt-mae":
        assert "num_images: 8" in saved


def _photos(folder, size, n=5):
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", size, (40 * i, 100, 200)).save(folder / f"p{i}.jpg")
    return folder


def test_a_photo_folder_without_a_size_gets_a_photo_size_and_preset(tmp_path, capsys):
    photos = _photos(tmp_path / "photos", (400, 300))
    cfg = build_config(data=str(photos), method="simclr", device="cpu")
    assert cfg.data.image_size == 96 and cfg.backbone.name == "resnet18"  # the cpu-96px preset
    assert "image size: 96 px views" in capsys.readouterr().err
    # a size from any layer wins over the data
    assert build_config(data=str(photos), image_size=48, device="cpu").data.image_size == 48
    assert build_config(data=str(photos), set=["data.image_size=40"], device="cpu").data.image_size == 40
    assert build_config(data=str(photos), preset="cpu-64px", device="cpu").data.image_size == 64


def test_tiny_images_keep_32px_and_builtins_are_not_probed(tmp_path):
    tiny = _photos(tmp_path / "tiny", (32, 32))
    assert build_config(data=str(tiny), device="cpu").data.image_size == 32
    assert build_config(data="builtin:synthetic", device="cpu").data.image_size == 32
    mid = _photos(tmp_path / "mid", (80, 70))
    assert build_config(data=str(mid), device="cpu").data.image_size == 64
    assert build_config(data=str(_photos(tmp_path / "big", (640, 480))), device="cuda").data.image_size == 224
