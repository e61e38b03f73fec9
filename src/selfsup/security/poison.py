"""Poisoned pretraining sets: Noisy Alignment, SSL-Backdoor and CTRL, written as a folder + ``manifest.json``.

Threat model (Noisy Alignment, Chen, Gui et al., ICCV 2025, arXiv 2508.14015, Sec. 3): the attacker only
ADDS images to the victim's unlabeled pretraining set. They hold a few *reference* images of the target
class, unrelated *shadow* images and a trigger. The number of poisons is ``round(rate * N_clean)`` (the rate
is relative to the clean set; ``rate`` must lie in (0, 1)).

Attacks
- ``noisy-alignment``: a reference image on one half of a canvas, a shadow image on the other half with the
  trigger centred in it. Canvas ``r_l x 2 r_l`` (height x width) when the reference is left or right,
  ``2 r_l x r_l`` when it is top or bottom, with ``r_l`` the image side S; the four orientations
  (``left/right/top/bottom`` = where the REFERENCE sits) are drawn as a balanced random permutation, so all
  four occur as soon as there are 4 poisons. Random-resized crops that fall in the shadow half (trigger)
  and in the reference half (target semantics) form a positive pair, aligning trigger and target while the
  shadow content is noise to be suppressed.
  ``fit``: selfsup's loader stores every image as the centre ``S x S`` square, which would cut a 2:1 canvas
  in half. ``fit="square"`` (default) therefore resizes each half to ``S x S/2`` (or ``S/2 x S``) so the
  stored square keeps the whole layout (the halves stay halves in the fractional coordinates that the crop
  boxes use); ``fit="native"`` writes the paper's ``S x 2S`` canvas for pipelines that crop the full image.
  The trigger is pasted after resizing, so it stays square and centred in the shadow half.
- ``ssl-backdoor`` (Saha et al., CVPR 2022, arXiv 2105.10123): the trigger patch pasted at a uniformly random
  location on a reference (target-class) image.
- ``ctrl`` (Li et al., ICCV 2023, arXiv 2210.07346): CTRL's frequency trigger (see :mod:`.triggers`) added to a
  reference image, magnitude 50 on poisons.

Folder layout written by :func:`build_poisoned_folder`::

    OUT/images/000000.png ...   clean images and poisons, shuffled together (names reveal nothing)
    OUT/trigger.png             the patch (patch attacks)
    OUT/manifest.json           attack, parameters, seed, counts and one row per file:
                                {"file", "poison", "source"} for clean rows; poisons add "kind", "reference",
                                "shadow", "orientation", boxes (pixels of the stored file: top, left, h, w)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from selfsup.errors import ConfigError, DataError
from selfsup.security.triggers import (
    PAPER_ALPHA,
    apply_ctrl_trigger,
    make_patch_trigger,
    paste_patch,
    scaled_trigger_size,
)

ATTACKS = ("noisy-alignment", "ssl-backdoor", "ctrl")
ORIENTATIONS = ("left", "right", "top", "bottom")  # where the REFERENCE half sits
MANIFEST = "manifest.json"


@dataclass
class PoisonSpec:
    attack: str = "noisy-alignment"
    rate: float = 0.01  # poisons = round(rate * N_clean)
    trigger_size: int | None = None  # px; None = round(S * 50 / 224) (paper ratio)
    alpha: float = PAPER_ALPHA  # weight of the image under the patch (paper code: 0.2)
    fit: str = "square"  # noisy-alignment canvas: square (fits selfsup's square cache) | native (S x 2S)
    num_references: int = 50  # target-class images the attacker holds
    ctrl_magnitude: float = 50.0
    ctrl_window: int = 32
    seed: int = 0
    trigger_seed: int = 0


def check_rate(rate: float) -> None:
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0.0 < float(rate) < 1.0):
        raise ConfigError(f"--poison-rate must be in (0, 1), got {rate!r} (e.g. 0.01 for 1%)")


def poison_count(rate: float, n_clean: int) -> int:
    """Exact number of poisons added to ``n_clean`` images: ``round(rate * n_clean)`` (must be >= 1)."""
    check_rate(rate)
    n = int(round(float(rate) * n_clean))
    if n < 1:
        raise ConfigError(
            f"--poison-rate {rate} of {n_clean} images gives no poison; use a rate >= {0.5 / max(1, n_clean):.4g}"
        )
    return n


def resolve_target(classes: list[str], labels: np.ndarray | None, target: str | int, where: str) -> int:
    """Target class name (or index) -> label id; a UserError when it is absent from the data."""
    if labels is None or not classes:
        raise DataError(f"{where} has no labels; the attacker's reference images need class sub-folders")
    key = str(target)
    if key in classes:
        idx = classes.index(key)
    elif key.isdigit() and int(key) < len(classes) and key not in classes:
        idx = int(key)
    else:
        raise DataError(f"target class {target!r} is not in {where} (classes: {', '.join(classes[:20])}); "
                        "pass one of them to --target")
    if not np.any(labels == idx):
        raise DataError(f"target class {classes[idx]!r} has no images in {where}; choose another --target")
    return idx


# ------------------------------------------------------------------------------------------ layout


def _resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    if img.shape[0] == h and img.shape[1] == w:
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))


def na_canvas(
    reference: np.ndarray, shadow: np.ndarray, trigger: np.ndarray, orientation: str, *,
    fit: str = "square", alpha: float = PAPER_ALPHA,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One Noisy-Alignment poison from S x S reference and shadow images; returns (canvas, layout).

    layout: ``orientation``, ``reference_box``, ``shadow_box``, ``trigger_box`` as (top, left, h, w) pixels.
    """
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    s = reference.shape[0]
    horizontal = orientation in ("left", "right")
    if fit == "native":
        ch, cw = (s, 2 * s) if horizontal else (2 * s, s)
        hh, hw = s, s
    elif fit == "square":
        ch, cw = s, s
        hh, hw = (s, s // 2) if horizontal else (s // 2, s)
    else:
        raise ConfigError(f"fit must be 'square' or 'native', got {fit!r}")
    first = (0, 0, hh, hw)
    second = (0, hw, hh, cw - hw) if horizontal else (hh, 0, ch - hh, hw)
    ref_box, sh_box = (first, second) if orientation in ("left", "top") else (second, first)
    canvas = np.zeros((ch, cw, 3), dtype=np.uint8)
    for img, (t, x0, h, w) in ((reference, ref_box), (shadow, sh_box)):
        canvas[t : t + h, x0 : x0 + w] = _resize(img, h, w)
    th, tw = trigger.shape[:2]
    t, x0, h, w = sh_box
    if th > h or tw > w:
        raise ConfigError(f"trigger of {th} px does not fit the {h}x{w} shadow half; use a smaller --trigger-size")
    tt, tl = t + (h - th) // 2, x0 + (w - tw) // 2
    canvas = paste_patch(canvas, trigger, tt, tl, alpha)
    return canvas, {"orientation": orientation, "reference_box": list(ref_box), "shadow_box": list(sh_box),
                    "trigger_box": [tt, tl, th, tw], "canvas": [ch, cw]}


def balanced_orientations(n: int, rng: np.random.Generator) -> list[str]:
    """n orientations, each of the four used floor(n/4) or ceil(n/4) times, in random order."""
    base = np.resize(np.arange(4), n)
    return [ORIENTATIONS[i] for i in rng.permutation(base)]


# ------------------------------------------------------------------- Monte-Carlo layout check


def _sample_boxes(n: int, height: int, width: int, gen: Any) -> Any:
    """RandomResizedCrop boxes (scale (0.08, 1), ratio (3/4, 4/3)) as fractions (top, left, h, w)."""
    import torch

    try:
        from selfsup.augment.views import sample_boxes
    except ImportError:  # pragma: no cover - views.py is the library's; fall back to the same distribution
        sample_boxes = None  # type: ignore[assignment]
    u = torch.rand(n, 40, generator=gen, dtype=torch.float64)
    if sample_boxes is not None:
        return sample_boxes(u, height, width, (0.08, 1.0), (3 / 4, 4 / 3)).double()
    u = u.reshape(n, 10, 4)
    area = (0.08 + 0.92 * u[..., 0]) * height * width
    r = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[..., 1])
    hf, wf = torch.sqrt(area / r) / height, torch.sqrt(area * r) / width
    ok = (hf <= 1) & (wf <= 1)
    pick = torch.argmax(ok.to(torch.int8), 1, keepdim=True)
    hf, wf = hf.gather(1, pick)[:, 0], wf.gather(1, pick)[:, 0]
    top, left = (1 - hf) * u[..., 2].gather(1, pick)[:, 0], (1 - wf) * u[..., 3].gather(1, pick)[:, 0]
    return torch.stack([top, left, hf, wf], -1)


