"""``selfsup views``: see what a method's augmentation does to your images before training (PNG grid).

One row per image: the original (the stored native-aspect image, with every view's crop box drawn on it),
then the training views, made by the real view pipeline (:func:`selfsup.augment.views.make_views`, the same
recipe, crop boxes drawn in each image's own height and width). ``--boxes`` also writes every view's crop
box in pixels of the ORIGINAL image file (JSON), so the crop geometry can be checked from outside.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

EXAMPLE = """example:
  selfsup views --data photos/ --method simclr --out views.png --boxes boxes.json
  selfsup views --data photos/ --method dino --image-size 96 --num 4 --views 10 --out dino.png"""


def add_parser(sub: Any, formatter: type) -> None:
    p = sub.add_parser("views", help="save a PNG grid of training views of a few images (and their crop boxes)",
                       epilog=EXAMPLE, formatter_class=formatter)
    p.add_argument("--data", required=True, help="image folder (root/<class>/*.jpg or root/*.jpg) or builtin:NAME")
    p.add_argument("--method", default="simclr", help="method whose view recipe to show (see `selfsup methods`)")
    p.add_argument("--out", required=True, help="output .png")
    p.add_argument("--boxes", default=None, help="also write every view's crop box, in original-image pixels, "
                   "to this .json")
    p.add_argument("--image-size", type=int, default=96, help="view side in px (data.image_size)")
    p.add_argument("--cache-size", type=int, default=None,
                   help="stored shorter side (data.cache_size); default: from the image size")
    p.add_argument("--num", type=int, default=6, help="images to show (N spread evenly over the data)")
    p.add_argument("--views", type=int, default=8, help="views per image")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation")
    p.add_argument("--cache-dir", default=None, help="image cache folder (default $SELFSUP_CACHE or ~/.cache/selfsup)")
    p.set_defaults(func=run)


def _check_out(path: str, suffix: str, flag: str) -> Path:
    """Validate an output path before any work: the right suffix and an existing, writable folder."""
    from selfsup.errors import ConfigError

    out = Path(path).expanduser()
    if out.suffix.lower() != suffix:
        raise ConfigError(f"{flag} {path} must end in {suffix}; e.g. {flag} views{suffix}")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"{flag} {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{flag} {path}: folder {folder} is not writable; choose another path")
    if out.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; pass a file name ending in {suffix}")
    return out


def view_recipe(method: str, image_size: int) -> Any:
    """The view recipe ``method`` trains with at ``image_size`` (default hyper-parameters)."""
    import torch

    from selfsup.config import BackboneConfig
    from selfsup.errors import ConfigError, UserError
    from selfsup.methods import registry
    from selfsup.models.backbones import build_backbone

    specs = registry()
    if method not in specs:
        raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(sorted(specs))}")
    spec = specs[method]
    torch.manual_seed(0)
    errors = []
    # the recipe does not depend on the encoder; the smallest that the method accepts is built
    for backbone in (BackboneConfig(name="cnn-compact", width=4), BackboneConfig(name="vit-tiny")):
        try:
            built = spec.build(build_backbone(backbone, image_size), spec.config_cls(), image_size=image_size,
                               grayscale=False)
            return built.view_recipe
        except (UserError, ValueError) as e:
            errors.append(str(e))
    raise ConfigError(f"cannot build method {method!r} at {image_size} px to read its views: {errors[-1]}")


def original_boxes(params: Any, sizes: Any, orig: list[tuple[int, int]]) -> list[list[float]]:
    """Per sample: (top, left, height, width) in pixels of the original file, from boxes given as fractions
    of the stored image. Stored rows are the original resized (shorter side S) after a centre cut of
    aspects beyond 10:1 (:func:`selfsup.data.images.native_box`), so fractions map through that box."""
    from selfsup.data.images import native_box

    out = []
    for i, (top, left, bh, bw) in enumerate(params.boxes.double().tolist()):
        oh, ow = orig[i]
        (x0, y0, x1, y1), _ = native_box(ow, oh, int(min(sizes[i])))
        ch, cw = y1 - y0, x1 - x0
        out.append([y0 + top * ch, x0 + left * cw, bh * ch, bw * cw])
    return out


def run(args: argparse.Namespace) -> int:
    from selfsup.errors import ConfigError

    out = _check_out(args.out, ".png", "--out")
    boxes_out = _check_out(args.boxes, ".json", "--boxes") if args.boxes else None
    for flag, v, lo in (("--num", args.num, 1), ("--views", args.views, 1), ("--image-size", args.image_size, 4)):
        if v < lo:
            raise ConfigError(f"{flag} must be at least {lo}, got {v}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    from matplotlib.patches import Rectangle

    from selfsup.augment.views import make_views
    from selfsup.checkpoint import atomic_write, atomic_write_text
    from selfsup.data import default_cache_size, open_dataset, spread_rows
    from selfsup.data.decode import upright_size

    recipe = view_recipe(args.method, args.image_size)
    cache_size = args.cache_size or default_cache_size(args.image_size)
    if cache_size < args.image_size:
        raise ConfigError(f"--cache-size {cache_size} is smaller than --image-size {args.image_size}")
    ds = open_dataset(args.data, cache_size, cache_dir=args.cache_dir, progress=False)
    rows = spread_rows(len(ds), args.num)
    n = len(rows)
    images, sizes = ds.batch_rows(rows)
    hw = ds.sizes()[rows]
    rounds = math.ceil(args.views / len(recipe.views))
    gen = torch.Generator().manual_seed(args.seed)
    shown: list[tuple[Any, Any]] = []  # (view batch [n, 3, s, s] in [0, 1], params), in order
    with torch.no_grad():
        for _ in range(rounds):
            views, params = make_views(images, recipe, gen, channels_last=False, sizes=sizes)
            for v, p in zip(views, params):
                mean = torch.tensor(recipe.mean).reshape(1, 3, 1, 1)
                std = torch.tensor(recipe.std).reshape(1, 3, 1, 1)
                shown.append(((v.float() * std + mean).clamp(0, 1), p))
    shown = shown[: args.views]

    records: list[dict[str, Any]] = []
    orig_sizes: list[tuple[int, int]] = []
    for i in range(n):
        path = ds.paths[i]
        if os.path.isfile(path):
            w, h = upright_size(path)  # the header's size, EXIF orientation applied; no decode
        else:  # builtin rows: the stored image is the original
            h, w = (int(v) for v in hw[i])
        orig_sizes.append((h, w))
    for k, (_, p) in enumerate(shown):
        px = original_boxes(p, hw, orig_sizes)
        for i in range(n):
            t, left, bh, bw = px[i]
            records.append({"image": ds.paths[i], "height": orig_sizes[i][0], "width": orig_sizes[i][1],
                            "view": k, "top": round(t, 2), "left": round(left, 2), "box_height": round(bh, 2),
                            "box_width": round(bw, 2), "flip": bool(p.flip[i])})

    cols = 1 + len(shown)
    aspect = max(float(w / h) for h, w in hw.tolist())
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * (cols - 1) + 1.6 * min(aspect, 4.0), 1.7 * n), squeeze=False,
                             gridspec_kw={"width_ratios": [min(aspect, 4.0)] + [1] * (cols - 1)})
    colours = plt.get_cmap("tab10")
    for i in range(n):
        h, w = (int(v) for v in hw[i])
        ax = axes[i, 0]
        ax.imshow(images[i, :h, :w].numpy(), interpolation="nearest")
        for k, (_, p) in enumerate(shown):
            t, left, bh, bw = (float(v) for v in p.boxes[i])
            ax.add_patch(Rectangle((left * w - 0.5, t * h - 0.5), bw * w, bh * h, fill=False, lw=1.0,
                                   edgecolor=colours(k % 10)))
        ax.set_title(f"{Path(ds.paths[i]).name} {orig_sizes[i][1]}x{orig_sizes[i][0]}", fontsize=6)
        for k, (v, _) in enumerate(shown):
            a = axes[i, 1 + k]
            a.imshow(v[i].permute(1, 2, 0).numpy(), interpolation="nearest")
            for spine in a.spines.values():
                spine.set_edgecolor(colours(k % 10))
                spine.set_linewidth(2)
            if i == 0:
                a.set_title(f"view {k} ({v.shape[-1]} px)", fontsize=6)
        for a in axes[i]:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(f"{args.method} views of {args.data} (boxes drawn in each image's own height and width)",
                 fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    print(f"wrote {out} ({n} images x {len(shown)} views)")
    if boxes_out is not None:
        atomic_write_text(boxes_out, json.dumps({"method": args.method, "image_size": args.image_size,
                                                 "cache_size": cache_size, "views": records}, indent=1))
        print(f"wrote {boxes_out} ({len(records)} crop boxes in original-image pixels)")
    return 0
