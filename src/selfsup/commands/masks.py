"""``selfsup masks``: show how a masked-image-modelling run masks a batch (PNG grid).

One row per image: the augmented view, the FAMT weight map on the view's patch grid (computed now with the
checkpoint's encoder, resampled into the view's crop and flip), the encoder's visible patches, and the roles
(visible / masked in red / thrown in black). For ``mae`` / ``simmim`` the split is random (the weight map is
shown for reference); for ``famt-*`` it is drawn from the weights as in training after the warm-up.
"""

from __future__ import annotations

import argparse
from typing import Any

from selfsup.config.validate import int_range

EXAMPLE = """example:
  selfsup masks --checkpoint runs/famt --data data/cifar10/test --out masks.png --num 8"""


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("masks", help="save a PNG grid of a MIM run's masks (image, weights, visible/masked/thrown)",
                       epilog=EXAMPLE, formatter_class=formatter)
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt of mae/simmim/famt-* run")
    p.add_argument("--data", required=True, help="image folder or builtin:NAME")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--num", type=int_range(1, 256), default=8, help="images to show (N spread evenly over the data)")
    p.add_argument("--seed", type=int_range(0), default=0, help="seed of the augmentation and the mask draw")
    p.set_defaults(func=run)


def build_from_checkpoint(path: str) -> tuple[Any, dict[str, Any]]:
    """(method in eval mode with the checkpoint's weights, saved config dict)."""
    from selfsup.checkpoint import load_checkpoint, load_state_strict
    from selfsup.config import BackboneConfig, from_dict
    from selfsup.errors import CheckpointError
    from selfsup.methods import registry
    from selfsup.models.backbones import build_backbone

    payload = load_checkpoint(path)
    cfg = payload.get("config", {})
    if not all(isinstance(cfg.get(k), dict) for k in ("method", "data", "backbone")) or "image_size" not in cfg["data"]:
        raise CheckpointError(f"{path}: its saved config lacks the method, data or backbone section; pass a "
                              "checkpoint written by `selfsup pretrain`")
    name = cfg.get("method", {}).get("name")
    specs = registry()
    if name not in specs:
        raise CheckpointError(f"{path}: unknown method {name!r} in the checkpoint's config")
    spec = specs[name]
    if spec.family != "masked":
        raise CheckpointError(f"{path}: method '{name}' does not mask patches; pass a mae/simmim/famt-* run")
    size = int(cfg["data"]["image_size"])
    backbone = build_backbone(from_dict(BackboneConfig, cfg["backbone"]), size)
    mcfg = from_dict(spec.config_cls, {k: v for k, v in cfg["method"].items() if k != "name"})
    method = spec.build(backbone, mcfg, image_size=size, grayscale=bool(cfg["data"].get("grayscale", False)))
    load_state_strict(method, payload["method"], f"{name} method", path)
    return method.eval(), cfg


def draw_split(method: Any, view_weights: Any, generator: Any) -> Any:
    """The split the method would draw for these views; FAMT methods use ``view_weights`` [B, L]."""
    from selfsup.augment.masking import expand_cell_split, pool_to_cells, sample_split

    b = view_weights.shape[0]
    weighted = hasattr(method, "famt")
    high = bool(getattr(method.cfg, "mask_high", True))
    if hasattr(method, "sample_cell_split"):  # SimMIM family: masks over mask cells
        w = pool_to_cells(view_weights, method.grid, method.cell) if weighted else None
        s = sample_split(b, method.num_cells, method.n_mask, method.n_throw, weights=w, mask_high=high,
                         generator=generator)
        return expand_cell_split(s, method.grid, method.cell)
    return sample_split(b, method.num_patches, method.n_mask, method.n_throw,
                        weights=view_weights if weighted else None, mask_high=high, generator=generator)


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from selfsup.augment.masking import (
        MASKED,
        THROWN,
        famt_weights,
        vit_attention_and_tokens,
        weights_to_view,
    )
    from selfsup.augment.views import eval_transform, make_views
    from selfsup.checkpoint import atomic_write
    from selfsup.config.validate import check_output_file
    from selfsup.data import open_dataset, spread_rows
    from selfsup.errors import ConfigError

    if args.num < 1:
        raise ConfigError(f"--num must be at least 1, got {args.num}")
    check_output_file(args.out, "--out", (".png",))  # before any work
    method, cfg = build_from_checkpoint(args.checkpoint)
    size = method.image_size
    ds = open_dataset(args.data, int(cfg["data"].get("cache_size") or size), progress=False)
    rows = spread_rows(len(ds), args.num)
    n = len(rows)
    imgs = torch.from_numpy(np.array(ds.images[rows]))  # a writable copy of the memmap rows
    recipe = method.view_recipe
    gen = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        views, params = make_views(imgs, recipe, gen, channels_last=False)
        full = eval_transform(imgs, size, recipe.mean, recipe.std, channels_last=False)
        attn, tokens = vit_attention_and_tokens(method.backbone.net, full)
        maps = famt_weights(attn, tokens).reshape(n, method.grid, method.grid)
        wv = weights_to_view(maps, params[0].boxes, params[0].flip, method.grid)
        split = draw_split(method, wv, gen)

    mean = torch.tensor(recipe.mean).reshape(1, 3, 1, 1)
    std = torch.tensor(recipe.std).reshape(1, 3, 1, 1)
    rgb = (views[0] * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    p = method.patch
    state = split.state.reshape(n, method.grid, method.grid).repeat_interleave(p, 1).repeat_interleave(p, 2).numpy()
    fig, axes = plt.subplots(n, 4, figsize=(8, 2 * n), squeeze=False)
    titles = ["view", "FAMT weight", "encoder input", "red masked / black thrown"]
    for i in range(n):
        visible = rgb[i].copy()
        visible[state[i] != 0] = 0.5
        roles = rgb[i].copy()
        roles[state[i] == MASKED] = 0.4 * roles[state[i] == MASKED] + 0.6 * np.array([1.0, 0.0, 0.0])
        roles[state[i] == THROWN] = 0.0
        panels = [rgb[i], wv[i].reshape(method.grid, method.grid).numpy(), visible, roles]
        for j, (ax, img) in enumerate(zip(axes[i], panels)):
            ax.imshow(img, cmap="viridis" if j == 1 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
    name = cfg["method"]["name"]
    fig.suptitle(f"{name}: {int((split.state[0] == 0).sum())} visible, {split.masked.shape[1]} masked, "
                 f"{split.thrown.shape[1]} thrown of {split.num_patches} patches", fontsize=9)
    fig.tight_layout()
    atomic_write(args.out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    print(f"wrote {args.out} ({n} images, method {name})")
    return 0
