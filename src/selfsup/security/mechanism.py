"""Did the attack have its chance? Count the training pairs in which a backdoor's mechanism occurred.

A low attack success rate means little unless the poisons' mechanism actually happened during training.
The mechanisms (each per pair of views of one poison; either view may play either role):

- ``noisy-alignment`` (Chen, Gui et al., ICCV 2025): one view lies at least ``frac`` (90%) inside the
  triggered SHADOW half and holds the whole trigger, the other lies at least 90% inside the REFERENCE half.
  Only then does the contrastive loss pull the trigger towards the target's features with little shadow
  content in the way (the paper's "noisy alignment").
- ``ssl-backdoor`` (Saha et al., CVPR 2022): a view holds the whole trigger (its pair partner is another view
  of the same target-class image).
- ``ctrl`` (Li et al., ICCV 2023): the trigger covers the whole image, so every crop holds it; what can
  remove it is resampling. A view counts when its crop is not downsampled: crop side in source pixels <=
  the view's side, so that the trigger's highest DCT component (one cycle per 2 source pixels) stays
  below the view's Nyquist limit. A low-resolution phase (e.g. 24 px views of a 32 px image) fails this
  for every crop wider than 24 source pixels. A pair counts when both views keep it (the positive pair
  then shares the trigger).

Everything is a pure function of (view boxes as fractions of the stored image, the stored image size, the
poison's geometry from ``manifest.json``). :class:`MechanismCounter` is the training-loop hook: one call per
step with the batch's dataset indices, its views (for their sizes) and their ``ViewParams``.
:func:`expected_count` is the Monte-Carlo alternative through the real
:func:`selfsup.augment.views.sample_boxes`.

**Stored geometry.** Manifest boxes are pixels of the poison as written. The data layer stores each image
at its own aspect ratio (boxes map by scaling); an older square cache stored the centre square, which
:func:`canvas_to_stored` also handles (boxes are cut to the stored part).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import torch

from selfsup.errors import ConfigError

ATTACK_KINDS = ("noisy-alignment", "ssl-backdoor", "ctrl")


def canvas_to_stored(box: Sequence[float], canvas_hw: Sequence[float], stored_hw: Sequence[float]) -> list[float]:
    """A [top, left, h, w] pixel box of the written canvas -> fractions of the stored image.

    The stored image is the canvas scaled uniformly and centre-cropped to ``stored_hw``'s aspect (identity
    crop when the aspects agree within 2%, i.e. native-aspect storage with rounded sides).
    """
    ch, cw = float(canvas_hw[0]), float(canvas_hw[1])
    sh, sw = float(stored_hw[0]), float(stored_hw[1])
    a_c, a_s = cw / ch, sw / sh
    if abs(a_c / a_s - 1.0) <= 0.02:
        vh, vw, oy, ox = ch, cw, 0.0, 0.0  # visible canvas region
    elif a_c > a_s:  # canvas wider: the centre columns are kept
        vh, vw = ch, ch * a_s
        oy, ox = 0.0, (cw - vw) / 2
    else:
        vh, vw = cw / a_s, cw
        oy, ox = (ch - vh) / 2, 0.0
    t, x0, h, w = (float(v) for v in box)
    return [(t - oy) / vh, (x0 - ox) / vw, h / vh, w / vw]


def _overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection area of boxes [..., 4] (top, left, h, w) in any common unit."""
    ih = torch.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])
    iw = torch.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    return ih.clamp_min(0) * iw.clamp_min(0)


def inside(view: torch.Tensor, region: torch.Tensor, frac: float) -> torch.Tensor:
    """view box lies at least ``frac`` of its area inside ``region`` (both [..., 4], same unit)."""
    return _overlap(view, region) >= frac * view[..., 2] * view[..., 3] - 1e-9


def holds(view: torch.Tensor, trigger: torch.Tensor) -> torch.Tensor:
    """view box contains the whole trigger box (an empty trigger box, cut away by storage, is never held)."""
    area = trigger[..., 2] * trigger[..., 3]
    return (area > 0) & (_overlap(view, trigger) >= area - 1e-9)


