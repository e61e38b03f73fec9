"""Walks the method registry: every registered method gets the same smoke tests automatically."""

import math

import pytest
import torch

from selfsup.augment.views import make_views
from selfsup.config import BackboneConfig, from_dict
from selfsup.methods import Batch, Progress, registry
from selfsup.models.backbones import build_backbone

from .helpers import make_class_folder, tiny_config, tiny_method_overrides

METHODS = sorted(registry())


def _build(name: str, image_size: int = 16):
    spec = registry()[name]
    if spec.family == "masked":
        bcfg = BackboneConfig(name="vit-tiny", patch_size=4)
    else:
        bcfg = BackboneConfig(name="cnn-compact", width=4)
    torch.manual_seed(0)
    backbone = build_backbone(bcfg, image_size)
    cfg = from_dict(spec.config_cls, tiny_method_overrides(name))
    return spec, spec.build(backbone, cfg, image_size=image_size, grayscale=False)


def test_registry_lists_methods_with_family_and_paper():
    assert {"simclr", "byol"} <= set(METHODS)
    for name, spec in registry().items():
        assert spec.family and "arXiv" in spec.paper, name


@pytest.mark.parametrize("name", METHODS)
def test_one_step_finite_loss_and_gradients_reach_every_parameter(name):
    spec, method = _build(name)
    method.train()
    images = torch.randint(0, 256, (6, 20, 20, 3), dtype=torch.uint8)
    views, params = make_views(images, method.view_recipe, torch.Generator().manual_seed(0), channels_last=False)
    # well past any first-epoch freezing (DINO last layer, SwAV prototypes)
    progress = Progress(step=50, total_steps=100, epoch=5, steps_per_epoch=10)
    out = method(Batch(views=views, index=torch.arange(6), params=params), progress)
    assert out.loss.dim() == 0 and math.isfinite(out.loss.item())
    out.loss.backward()
    trainable = {n: p for n, p in method.named_parameters() if p.requires_grad}
    assert trainable
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"{name}: no gradient reached {missing[:5]}"
    assert hasattr(method, "backbone") and hasattr(method.backbone, "num_features")


@pytest.mark.integration
@pytest.mark.parametrize("name", METHODS)
def test_three_training_steps_through_the_loop(name, tmp_path):
    from selfsup.training.loop import pretrain

    data = make_class_folder(tmp_path / "data", classes=2, per_class=8)
    cfg = tiny_config(str(data), str(tmp_path / "run"), method=name, max_steps=3, epochs=2)
    if registry()[name].family == "masked":
        cfg.backbone.name, cfg.backbone.patch_size = "vit-tiny", 4
    summary = pretrain(cfg)
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
