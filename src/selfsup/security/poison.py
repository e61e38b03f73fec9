"""Poisoned pretraining sets: Noisy Alignment, SSL-Backdoor and CTRL, written as a folder + ``manifest.json``.

**Poison count and distinct poisons.** ``n_poison = round(rate * N_clean)``, with ``N_clean`` the size of the
clean training set, as CTRL's ``poison_num = int(len(trainset) * poison_ratio)``. SSL-Backdoor's configs give
instead a share of the TARGET CLASS (``poison_injection_rate``; 1.0 in the shipped HTBA configs, i.e. every
target-class image, about 1% of ImageNet-100); for a balanced 10-class set, rate r of the training set is
10 r of the target class. Every poison is built from its OWN image(s): no reference or shadow image is used
twice (``ConfigError`` when the data holds too few), as in every official code.

**Added or replaced.** As the official codes do it:
- ``noisy-alignment`` (Chen, Gui et al., ICCV 2025, arXiv 2508.14015; jsrdcht/Noisy-Alignment ``utils.py``):
  the poisons are ADDED to the clean set (the threat model: the attacker contributes images). Each poison
  uses a distinct target-class *reference* image and a distinct non-target *shadow* image.
- ``ssl-backdoor`` (Saha et al., CVPR 2022, arXiv 2105.10123; UMBCvision/SSL-Backdoor ``generate_poison.py``)
  and ``ctrl`` (Li et al., ICCV 2023, arXiv 2210.07346; meet-cjli/CTRL ``loaders/diffaugment.py``): the
  poisoned target-class images REPLACE their clean originals (SSL-Backdoor writes the poisoned file in the
  original's place in the train file list; CTRL poisons ``x_train[poison_index]`` in place). The training
  set keeps its size.

**Noisy Alignment canvas** (:func:`na_canvas`, ``synthesize_poison`` of the official code): the trigger is
pasted on the shadow image first (:data:`~selfsup.security.triggers.NA_RANGE`, alpha 0.2), then the shadow
and the reference are concatenated side by side: if one image has more than twice the other's area, the
smaller one is scaled up by ``sqrt(area ratio)``; then the shared side is resized to the smaller of the two
(the other side is kept, so that side's aspect changes, as in the official code; LANCZOS); one of four
orientations. For two ``r_l x r_l`` images the canvas is ``r_l x 2 r_l`` (or ``2 r_l x r_l``). The canvas is
written at its own aspect; the data layer stores every image at its own aspect ratio and draws the crop
boxes on the whole canvas, which is what makes aligned view pairs possible (issue "Real photos keep their
shape"). ``orientation`` names where the REFERENCE sits (``left/right/top/bottom``). Deviation: the official
code draws each orientation independently (``random.randint(0, 3)``); selfsup draws a balanced random
permutation (same marginal distribution, all four present as soon as there are 4 poisons).

**SSL-Backdoor** poisons: an opaque patch (``train_alpha`` 0) with its top-left corner at
:func:`~selfsup.security.triggers.official_location` in [0.25, 0.75] of each side.
**CTRL** poisons: :func:`~selfsup.security.triggers.apply_ctrl_trigger` at magnitude 100 (the same as at test
time).

**Test-time triggers** (:func:`triggered_test_images`): SSL-Backdoor pastes the patch opaque within
[0.10, 0.90] (``val_location_min/max``); Noisy Alignment uses ``add_watermark``'s defaults (within
[0.45, 0.55], alpha 0.2); CTRL adds the trigger at the training magnitude to every test image.

Folder layout written by :func:`build_poisoned_folder`::

    OUT/images/000000.png ...   clean images and poisons, shuffled together (names reveal nothing)
    OUT/trigger.png             the patch (patch attacks)
    OUT/manifest.json           attack, parameters, seed, counts and one row per file:
                                {"file", "poison", "source"} for clean rows; poisons add "kind", "reference",
                                ("shadow"), "canvas" [h, w] and pixel boxes [top, left, h, w] in that canvas:
                                "trigger_box" (every attack; CTRL: the whole image, its trigger is global),
                                "reference_box" and "shadow_box" (noisy-alignment), "orientation"
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from selfsup.checkpoint import atomic_write_text
from selfsup.errors import ConfigError, DataError
from selfsup.security.triggers import (
    CTRL_MAGNITUDE,
    NA_ALPHA,
    NA_RANGE,
    SSLB_ALPHA,
    SSLB_TEST_RANGE,
    SSLB_TRAIN_RANGE,
    apply_ctrl_trigger,
    apply_patch_trigger,
    make_patch_trigger,
    official_location,
    paste_patch,
    scaled_trigger_size,
)

ATTACKS = ("noisy-alignment", "ssl-backdoor", "ctrl")
ORIENTATIONS = ("left", "right", "top", "bottom")  # where the REFERENCE half sits
MANIFEST = "manifest.json"
REPLACES = {"noisy-alignment": False, "ssl-backdoor": True, "ctrl": True}  # poisons replace their originals


@dataclass
class PoisonSpec:
    attack: str = "noisy-alignment"
    rate: float = 0.01  # poisons = round(rate * N_clean), each from distinct images
    trigger_size: int | None = None  # px; None = round(S * 50 / 224) (the papers' ratio)
    alpha: float | None = None  # weight of the image under the patch; None = the attack's official value
    ctrl_magnitude: float = CTRL_MAGNITUDE  # poisons and test images alike (official code)
    ctrl_window: int = 32
    seed: int = 0
    trigger_seed: int = 0

    def patch_alpha(self) -> float:
        if self.alpha is not None:
            return float(self.alpha)
        return NA_ALPHA if self.attack == "noisy-alignment" else SSLB_ALPHA


def check_rate(rate: float) -> None:
    if not (isinstance(rate, (int, float)) and math.isfinite(rate) and 0.0 < float(rate) < 1.0):
        raise ConfigError(f"--poison-rate must be in (0, 1), got {rate!r} (e.g. 0.01 for 1%)")


def poison_count(rate: float, n_clean: int) -> int:
    """Exact number of poisons for ``n_clean`` clean images: ``round(rate * n_clean)`` (must be >= 1)."""
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
    return np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.LANCZOS))


def _scale_box(box: Sequence[float], sy: float, sx: float) -> list[float]:
    t, x0, h, w = box
    return [t * sy, x0 * sx, h * sy, w * sx]


def na_canvas(
    reference: np.ndarray, shadow: np.ndarray, trigger: np.ndarray, orientation: str, rng: np.random.Generator, *,
    alpha: float = NA_ALPHA, where: tuple[float, float] = NA_RANGE,
) -> tuple[np.ndarray, dict[str, Any]]:
    """One Noisy-Alignment poison (official ``synthesize_poison``); returns (canvas, layout).

    layout: ``orientation``, ``canvas`` [h, w] and ``reference_box``, ``shadow_box``, ``trigger_box`` as
    [top, left, h, w] pixels of the canvas (floats: a resized half scales its trigger box).
    """
    if orientation not in ORIENTATIONS:
        raise ConfigError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    th, tw = trigger.shape[:2]
    sh0, sw0 = shadow.shape[:2]
    top, left = official_location(sh0, sw0, th, tw, where[0], where[1], rng)
    shadow = paste_patch(shadow, trigger, top, left, alpha)
    trig: list[float] = [float(top), float(left), float(th), float(tw)]
    # area balance: the smaller image is scaled up when the other has more than twice its area
    a_ref, a_sh = reference.shape[0] * reference.shape[1], shadow.shape[0] * shadow.shape[1]
    if a_sh > 2 * a_ref:
        f = math.sqrt(a_sh / a_ref)
        reference = _resize(reference, int(reference.shape[0] * f), int(reference.shape[1] * f))
    elif a_ref > 2 * a_sh:
        f = math.sqrt(a_ref / a_sh)
        h1, w1 = int(shadow.shape[0] * f), int(shadow.shape[1] * f)
        trig = _scale_box(trig, h1 / shadow.shape[0], w1 / shadow.shape[1])
        shadow = _resize(shadow, h1, w1)
    horizontal = orientation in ("left", "right")
    if horizontal:  # shared height = the smaller one; widths kept
        hh = min(reference.shape[0], shadow.shape[0])
        trig = _scale_box(trig, hh / shadow.shape[0], 1.0)
        reference, shadow = _resize(reference, hh, reference.shape[1]), _resize(shadow, hh, shadow.shape[1])
        ch, cw = hh, reference.shape[1] + shadow.shape[1]
        first_w = reference.shape[1] if orientation == "left" else shadow.shape[1]
        ref_box = [0, 0 if orientation == "left" else first_w, hh, reference.shape[1]]
        sh_box = [0, first_w if orientation == "left" else 0, hh, shadow.shape[1]]
    else:  # shared width = the smaller one; heights kept
        ww = min(reference.shape[1], shadow.shape[1])
        trig = _scale_box(trig, 1.0, ww / shadow.shape[1])
        reference, shadow = _resize(reference, reference.shape[0], ww), _resize(shadow, shadow.shape[0], ww)
        ch, cw = reference.shape[0] + shadow.shape[0], ww
        first_h = reference.shape[0] if orientation == "top" else shadow.shape[0]
        ref_box = [0 if orientation == "top" else first_h, 0, reference.shape[0], ww]
        sh_box = [first_h if orientation == "top" else 0, 0, shadow.shape[0], ww]
    canvas = np.zeros((ch, cw, 3), dtype=np.uint8)
    for img, (t, x0, h, w) in ((reference, ref_box), (shadow, sh_box)):
        canvas[t : t + h, x0 : x0 + w] = img
    trig = [trig[0] + sh_box[0], trig[1] + sh_box[1], trig[2], trig[3]]
    return canvas, {"orientation": orientation, "canvas": [ch, cw], "reference_box": [int(v) for v in ref_box],
                    "shadow_box": [int(v) for v in sh_box], "trigger_box": [float(v) for v in trig]}


def balanced_orientations(n: int, rng: np.random.Generator) -> list[str]:
    """n orientations, each of the four used floor(n/4) or ceil(n/4) times, in random order."""
    base = np.resize(np.arange(4), n)
    return [ORIENTATIONS[i] for i in rng.permutation(base)]


# --------------------------------------------------------------------------------------- builders


def _distinct(rows: np.ndarray, n: int, what: str, rng: np.random.Generator) -> np.ndarray:
    if len(rows) < n:
        raise ConfigError(f"{n} poisons need {n} distinct {what}, but the data has only {len(rows)}; "
                          "lower --poison-rate")
    return np.sort(rng.choice(rows, size=n, replace=False))


def make_poisons(
    images: Any, ref_rows: np.ndarray, shadow_images: Any, sh_rows: np.ndarray | None, spec: PoisonSpec,
    image_size: int, rng: np.random.Generator,
) -> tuple[list[np.ndarray], list[dict[str, Any]], np.ndarray | None]:
    """One poison per ``ref_rows`` entry (and ``sh_rows`` entry for NA); returns (images, records, trigger).

    ``images`` / ``shadow_images``: anything indexable by row giving uint8 [H, W, 3] (sizes may differ).
    """
    if spec.attack not in ATTACKS:
        raise ConfigError(f"unknown attack {spec.attack!r}; choose one of: {', '.join(ATTACKS)}")
    size = spec.trigger_size or scaled_trigger_size(image_size)
    trigger = make_patch_trigger(size, seed=spec.trigger_seed) if spec.attack != "ctrl" else None
    alpha = spec.patch_alpha()
    n = len(ref_rows)
    out: list[np.ndarray] = []
    records: list[dict[str, Any]] = []
    if spec.attack == "noisy-alignment":
        assert trigger is not None and sh_rows is not None
        orients = balanced_orientations(n, rng)
        for i in range(n):
            ref, sh = np.asarray(images[int(ref_rows[i])]), np.asarray(shadow_images[int(sh_rows[i])])
            canvas, lay = na_canvas(ref, sh, trigger, orients[i], rng, alpha=alpha)
            out.append(canvas)
            records.append({"kind": spec.attack, "reference_row": int(ref_rows[i]), "shadow_row": int(sh_rows[i]),
                            **lay})
    elif spec.attack == "ssl-backdoor":
        assert trigger is not None
        for i in range(n):
            ref = np.asarray(images[int(ref_rows[i])])
            h, w = ref.shape[:2]
            top, left = official_location(h, w, size, size, *SSLB_TRAIN_RANGE, rng)
            out.append(paste_patch(ref, trigger, top, left, alpha))
            records.append({"kind": spec.attack, "reference_row": int(ref_rows[i]), "canvas": [h, w],
                            "trigger_box": [float(top), float(left), float(size), float(size)]})
    else:
        for i in range(n):
            ref = np.asarray(images[int(ref_rows[i])])
            h, w = ref.shape[:2]
            out.append(apply_ctrl_trigger(ref[None], magnitude=spec.ctrl_magnitude, window=spec.ctrl_window)[0])
            records.append({"kind": spec.attack, "reference_row": int(ref_rows[i]), "canvas": [h, w],
                            "trigger_box": [0.0, 0.0, float(h), float(w)], "magnitude": spec.ctrl_magnitude,
                            "window": min(spec.ctrl_window, h, w)})
    return out, records, trigger


def _image_size(images: Any) -> int:
    """The shorter side of the first image (the trigger's reference size)."""
    first = np.asarray(images[0])
    return int(min(first.shape[0], first.shape[1]))


def build_poisoned_folder(
    out_dir: str | Path, images: Any, labels: np.ndarray | None, classes: list[str], paths: list[str],
    *, target: str | int, spec: PoisonSpec, where: str = "the data", shadow_images: Any | None = None,
    shadow_paths: list[str] | None = None,
) -> dict[str, Any]:
    """Write the poisoned training set to ``out_dir/images`` (shuffled) and ``out_dir/manifest.json``.

    ``images``: the clean pretraining set, indexable by row (uint8 [H, W, 3] each; [N, S, S, 3] arrays work);
    labels pick the target-class references (and the non-target shadows of NA, unless ``shadow_images`` is
    given). Returns the manifest.
    """
    check_rate(spec.rate)
    if spec.attack not in ATTACKS:
        raise ConfigError(f"unknown attack {spec.attack!r}; choose one of: {', '.join(ATTACKS)}")
    tid = resolve_target(classes, labels, target, where)
    assert labels is not None
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"poison folder {out} already exists and is not empty; choose a new --out")
    n_clean = len(images)
    n_poison = poison_count(spec.rate, n_clean)
    rng = np.random.default_rng(spec.seed)
    ref_rows = _distinct(np.flatnonzero(labels == tid), n_poison, "target-class images", rng)
    sh_rows: np.ndarray | None = None
    shadows, sh_paths = images, paths
    if spec.attack == "noisy-alignment":
        if shadow_images is None:
            sh_rows = _distinct(np.flatnonzero(labels != tid), n_poison, "non-target (shadow) images", rng)
        else:
            shadows = shadow_images
            sh_paths = list(shadow_paths or [f"shadow/{i}" for i in range(len(shadow_images))])
            sh_rows = _distinct(np.arange(len(shadow_images)), n_poison, "shadow images", rng)
    poisons, records, trigger = make_poisons(images, ref_rows, shadows, sh_rows, spec, _image_size(images), rng)

    replaced = set(int(r) for r in ref_rows) if REPLACES[spec.attack] else set()
    clean_rows = [i for i in range(n_clean) if i not in replaced]
    items = [("clean", i) for i in clean_rows] + [("poison", k) for k in range(n_poison)]
    order = rng.permutation(len(items))
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for slot, j in enumerate(order):
        kind, item = items[int(j)]
        name = f"images/{slot:06d}.png"
        if kind == "clean":
            Image.fromarray(np.asarray(images[item])).save(out / name, compress_level=1)
            rows.append({"file": name, "poison": False, "source": paths[item]})
        else:
            rec = dict(records[item])
            rec["reference"] = paths[rec.pop("reference_row")]
            if "shadow_row" in rec:
                rec["shadow"] = sh_paths[rec.pop("shadow_row")]
            Image.fromarray(poisons[item]).save(out / name, compress_level=1)
            rows.append({"file": name, "poison": True, "index": item, **rec})
    if trigger is not None:
        Image.fromarray(trigger).save(out / "trigger.png")
    manifest = {
        "format": "selfsup-poison", "version": 2, "attack": spec.attack, "spec": asdict(spec),
        "alpha": spec.patch_alpha() if trigger is not None else None,
        "trigger_size": int(trigger.shape[0]) if trigger is not None else None,
        "target": classes[tid], "target_id": tid, "source": where, "n_clean": n_clean, "n_poison": n_poison,
        "n_images": len(rows), "replaces_originals": REPLACES[spec.attack],
        "rate_definition": "n_poison = round(rate * n_clean); every poison from distinct images",
        "trigger": "trigger.png" if trigger is not None else None, "files": rows,
    }
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any]:
    p = Path(folder) / MANIFEST
    if not p.is_file():
        raise DataError(f"{p} not found; pass a folder written by `selfsup audit backdoor` (build_poisoned_folder)")
    return dict(json.loads(p.read_text()))