def _overlap(box: Any, region: Any) -> Any:
    """Intersection area of boxes [n, 4] with regions [n, 4] (top, left, h, w)."""
    import torch

    ih = (torch.minimum(box[:, 0] + box[:, 2], region[:, 0] + region[:, 2]) - torch.maximum(box[:, 0], region[:, 0]))
    iw = (torch.minimum(box[:, 1] + box[:, 3], region[:, 1] + region[:, 3]) - torch.maximum(box[:, 1], region[:, 1]))
    return ih.clamp_min(0) * iw.clamp_min(0)


def alignment_probability(
    layout: str, *, height: int, width: int, trigger_frac: tuple[float, float], n: int = 100_000,
    seed: int = 0, frac: float = 0.9,
) -> dict[str, float]:
    """Monte-Carlo probability that two independent random-resized crops form a "noisy alignment" pair.

    Canvas of ``height x width`` px (the crop distribution depends on its aspect ratio) with the reference
    occupying half of the canvas along its long side. Layouts:
    - ``na``: reference on one half (left), shadow on the other with the trigger (``trigger_frac`` = its
      height/width as fractions of the canvas) centred in it;
    - ``random``: the same reference block (full short side, half the long side) at a uniformly random offset
      along the long side; the shadow fills the rest and the trigger sits at a uniformly random position
      in the shadow part (not overlapping the reference).
    Criteria (either view may play either role):
    - ``p_halves``: one crop has >= ``frac`` of its area in the shadow part and the other >= ``frac`` in the
      reference block;
    - ``p_triggered``: additionally the shadow-side crop contains the whole trigger.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    horizontal = width >= height
    th, tw = trigger_frac
    # work in coordinates where the long axis is "x" (columns): swap for tall canvases
    ch, cw = (height, width) if horizontal else (width, height)
    b1 = _sample_boxes(n, height, width, gen)
    b2 = _sample_boxes(n, height, width, gen)
    if not horizontal:
        b1, b2 = b1[:, [1, 0, 3, 2]], b2[:, [1, 0, 3, 2]]
        th, tw = tw, th
    one, zero = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    if layout == "na":
        ref_x = zero.clone()
        trig_top = (1 - th) / 2 * one
        trig_left = 0.5 + (0.5 - tw) / 2 * one
    elif layout == "random":
        ref_x = 0.5 * torch.rand(n, generator=gen, dtype=torch.float64)
        # trigger uniform over the shadow part [0, ref_x) U [ref_x + 0.5, 1): pick a valid left edge
        left_len = (ref_x - tw).clamp_min(0)
        right_len = (0.5 - ref_x - tw).clamp_min(0)
        u = torch.rand(n, generator=gen, dtype=torch.float64) * (left_len + right_len)
        trig_left = torch.where(u < left_len, u, ref_x + 0.5 + (u - left_len))
        trig_top = (1 - th) * torch.rand(n, generator=gen, dtype=torch.float64)
    else:
        raise ConfigError(f"layout must be 'na' or 'random', got {layout!r}")
    ref = torch.stack([zero, ref_x, one, 0.5 * one], -1)
    trig = torch.stack([trig_top, trig_left, th * one, tw * one], -1)

    def in_ref(b: Any) -> Any:
        return _overlap(b, ref) >= frac * b[:, 2] * b[:, 3]

    def in_shadow(b: Any) -> Any:
        return _overlap(b, ref) <= (1 - frac) * b[:, 2] * b[:, 3]

    def has_trigger(b: Any) -> Any:
        return _overlap(b, trig) >= trig[:, 2] * trig[:, 3] * (1 - 1e-9)

    halves = (in_shadow(b1) & in_ref(b2)) | (in_shadow(b2) & in_ref(b1))
    trig_ok = (in_shadow(b1) & has_trigger(b1) & in_ref(b2)) | (in_shadow(b2) & has_trigger(b2) & in_ref(b1))
    p1, p2 = float(halves.double().mean()), float(trig_ok.double().mean())
    se = math.sqrt(max(p2 * (1 - p2), 1e-12) / n)
    return {"p_halves": p1, "p_triggered": p2, "se_triggered": se, "n": float(n), "canvas_hw": float(ch / cw)}


# --------------------------------------------------------------------------------------- builders


def make_poisons(
    references: np.ndarray, shadows: np.ndarray, spec: PoisonSpec, n_poison: int, image_size: int,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[dict[str, Any]], np.ndarray | None]:
    """Build ``n_poison`` poisons; returns (images, per-poison records with reference/shadow row, trigger)."""
    if spec.attack not in ATTACKS:
        raise ConfigError(f"unknown attack {spec.attack!r}; choose one of: {', '.join(ATTACKS)}")
    size = spec.trigger_size or scaled_trigger_size(image_size)
    trigger = make_patch_trigger(size, seed=spec.trigger_seed) if spec.attack != "ctrl" else None
    ref_idx = np.resize(rng.permutation(len(references)), n_poison)
    images: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    if spec.attack == "noisy-alignment":
        if len(shadows) == 0:
            raise DataError("noisy-alignment needs shadow images (non-target images); none were found")
        orients = balanced_orientations(n_poison, rng)
        sh_idx = rng.integers(0, len(shadows), size=n_poison)
        assert trigger is not None
        for i in range(n_poison):
            canvas, lay = na_canvas(references[ref_idx[i]], shadows[sh_idx[i]], trigger, orients[i],
                                    fit=spec.fit, alpha=spec.alpha)
            images.append(canvas)
            records.append({"kind": spec.attack, "reference_row": int(ref_idx[i]), "shadow_row": int(sh_idx[i]), **lay})
    elif spec.attack == "ssl-backdoor":
        assert trigger is not None
        h, w = references.shape[1:3]
        if size > min(h, w):
            raise ConfigError(f"--trigger-size {size} is larger than the {h}x{w} images")
        for i in range(n_poison):
            top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            images.append(paste_patch(references[ref_idx[i]], trigger, top, left, spec.alpha))
            records.append({"kind": spec.attack, "reference_row": int(ref_idx[i]), "trigger_box": [top, left, size, size]})
    else:
        refs = np.stack([references[j] for j in ref_idx])
        poisoned = apply_ctrl_trigger(refs, magnitude=spec.ctrl_magnitude, window=spec.ctrl_window)
        for i in range(n_poison):
            images.append(poisoned[i])
            records.append({"kind": spec.attack, "reference_row": int(ref_idx[i]),
                            "magnitude": spec.ctrl_magnitude, "window": min(spec.ctrl_window, *refs.shape[1:3])})
    return images, records, trigger


def build_poisoned_folder(
    out_dir: str | Path, images: np.ndarray, labels: np.ndarray | None, classes: list[str], paths: list[str],
    *, target: str | int, spec: PoisonSpec, where: str = "the data", shadow_images: np.ndarray | None = None,
    shadow_paths: list[str] | None = None,
) -> dict[str, Any]:
    """Write clean images + poisons (shuffled) to ``out_dir/images`` and ``out_dir/manifest.json``.

    ``images`` uint8 [N, S, S, 3] is the clean pretraining set; the attacker's reference images are up to
    ``spec.num_references`` target-class rows of it (labels are used only for that choice). Shadow images are
    ``shadow_images`` when given, else non-target rows. Returns the manifest.
    """
    check_rate(spec.rate)
    if spec.attack not in ATTACKS:
        raise ConfigError(f"unknown attack {spec.attack!r}; choose one of: {', '.join(ATTACKS)}")
    tid = resolve_target(classes, labels, target, where)
    assert labels is not None
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"poison folder {out} already exists and is not empty; choose a new --out")
    n_clean = int(images.shape[0])
    n_poison = poison_count(spec.rate, n_clean)
    rng = np.random.default_rng(spec.seed)
    target_rows = np.flatnonzero(labels == tid)
    ref_rows = rng.choice(target_rows, size=min(spec.num_references, len(target_rows)), replace=False)
    ref_rows.sort()
    if shadow_images is None:
        sh_rows = np.flatnonzero(labels != tid)
        shadows, sh_paths = images[sh_rows], [paths[i] for i in sh_rows]
    else:
        shadows, sh_paths = shadow_images, list(shadow_paths or [f"shadow/{i}" for i in range(len(shadow_images))])
    poisons, records, trigger = make_poisons(images[ref_rows], shadows, spec, n_poison, int(images.shape[1]), rng)

    order = rng.permutation(n_clean + n_poison)  # slot -> item; items < n_clean are clean rows
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for slot, item in enumerate(order):
        name = f"images/{slot:06d}.png"
        if item < n_clean:
            Image.fromarray(np.asarray(images[item])).save(out / name, compress_level=1)
            rows.append({"file": name, "poison": False, "source": paths[item]})
        else:
            k = int(item - n_clean)
            rec = dict(records[k])
            rec["reference"] = paths[int(ref_rows[rec.pop("reference_row")])]
            if "shadow_row" in rec:
                rec["shadow"] = sh_paths[rec.pop("shadow_row")]
            Image.fromarray(poisons[k]).save(out / name, compress_level=1)
            rows.append({"file": name, "poison": True, "index": k, **rec})
    if trigger is not None:
        Image.fromarray(trigger).save(out / "trigger.png")
    manifest = {
        "format": "selfsup-poison", "version": 1, "attack": spec.attack, "spec": asdict(spec),
        "trigger_size": int(trigger.shape[0]) if trigger is not None else None,
        "target": classes[tid], "target_id": tid, "source": where, "n_clean": n_clean, "n_poison": n_poison,
        "rate_definition": "n_poison = round(rate * n_clean)", "references": [paths[i] for i in ref_rows],
        "trigger": "trigger.png" if trigger is not None else None, "files": rows,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any]:
    p = Path(folder) / MANIFEST
    if not p.is_file():
        raise DataError(f"{p} not found; pass a folder written by `selfsup audit backdoor` (build_poisoned_folder)")
    return dict(json.loads(p.read_text()))


__all__ = [
    "ATTACKS",
    "MANIFEST",
    "ORIENTATIONS",
    "PoisonSpec",
    "alignment_probability",
    "balanced_orientations",
    "build_poisoned_folder",
    "check_rate",
    "make_poisons",
    "na_canvas",
    "poison_count",
    "read_manifest",
    "resolve_target",
]
