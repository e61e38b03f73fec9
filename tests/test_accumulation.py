"""Gradient accumulation (train.accumulate_steps): the summed micro-batch gradient is the full batch's, methods
whose loss couples the samples of a batch are refused in one line before any folder exists."""

import json

import pytest
import torch

from selfsup.augment.masking import split_from_permutation
from selfsup.augment.recipes import ViewParams
from selfsup.cli import main
from selfsup.config import BackboneConfig
from selfsup.config.build import build_config
from selfsup.errors import ConfigError
from selfsup.methods import Batch, Progress, registry
from selfsup.methods.mae import MAE, MAEConfig
from selfsup.models.backbones import build_backbone
from selfsup.training.loop import pretrain
from selfsup.training.step import micro_batches, train_step

from .helpers import make_class_folder, tiny_config

ALLOWED = {"mae", "simmim", "famt-mae", "famt-simmim", "rotnet"}


def _mae(n_images: int) -> MAE:
    """A tiny MAE whose masking is a fixed function of each sample's dataset index, so a micro-batch draws
    the same masks for its samples as the full batch does."""
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="vit-tiny", patch_size=4), 16)
    m = MAE(backbone, MAEConfig(decoder_dim=16, decoder_depth=1, decoder_heads=2), image_size=16)
    perms = torch.stack([torch.randperm(m.num_patches, generator=torch.Generator().manual_seed(i))
                         for i in range(n_images)])
    m.sample_split = lambda batch, x: split_from_permutation(perms[batch.index], m.n_mask, m.n_throw)  # type: ignore[method-assign]
    return m


def _batch(b: int) -> Batch:
    g = torch.Generator().manual_seed(1)
    params = [ViewParams(torch.rand(b, 4, generator=g), torch.rand(b, generator=g) > 0.5,
                         torch.full((b, 2), 16, dtype=torch.int64))]
    return Batch([torch.randn(b, 3, 16, 16, generator=g)], torch.arange(b), params)


def _grads(batch: Batch, n: int) -> tuple[float, dict[str, torch.Tensor]]:
    m = _mae(batch.index.shape[0])
    opt = torch.optim.SGD(m.parameters(), lr=0.0)  # a step that keeps the weights: the gradients stay readable
    prog = Progress(step=0, total_steps=1, epoch=0, steps_per_epoch=1)
    res = train_step(m, m, opt, batch, prog, device=torch.device("cpu"), accumulate_steps=n)
    return float(res.out.loss.detach()), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("b", "n"), [(8, 2), (8, 4), (5, 2)])  # 5 / 2: unequal slices, weighted by their size
def test_accumulated_gradient_equals_the_full_batch_gradient(b, n):
    batch = _batch(b)
    loss_full, full = _grads(batch, 1)
    loss_acc, acc = _grads(batch, n)
    assert loss_acc == pytest.approx(loss_full, rel=1e-5)
    assert full.keys() == acc.keys() and len(full) > 10
    assert sum(float(g.abs().sum()) for g in full.values()) > 0
    for k in full:
        torch.testing.assert_close(acc[k], full[k], rtol=1e-4, atol=1e-6, msg=k)


def test_unweighted_micro_batches_would_differ():
    """The check above can fail: summing unweighted micro-batch losses doubles the gradient."""
    batch = _batch(8)
    _, full = _grads(batch, 1)
    m = _mae(8)
    prog = Progress(step=0, total_steps=1, epoch=0, steps_per_epoch=1)
    for part in micro_batches(batch, 2):
        m(part, prog).loss.backward()
    k = "decoder_pred.weight"
    assert not torch.allclose(dict(m.named_parameters())[k].grad, full[k], rtol=1e-2)


def test_micro_batches_slice_views_index_and_params():
    batch = _batch(5)
    parts = micro_batches(batch, 2)
    assert [p.index.tolist() for p in parts] == [[0, 1], [2, 3, 4]]
    assert torch.equal(torch.cat([p.views[0] for p in parts]), batch.views[0])
    assert torch.equal(torch.cat([p.params[0].boxes for p in parts]), batch.params[0].boxes)
    assert len(micro_batches(_batch(2), 4)) == 2  # empty slices are left out


def test_every_method_declares_whether_it_accumulates():
    specs = registry()
    assert {n for n, s in specs.items() if s.accumulates} == ALLOWED
    for name, spec in specs.items():
        assert spec.accumulates or len(spec.coupling) > 20, name


def _cfg(data, out, method, backbone="vit-tiny", **kw):
    sets = {"data": {"path": str(data), "image_size": 16}, "backbone": {"name": backbone},
            "train": {"accumulate_steps": kw.pop("n", 2), "batch_size": kw.pop("batch_size", 8)}}
    return build_config(method=method, out=str(out), set=sets)


@pytest.mark.parametrize("method", sorted(set(registry()) - ALLOWED))
def test_batch_statistics_methods_are_refused(method, tmp_path):
    with pytest.raises(ConfigError, match=f"method {method} cannot accumulate gradients: .*drop train.accumulate"):
        _cfg(tmp_path, tmp_path / "run", method)


def test_bn_backbone_and_indivisible_batch_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="backbone cnn-compact has BatchNorm"):
        _cfg(tmp_path, tmp_path / "run", "rotnet", backbone="cnn-compact")
    with pytest.raises(ConfigError, match=r"must divide train.batch_size \(6\).*e.g. 3"):
        _cfg(tmp_path, tmp_path / "run", "mae", batch_size=6, n=4)
    _cfg(tmp_path, tmp_path / "run", "mae", batch_size=6, n=3)  # divides: accepted


@pytest.mark.parametrize(("method", "extra", "expect"), [
    ("simclr", [], "method simclr cannot accumulate gradients: its loss uses in-batch negatives"),
    ("mae", ["--batch-size", "6", "--set", "train.accumulate_steps=4"], "must divide train.batch_size (6)"),
])
def test_cli_refusal_is_one_line_exit_2_and_creates_nothing(method, extra, expect, tmp_path, capsys):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    out = tmp_path / "run"
    argv = ["pretrain", "--data", str(data), "--method", method, "--out", str(out), "--image-size", "16",
            "--backbone", "vit-tiny", "--batch-size", "8", "--set", "train.accumulate_steps=2", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and len(err.splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.integration
def test_batchnorm_in_a_method_head_is_refused_before_the_run_folder(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=4)
    cfg = tiny_config(str(data), str(tmp_path / "run"), method="rotnet", accumulate_steps=2)
    cfg.backbone.name = "vit-tiny"  # no BatchNorm in the backbone, but rotnet's MLP head has one
    with pytest.raises(ConfigError, match=r"method rotnet on vit-tiny has BatchNorm \(classifier"):
        pretrain(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_accumulating_run_resumes_exactly(tmp_path):
    data = make_class_folder(tmp_path / "data", classes=2, per_class=8)

    def cfg(out, steps):
        c = tiny_config(str(data), str(tmp_path / out), method="mae", epochs=2, max_steps=steps, accumulate_steps=2)
        c.backbone.name = "vit-tiny"
        return c

    pretrain(cfg("full", 4))
    pretrain(cfg("part", 2))
    pretrain(cfg("part", 4), resume=True)

    def losses(out):
        rows = [json.loads(x) for x in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    a, b = losses("full"), losses("part")
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4]
    for (s, la), (_, lb) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-6, abs=1e-7), f"step {s}"
