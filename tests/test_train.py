"""The training loop: exact resume, checkpoints, schedules, NaN handling, signals."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from selfsup.checkpoint import load_checkpoint
from selfsup.errors import ConfigError, TrainingDiverged
from selfsup.training.loop import EpochSampler, pretrain
from selfsup.training.optim import lr_at

from .helpers import make_class_folder, tiny_config


def _losses(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.integration
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_resume_reproduces_the_uninterrupted_trajectory(tmp_path, method):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=12)
    # epochs=3 with batch 8 over 24 images: 3 steps/epoch, 9 steps; stop at 4 (mid-epoch) then resume
    full = tiny_config(str(data), str(tmp_path / "full"), method=method, epochs=3, max_steps=7)
    pretrain(full)
    part = tiny_config(str(data), str(tmp_path / "part"), method=method, epochs=3, max_steps=4)
    pretrain(part)
    assert load_checkpoint(tmp_path / "part")["step"] == 4
    resumed = tiny_config(str(data), str(tmp_path / "part"), method=method, epochs=3, max_steps=7)
    pretrain(resumed, resume=True)
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 8))
    for (s, la), (_, lb) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-6, abs=1e-7), f"step {s}: {la} vs {lb}"
    wa = load_checkpoint(tmp_path / "full")["method"]
    wb = load_checkpoint(tmp_path / "part")["method"]
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k


@pytest.mark.integration
def test_run_folder_contents(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=8)
    cfg = tiny_config(str(data), str(tmp_path / "run"), epochs=2)
    cfg.data.val = str(data)
    cfg.train.knn_every = 1
    summary = pretrain(cfg)
    run = tmp_path / "run"
    for name in ("checkpoint.pt", "config.yaml", "metrics.jsonl", "summary.json", "encoder.safetensors", "encoder.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    step_rows = [r for r in rows if "loss" in r]
    assert all({"step", "epoch", "loss", "lr", "images_per_s"} <= set(r) for r in step_rows)
    knn_rows = [r for r in rows if r.get("eval") == "knn"]
    assert len(knn_rows) == 2 and 0 <= knn_rows[-1]["knn_top1"] <= 100
    assert summary["knn_top1"] == knn_rows[-1]["knn_top1"]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    with pytest.raises(ConfigError, match="--resume: no checkpoint"):
        pretrain(tiny_config(str(data), str(tmp_path / "none")), resume=True)
    assert not (tmp_path / "none").exists()


@pytest.mark.integration
def test_nan_loss_stops_with_a_clear_message(tmp_path, monkeypatch):
    import selfsup.methods.simclr as simclr

    data = make_class_folder(tmp_path / "data", classes=2, per_class=8)
    monkeypatch.setattr(simclr, "nt_xent_loss", lambda z1, z2, t, **kw: (z1.sum() + z2.sum()) * float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at step 0.*lower the learning rate"):
        pretrain(tiny_config(str(data), str(tmp_path / "run")))


def test_batch_larger_than_dataset_is_capped_and_the_lr_follows_the_real_batch(tmp_path):
    from selfsup.training.batches import capped_batch

    assert capped_batch(64, 6, 1, "d") == 6 and capped_batch(64, 7, 2, "d") == 6 and capped_batch(4, 6, 1, "d") == 4
    with pytest.raises(ConfigError, match="d has 1 image"):
        capped_batch(64, 1, 1, "d")
    data = make_class_folder(tmp_path / "data", classes=2, per_class=3)
    summary = pretrain(tiny_config(str(data), str(tmp_path / "run"), batch_size=64))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 6 and summary["steps"] >= 1
    assert saved["optim"]["lr"] == pytest.approx(saved["optim"]["base_lr"] * 6 / 256)  # linear scaling rule


def test_compile_without_a_cpp_compiler_is_a_config_error_and_leaves_no_folder(tmp_path, monkeypatch):
    import shutil

    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cfg = tiny_config(str(data), str(tmp_path / "run"))
    cfg.train.compile = True
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="--compile on a CPU needs a C\\+\\+ compiler"):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_colour_mode_reaches_the_views(tmp_path, monkeypatch):
    from selfsup.augment import views

    seen = []
    real = views.make_views

    def spy(*args, **kw):
        seen.append((kw.get("colour"), kw.get("backend")))
        return real(*args, **kw)

    monkeypatch.setattr(views, "make_views", spy)
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cfg = tiny_config(str(data), str(tmp_path / "run"), epochs=1)
    cfg.data.colour = "linear"
    cfg.data.view_backend = "torch"
    cfg.train.max_steps = 1
    pretrain(cfg)
    assert seen and set(seen) == {("linear", "torch")}


@pytest.mark.parametrize("change, message", [
    ({"colour": "fast"}, r"data.colour must be one of \('exact', 'linear'\), got 'fast'"),
    ({"view_backend": "cuda"}, r"data.view_backend must be one of \('auto', 'torch', 'numba'\), got 'cuda'"),
    ({"view_backend": "numba", "colour": "linear"}, r"numba backend .* colour='exact' only"),
])
def test_bad_colour_mode_or_view_backend_is_a_config_error_and_leaves_no_folder(tmp_path, change, message):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cfg = tiny_config(str(data), str(tmp_path / "run"))
    for field, value in change.items():
        setattr(cfg.data, field, value)
    with pytest.raises(ConfigError, match=message):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    ({"low_res_size": 16}, r"data.low_res_size must be between 4 and data.image_size - 1 \(15\), got 16"),
    ({"low_res_size": 8, "low_res_fraction": 1.0}, r"data.low_res_fraction must be between 0 and 1"),
])
def test_bad_resolution_schedule_is_a_config_error_and_leaves_no_folder(tmp_path, change, message):
    cfg = tiny_config("x", str(tmp_path / "run"))
    for k, v in change.items():
        setattr(cfg.data, k, v)
    with pytest.raises(ConfigError, match=message):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


def test_resolution_schedule_rejects_a_vit(tmp_path):
    cfg = tiny_config("x", str(tmp_path / "run"), method="mae")
    cfg.backbone.name = "vit-tiny"
    cfg.data.low_res_size = 8
    with pytest.raises(ConfigError, match="needs a convolutional backbone"):
        pretrain(cfg)


@pytest.mark.integration
@pytest.mark.parametrize("local_crops", [0, 2])
def test_resolution_schedule_switches_view_size_once(tmp_path, local_crops):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=16)
    cfg = tiny_config(str(data), str(tmp_path / "run"), epochs=2)  # 4 steps per epoch, 8 in all
    cfg.method["n_local_crops"] = local_crops  # multi-crop SimCLR: local views rescaled alike (12 -> 6 px)
    cfg.method["local_size"] = 12  # the default (7 px -> 4 px at low res) is refused under bf16: see below
    cfg.data.low_res_size = 8
    cfg.data.low_res_fraction = 0.5
    pretrain(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    sizes = [r["view_size"] for r in rows if "view_size" in r]
    assert sizes == [8] * 4 + [16] * 4  # steps 0-3 at 8 px, then 16 px (rows are logged after each step)


def test_views_too_small_for_bf16_cpu_convs_are_refused_before_the_run_folder(tmp_path):
    cfg = tiny_config("unused", str(tmp_path / "run"))
    cfg.method["n_local_crops"] = 2
    cfg.method["local_size"] = 4  # cnn-compact's last stride-2 conv would see 1x1: wrong bf16 weight grads
    cfg.train.precision = "bf16"
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cfg.data.path = str(data)
    with pytest.raises(ConfigError, match=r"4 px views are too small .*downs\.3\.0.*at least 5 px"):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


def test_unknown_method_lists_choices(tmp_path):
    cfg = tiny_config("x", str(tmp_path / "run"))
    cfg.method = {"name": "nope"}
    with pytest.raises(ConfigError, match="unknown method 'nope'.*simclr"):
        pretrain(cfg)


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 100, 10, 1.0, 0.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_sampler_is_a_permutation_split_across_ranks():
    single = EpochSampler(20, 8, seed=3)
    r0, r1 = EpochSampler(20, 8, seed=3, rank=0, world_size=2), EpochSampler(20, 8, seed=3, rank=1, world_size=2)
    for i in range(single.steps_per_epoch):
        both = torch.cat([r0.indices(0, i), r1.indices(0, i)])
        assert torch.equal(both, single.indices(0, i))
    seen = torch.cat([single.indices(0, i) for i in range(2)])
    assert len(set(seen.tolist())) == 16
    assert not torch.equal(single.indices(1, 0), single.indices(0, 0))  # reshuffled each epoch


@pytest.mark.integration
def test_sigterm_saves_and_exits_cleanly(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=16)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "selfsup", "pretrain", "--data", str(data), "--method", "simclr",
           "--backbone", "cnn-compact", "--image-size", "16", "--epochs", "1000", "--batch-size", "8",
           "--no-progress", "--out", str(run), "--set", "train.threads=1", "--set", "backbone.width=4",
           "--set", "train.log_every=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "checkpoint saved" in err
    payload = load_checkpoint(run)
    assert payload["step"] >= 3
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_time_budget_fits_steps_to_the_deadline():
    from selfsup.training.budget import TimeBudget

    b = TimeBudget(minutes=1.0, t0=0.0, calibration_steps=2, window=4)
    assert b.observe(1, 1.0) is None and b.observe(2, 2.0) is None  # calibrating, then mark
    assert b.observe(4, 3.0) is None  # fewer than 3 timed steps
    total = b.observe(5, 3.5)  # 3 steps in 1.5 s -> 0.5 s/step; 56.5 s left -> 113 more steps
    assert b.sec_per_step == pytest.approx(0.5) and total == 5 + 113
    b.reserve_s = 6.5
    assert b.fit(5, 3.5) == 5 + 100
    # throughput doubles: the sliding window (4 steps) forgets the slow start
    for s in range(6, 12):
        total = b.observe(s, 3.5 + 0.25 * (s - 5))
    assert b.sec_per_step == pytest.approx(0.25) and total == 11 + math.floor((60 - 5.0 - 6.5) / 0.25)


def test_time_budget_phases_fit_the_cheaper_early_steps():
    from selfsup.training.budget import TimeBudget

    phases = ((0.0, 0.5), (0.3, 1.0))
    b = TimeBudget(minutes=1.0, t0=0.0, phases=phases)
    for total in (1, 7, 10, 33, 160):  # closed form == the slow per-step sum
        for step in (0, 2, 3, 5, total):
            assert b.remaining_work(step, total) == pytest.approx(sum(b.cost(i, total) for i in range(step, total)))
    assert [b.cost(i, 10) for i in range(4)] == [0.5, 0.5, 0.5, 1.0]  # steps 0-2 < 0.3 * 10
    # fit: the largest total whose remaining work fits (slow search over every candidate)
    b.sec_per_step = 0.5
    for step, now in ((0, 0.0), (10, 3.0), (60, 40.0)):
        units = (60.0 - now) / 0.5
        want = max(n for n in range(step, 1000) if b.remaining_work(step, n) <= units)
        assert b.fit(step, now) == want
    # a run driven by the fits ends on time even when the nominal cost (0.5) is off: real low steps 0.3 s or
    # 0.2 s against 0.5 s full steps. The error only moves the switch: ~30% of the steps are cheap (a
    # too-cheap low phase makes the full steps look cheaper than they are, so the switch comes a bit late)
    for real_low in (0.3, 0.2):
        b = TimeBudget(minutes=1.0, t0=0.0, calibration_steps=0, window=8, phases=phases)
        t, step, total, lows = 0.0, 0, 10**9, 0
        b.observe(0, 0.0)
        while step < total:
            c = b.cost(step, total)
            lows += c < 1.0
            t += real_low if c < 1.0 else 0.5
            step += 1
            total = b.observe(step, t, c) or total
        assert 59.4 <= t <= 60.0 and 0.25 <= lows / step <= 0.4, (real_low, t, lows, step)
    with pytest.raises(ValueError, match="phases"):
        TimeBudget(minutes=1.0, t0=0.0, phases=((0.1, 1.0),))


def test_time_budget_too_short_for_the_final_knn_warns(capsys):
    from selfsup.training.budget import TimeBudget
    from selfsup.training.loop import _refit_budget

    now = time.perf_counter()
    # 6 s budget, 0.5 s per step measured; the final kNN over 10,000 images at 0.5 / (8 * 2) / 3 s each ~ 104 s
    b = TimeBudget(minutes=0.1, t0=now, calibration_steps=0, window=4, sec_per_step=0.5)
    b.observe = lambda step, t, cost=1.0: 10  # type: ignore[method-assign]
    _refit_budget(b, 10, range(9000), range(1000), local_batch=8, n_views=2)
    err = capsys.readouterr().err
    assert "warning: --time-budget 0.1 min" in err and "drop --val" in err
    roomy = TimeBudget(minutes=60.0, t0=now, calibration_steps=0, window=4, sec_per_step=0.5)
    roomy.observe = lambda step, t, cost=1.0: 10  # type: ignore[method-assign]
    _refit_budget(roomy, 10, range(9000), range(1000), local_batch=8, n_views=2)
    assert "warning" not in capsys.readouterr().err
    # with a measured probe: 2 ms per image over 10,000 images + the similarity search
    probed = TimeBudget(minutes=60.0, t0=now, calibration_steps=0, window=4, sec_per_step=0.5)
    probed.observe = lambda step, t, cost=1.0: 10  # type: ignore[method-assign]
    _refit_budget(probed, 10, range(9000), range(1000), local_batch=8, n_views=2, eval_probe=lambda: (0.002, 256))
    assert probed.reserve_s == pytest.approx(3.0 + 0.5 + 0.002 * 10000 + 2 * 9000 * 1000 * 256 / 50e9)


@pytest.mark.integration
def test_time_budget_run_finishes_on_time(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=16)
    cfg = tiny_config(str(data), str(tmp_path / "run"), epochs=1, time_budget=0.25)
    cfg.data.val = str(data)
    cfg.train.knn_every = 0
    summary = pretrain(cfg)
    assert summary["steps"] > 2 * 4  # ran past the provisional 1 epoch (4 steps)
    assert 0.85 * 15 <= summary["total_wall_time_s"] <= 1.03 * 15, summary
    assert "knn_top1" in summary  # the final evaluation ran inside the budget


def test_overrides_parse_by_declared_type():
    from selfsup.config import PretrainConfig, apply_overrides, parse_set

    cfg = apply_overrides(PretrainConfig(), parse_set(["optim.weight_decay=1e-6", "optim.lr=2", "data.val=123",
                                                       "train.max_steps=7", "train.precision=bf16"]))
    assert cfg.optim.weight_decay == 1e-6 and isinstance(cfg.optim.lr, float) and cfg.optim.lr == 2.0
    assert cfg.data.val == "123" and cfg.train.max_steps == 7 and cfg.train.precision == "bf16"
    with pytest.raises(ConfigError, match="optim.lr"):
        apply_overrides(PretrainConfig(), parse_set(["optim.lr=fast"]))


def test_preset_with_another_method_keeps_hardware_choices_and_drops_the_method_recipe():
    from selfsup.cli import build_parser
    from selfsup.commands.pretrain import config_from_args

    def cfg_for(*extra):
        args = build_parser().parse_args(["pretrain", "--preset", "cpu-32px", "--data", "x", "--out", "y", *extra])
        return config_from_args(args)

    own = cfg_for()
    assert own.method["temperature"] == 0.1 and own.optim.name == "lars" and own.optim.base_lr == 1.8
    assert own.data.low_res_size == 24
    other = cfg_for("--method", "simsiam")
    assert other.method == {"name": "simsiam"} and other.data.low_res_size == 0  # measured with SimCLR only
    assert other.data.image_size == own.data.image_size
    assert other.optim.name is None and other.optim.base_lr is None and other.optim.weight_decay is None
    assert other.backbone.name == own.backbone.name and other.train.batch_size == own.train.batch_size
    assert other.optim.warmup_epochs == own.optim.warmup_epochs
    # explicit choices after the preset still win
    assert cfg_for("--method", "byol", "--lr", "0.5").optim.lr == 0.5


def test_malloc_tuning_applies_on_glibc_and_can_be_switched_off(monkeypatch):
    from selfsup.runtime import tune_allocator

    monkeypatch.setenv("SELFSUP_MALLOC_TUNING", "0")
    assert tune_allocator.__wrapped__() is False
    monkeypatch.setenv("SELFSUP_MALLOC_TUNING", "1")
    try:
        glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None
    except (ValueError, OSError, AttributeError):
        glibc = False
    assert tune_allocator.__wrapped__() is glibc


def test_preset_per_method_adjustments_apply_only_to_that_method():
    from selfsup.config.presets import preset_layer

    preset = {"backbone": {"name": "cnn-compact"}, "method": {"name": "simclr", "temperature": 0.2},
              "optim": {"name": "lars", "base_lr": 1.2, "warmup_epochs": 0.25},
              "methods": {"barlowtwins": {"method": {"proj_out_dim": 2048}}, "simclr": {"optim": {"base_lr": 1.0}}}}
    bt = preset_layer(preset, "barlowtwins")
    assert bt["method"] == {"proj_out_dim": 2048, "name": "barlowtwins"} and bt["optim"] == {"warmup_epochs": 0.25}
    own = preset_layer(preset, None)
    assert own["method"]["temperature"] == 0.2 and own["optim"]["base_lr"] == 1.0 and "methods" not in own
    assert "method" not in preset_layer(preset, "byol")  # no adjustments: the flag sets the name, the recipe the rest


def test_a_copied_preset_file_works_as_config_and_a_plain_config_is_untouched():
    from selfsup.config import PretrainConfig, apply_overrides, load_yaml
    from selfsup.config.presets import config_file_layer, preset_path

    cfg = PretrainConfig()  # a preset file has a 'methods:' section that a plain config does not know
    apply_overrides(cfg, config_file_layer(load_yaml(preset_path("cpu-32px")), "barlowtwins"), "config")
    assert cfg.backbone.name == "cnn-compact" and cfg.method["name"] == "barlowtwins"
    plain = {"method": {"name": "simclr"}, "optim": {"lr": 0.3}}
    assert config_file_layer(plain, "byol") is plain  # --method with a plain config keeps the file's optimiser