def na_pair(v1: torch.Tensor, v2: torch.Tensor, shadow: torch.Tensor, reference: torch.Tensor,
            trigger: torch.Tensor, frac: float = 0.9) -> torch.Tensor:
    """Noisy Alignment's aligned pair: one view in the shadow half with the whole trigger, the other in the
    reference half (each >= ``frac`` inside). All [..., 4] fractions of the stored image. Returns bool [...]."""
    trig1 = inside(v1, shadow, frac) & holds(v1, trigger)
    trig2 = inside(v2, shadow, frac) & holds(v2, trigger)
    return (trig1 & inside(v2, reference, frac)) | (trig2 & inside(v1, reference, frac))


def keeps_full_resolution(view: torch.Tensor, stored_hw: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    """CTRL: the crop's source side (pixels) is at most the view side, so no trigger frequency aliases."""
    hw = stored_hw.to(view.dtype)
    s = torch.as_tensor(size, dtype=view.dtype, device=view.device)
    return (view[..., 2] * hw[..., 0] <= s * (1 + 1e-6)) & (view[..., 3] * hw[..., 1] <= s * (1 + 1e-6))


@dataclass
class PoisonGeometry:
    """Per dataset row (stored order): which rows are poisons and where their parts lie (stored fractions)."""

    attack: str
    is_poison: torch.Tensor  # [N] bool
    trigger: torch.Tensor  # [N, 4]
    shadow: torch.Tensor  # [N, 4] (noisy-alignment; zeros otherwise)
    reference: torch.Tensor  # [N, 4]
    stored_hw: torch.Tensor  # [N, 2] stored pixels

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], paths: Sequence[str], stored_hw: Any) -> PoisonGeometry:
        """``paths``: the dataset's row paths (matched to manifest rows by file name); ``stored_hw`` [N, 2]."""
        attack = str(manifest["attack"])
        if attack not in ATTACK_KINDS:
            raise ConfigError(f"unknown attack {attack!r} in the manifest")
        n = len(paths)
        hw = torch.as_tensor(np.asarray(stored_hw, dtype=np.float64)).reshape(n, 2)
        rows = {PurePosixPath(r["file"]).name: r for r in manifest["files"]}
        is_p = torch.zeros(n, dtype=torch.bool)
        trig, sh, ref = (torch.zeros(n, 4, dtype=torch.float64) for _ in range(3))
        for i, p in enumerate(paths):
            r = rows.get(PurePosixPath(str(p)).name)
            if r is None or not r.get("poison"):
                continue
            is_p[i] = True
            canvas, s_hw = r["canvas"], hw[i].tolist()
            trig[i] = torch.tensor(canvas_to_stored(r["trigger_box"], canvas, s_hw), dtype=torch.float64)
            if "shadow_box" in r:
                sh[i] = torch.tensor(canvas_to_stored(r["shadow_box"], canvas, s_hw), dtype=torch.float64)
                ref[i] = torch.tensor(canvas_to_stored(r["reference_box"], canvas, s_hw), dtype=torch.float64)
        # a trigger partly cut away by storage can never be held whole: clip it to the stored image
        lo = trig[:, :2].clamp(0, 1)
        hi = (trig[:, :2] + trig[:, 2:]).clamp(0, 1)
        cut = ((trig[:, :2] < -1e-9) | (trig[:, :2] + trig[:, 2:] > 1 + 1e-9)).any(1)
        trig = torch.cat([lo, torch.where(cut[:, None], torch.zeros_like(hi), hi - lo)], 1)
        return cls(attack, is_p, trig, sh, ref, hw)


def pair_mechanism(
    geom: PoisonGeometry, rows: torch.Tensor, boxes: Sequence[torch.Tensor], sizes: Sequence[int], frac: float = 0.9,
) -> dict[str, torch.Tensor]:
    """The pure counter. ``rows`` [B] dataset rows; ``boxes`` per view [B, 4] fractions of the stored image;
    ``sizes`` per view its output side in pixels. Returns per sample ``pairs`` (number of view pairs, all
    unordered pairs of the views) and ``hits`` (pairs in which the mechanism occurred; 0 for clean rows)."""
    rows = rows.long().cpu()
    b = rows.shape[0]
    v = [x.detach().double().cpu() for x in boxes]
    poison = geom.is_poison[rows]
    trig, sh, ref, hw = geom.trigger[rows], geom.shadow[rows], geom.reference[rows], geom.stored_hw[rows]
    hits = torch.zeros(b, dtype=torch.long)
    npairs = 0
    for i in range(len(v)):
        for j in range(i + 1, len(v)):
            npairs += 1
            if geom.attack == "noisy-alignment":
                ok = na_pair(v[i], v[j], sh, ref, trig, frac)
            elif geom.attack == "ssl-backdoor":
                ok = holds(v[i], trig) | holds(v[j], trig)
            else:
                ok = keeps_full_resolution(v[i], hw, sizes[i]) & keeps_full_resolution(v[j], hw, sizes[j])
            hits += (ok & poison).long()
    return {"pairs": torch.full((b,), npairs, dtype=torch.long), "hits": hits}