def triggered_test_images(
    attack: str, images: np.ndarray, trigger: np.ndarray | None, rng: np.random.Generator, *,
    alpha: float | None = None, ctrl_magnitude: float = CTRL_MAGNITUDE, ctrl_window: int = 32,
) -> np.ndarray:
    """Each paper's test-time trigger on uint8 [N, H, W, 3] test images (see the module docstring)."""
    if attack == "ctrl":
        return apply_ctrl_trigger(images, magnitude=ctrl_magnitude, window=ctrl_window)
    if trigger is None:
        raise ConfigError(f"{attack} needs its trigger patch (trigger.png of the poisoned folder)")
    if attack == "noisy-alignment":
        out, _ = apply_patch_trigger(images, trigger, rng, where=NA_RANGE, alpha=NA_ALPHA if alpha is None else alpha)
    elif attack == "ssl-backdoor":
        out, _ = apply_patch_trigger(images, trigger, rng, where=SSLB_TEST_RANGE,
                                     alpha=SSLB_ALPHA if alpha is None else alpha)
    else:
        raise ConfigError(f"unknown attack {attack!r}; choose one of: {', '.join(ATTACKS)}")
    return out


__all__ = [
    "ATTACKS",
    "MANIFEST",
    "ORIENTATIONS",
    "REPLACES",
    "PoisonSpec",
    "balanced_orientations",
    "build_poisoned_folder",
    "check_rate",
    "make_poisons",
    "na_canvas",
    "poison_count",
    "read_manifest",
    "resolve_target",
    "triggered_test_images",
]
