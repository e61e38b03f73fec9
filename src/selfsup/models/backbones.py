"""Backbones behind one interface.

Every encoder is an ``nn.Module`` with ``num_features`` and ``forward(x: [B, 3, H, W]) -> [B, num_features]``
(pooled features, before any projection head). Architectures come from torchvision and timm; only
the compact CPU CNN is our own (torchvision has nothing that small).

| name        | source      | features | notes |
|-------------|-------------|----------|-------|
| resnet18    | torchvision | 512      | ``small_stem``: 3x3/1 conv, no max-pool (CIFAR-style, for 32-96 px) |
| resnet50    | torchvision | 2048     | same stem option |
| cnn-compact | selfsup     | 8*width  | 4 stages of conv-BN-ReLU pairs, ~0.3-1.2 M params; sized for CPUs |
| vit-tiny    | timm        | 192      | ``patch_size`` configurable (4 for 32 px, 16 for 224 px) |
| vit-small   | timm        | 384      | same |
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from selfsup.config import BackboneConfig
from selfsup.errors import ConfigError


class ResNetEncoder(nn.Module):
    """torchvision ResNet with the classifier removed; optional small-image stem."""

    def __init__(self, depth: int, small_stem: bool) -> None:
        super().__init__()
        import torchvision

        ctor = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth]
        net = ctor(weights=None)  # never download weights at run time
        if small_stem:
            # CIFAR stem (SimCLR paper, Appendix B.9): a 7x7/2 conv plus max-pool would shrink a
            # 32 px image to 8 px before the first block and cost accuracy.
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()  # type: ignore[assignment]
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()  # type: ignore[assignment]
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CompactCNN(nn.Module):
    """A small VGG/ResNet-like CNN for CPU training on 28-96 px images.

    Stages of width w, 2w, 4w, 8w; each stage is two 3x3 conv-BN-ReLU layers with a residual add,
    the first stage at full resolution and each later one halving it. Global average pooling at the end.
    At w=32 on 32 px inputs it costs ~0.14 GFLOP forward per image (ResNet-18 CIFAR: ~0.56).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        w = width
        self.stem = _conv_bn(3, w, 1)
        chans = [w, 2 * w, 4 * w, 8 * w]
        self.downs = nn.ModuleList()
        self.blocks = nn.ModuleList()
        cin = w
        for i, c in enumerate(chans):
            self.downs.append(_conv_bn(cin, c, 1 if i == 0 else 2))
            self.blocks.append(
                nn.Sequential(
                    nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)
                )
            )
            cin = c
        self.num_features = chans[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for down, block in zip(self.downs, self.blocks):
            x = down(x)
            x = x + block(x)
        return torch.flatten(self.pool(x), 1)


class ViTEncoder(nn.Module):
    """timm VisionTransformer with a CLS token; ``forward`` returns the final-norm CLS feature.

    ``forward_tokens`` exposes all tokens for masked image modelling.
    """

    def __init__(self, variant: str, image_size: int, patch_size: int) -> None:
        super().__init__()
        import timm

        if image_size % patch_size:
            raise ConfigError(
                f"ViT patch size {patch_size} does not divide image size {image_size}; "
                "set backbone.patch_size to a divisor (e.g. 4 for 32 px, 16 for 224 px)"
            )
        self.net = timm.create_model(
            f"vit_{variant}_patch16_224",
            pretrained=False,  # never download weights at run time
            img_size=image_size,
            patch_size=patch_size,
            num_classes=0,
            global_pool="token",
            dynamic_img_size=True,  # multi-crop feeds smaller local views
        )
        self.num_features = int(getattr(self.net, "num_features"))
        self.patch_size = patch_size
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, 1 + L, D] normalised tokens (CLS first)."""
        out: torch.Tensor = self.net.forward_features(x)  # type: ignore[operator]
        return out


BACKBONES: dict[str, tuple[str, Callable[[BackboneConfig, int], nn.Module]]] = {
    "resnet18": ("torchvision", lambda c, s: ResNetEncoder(18, _small_stem(c, s))),
    "resnet50": ("torchvision", lambda c, s: ResNetEncoder(50, _small_stem(c, s))),
    "cnn-compact": ("selfsup", lambda c, s: CompactCNN(c.width)),
    "vit-tiny": ("timm", lambda c, s: ViTEncoder("tiny", s, c.patch_size or max(1, s // 8))),
    "vit-small": ("timm", lambda c, s: ViTEncoder("small", s, c.patch_size or max(1, s // 8))),
}


def feature_dim(backbone: nn.Module) -> int:
    """``backbone.num_features`` as an int (typed accessor for the shared encoder interface)."""
    return int(getattr(backbone, "num_features"))


def _small_stem(cfg: BackboneConfig, image_size: int) -> bool:
    return cfg.small_stem if cfg.small_stem is not None else image_size <= 96


def resolve_backbone_config(cfg: BackboneConfig, image_size: int) -> BackboneConfig:
    """A copy of ``cfg`` with the automatic fields filled, so that the saved config states exactly what was built."""
    if cfg.name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{cfg.name}'; choose one of: {', '.join(BACKBONES)}")
    if cfg.name.startswith("resnet") and cfg.small_stem is None:
        return dataclasses.replace(cfg, small_stem=image_size <= 96)
    if cfg.name.startswith("vit") and cfg.patch_size is None:
        return dataclasses.replace(cfg, patch_size=max(1, image_size // 8))
    return dataclasses.replace(cfg)


def build_backbone(cfg: BackboneConfig, image_size: int) -> nn.Module:
    """Build the encoder named in ``cfg`` for square inputs of side ``image_size`` (``cfg`` is not changed)."""
    cfg = resolve_backbone_config(cfg, image_size)
    return BACKBONES[cfg.name][1](cfg, image_size)


def check_bf16_cpu_conv_sizes(backbone: nn.Module, sizes: list[int], *, name: str, hint: str) -> None:
    """Refuse input sides at which a strided convolution of ``backbone`` would see a map smaller than its stride.

    PyTorch 2.14's bf16 CPU convolution (oneDNN) computes the *weight gradient* of such a layer from
    uninitialised memory: garbage, often NaN, different on every call. Minimal case: a 3x3, stride-2,
    padding-1 ``Conv2d`` on a 1x1 map (``cnn-compact`` at 4 px, or a ResNet with the ImageNet stem at
    16 px); found by a flaky NaN in CI. The output is a degenerate 1x1 map anyway, so we fail fast with
    the fix rather than train on garbage. Call only for bf16 training on the CPU; fp32 is exact.
    """
    convs = [(n, m) for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)]
    if not any(max(m.stride) > 1 for _, m in convs):
        return
    in_ch = convs[0][1].in_channels

    def offenders(side: int) -> list[tuple[str, tuple[int, int], tuple[int, int]]]:
        seen: list[tuple[str, tuple[int, int], tuple[int, int]]] = []
        hooks = [m.register_forward_pre_hook(
            lambda mod, args, n=n: seen.append((n, tuple(mod.stride), tuple(args[0].shape[-2:]))))
            for n, m in convs]
        was_training = backbone.training
        try:
            backbone.eval()  # no BN statistics are touched; one image suffices for the shapes
            with torch.no_grad():
                p = next(backbone.parameters())
                backbone(torch.zeros(1, in_ch, side, side, device=p.device, dtype=p.dtype))
        except RuntimeError:
            return []  # a size the backbone rejects outright (ViT's fixed grid) fails later with its own error
        finally:
            for h in hooks:
                h.remove()
            backbone.train(was_training)
        return [(n, s, hw) for n, s, hw in seen if s[0] > hw[0] or s[1] > hw[1]]

    for side in sorted(set(sizes)):
        bad = offenders(side)
        if bad:
            layer, stride, hw = bad[0]
            ok = next((s for s in range(side + 1, 8 * side + 1) if not offenders(s)), None)
            need = f"views of at least {ok} px" if ok else "larger views"
            raise ConfigError(
                f"{side} px views are too small for backbone {name}: its layer {layer} (stride {stride[0]}) would "
                f"see a {hw[0]}x{hw[1]} map, where PyTorch's bf16 CPU convolution returns wrong weight gradients "
                f"(NaN); use {need} ({hint}) or --precision fp32")