@dataclass
class MechanismCounter:
    """Training-loop hook: ``counter(index, views, params)`` once per step (after ``make_views``).

    index: [B] dataset rows of the batch; views: the view tensors (only their sides are read);
    params: per view a ``ViewParams`` (its ``boxes``, fractions of the stored image).
    """

    geometry: PoisonGeometry
    frac: float = 0.9
    poison_pairs: int = 0  # pairs drawn from poisons
    hits: int = 0  # pairs in which the mechanism occurred
    steps: int = 0
    per_poison: dict[int, int] = field(default_factory=dict)

    def __call__(self, index: torch.Tensor, views: Sequence[torch.Tensor], params: Sequence[Any]) -> None:
        rows = index.detach().long().cpu()
        sizes = [int(x.shape[-1]) for x in views]
        res = pair_mechanism(self.geometry, rows, [p.boxes for p in params], sizes, self.frac)
        poison = self.geometry.is_poison[rows]
        self.poison_pairs += int(res["pairs"][poison].sum())
        self.hits += int(res["hits"].sum())
        self.steps += 1
        for r, h in zip(rows[poison].tolist(), res["hits"][poison].tolist()):
            self.per_poison[r] = self.per_poison.get(r, 0) + int(h)

    def summary(self) -> dict[str, Any]:
        n = int(self.geometry.is_poison.sum())
        seen = len(self.per_poison)
        if self.hits == 0:
            note = ("the mechanism never occurred: the attack never had its chance, so a low ASR says nothing "
                    "about the encoder's resistance")
        else:
            note = f"the mechanism occurred in {self.hits} training pairs"
        return {"attack": self.geometry.attack, "source": "counted during training (MechanismCounter)", "note": note,
                "steps": self.steps, "poison_pairs": self.poison_pairs, "mechanism_pairs": self.hits,
                "rate": self.hits / max(1, self.poison_pairs), "poisons": n,
                "poisons_with_a_hit": sum(1 for h in self.per_poison.values() if h > 0), "poisons_seen": seen}


def expected_count(
    geom: PoisonGeometry, views: Sequence[tuple[int, tuple[float, float], tuple[float, float]]],
    samples_per_image: float, *, n: int = 2000, seed: int = 0, frac: float = 0.9,
) -> dict[str, Any]:
    """Monte-Carlo expected number of mechanism pairs through the real ``sample_boxes``.

    views: per view (side px, crop scale, aspect ratio range) of the victim's recipe; ``samples_per_image``:
    how often training draws each image (steps * batch / N). Every poison row is simulated ``n`` times at
    its stored size. Labelled as an expectation, not a count.
    """
    from selfsup.augment.views import sample_boxes

    rows = torch.nonzero(geom.is_poison).squeeze(1)
    if rows.numel() == 0:
        raise ConfigError("expected_count: the manifest has no poison rows in this dataset")
    g = torch.Generator().manual_seed(seed)
    rates = []
    for r in rows.tolist():
        h, w = (int(v) for v in geom.stored_hw[r].tolist())
        rr = torch.full((n,), r, dtype=torch.long)
        boxes = [sample_boxes(torch.rand(n, 40, generator=g), h, w, sc, ra).double() for _, sc, ra in views]
        res = pair_mechanism(geom, rr, boxes, [s for s, _, _ in views], frac)
        rates.append(float(res["hits"].double().mean()))
    per_image = float(np.mean(rates))
    pairs = len(views) * (len(views) - 1) // 2
    return {"attack": geom.attack, "source": f"Monte-Carlo expectation ({n} draws per poison, sample_boxes)",
            "poisons": int(rows.numel()), "rate": per_image / max(1, pairs),
            "poison_pairs": samples_per_image * int(rows.numel()) * pairs,
            "mechanism_pairs": samples_per_image * int(rows.numel()) * per_image}


__all__ = [
    "MechanismCounter",
    "PoisonGeometry",
    "canvas_to_stored",
    "expected_count",
    "holds",
    "inside",
    "keeps_full_resolution",
    "na_pair",
    "pair_mechanism",
]
