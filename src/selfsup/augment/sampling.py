"""Random crop boxes: torchvision's ``RandomResizedCrop.get_params`` distribution, vectorised over a batch
(:func:`sample_boxes`), drawn in each image's own height and width, and mapped into the padded frame of a
native-aspect batch (:func:`padded_boxes`).

Difference from torchvision's ``RandomResizedCrop`` (deliberate): crop boxes are continuous (fractions of
the source sides), not rounded to whole pixels. :func:`selfsup.augment.ops.resized_crop` resamples them.
"""

from __future__ import annotations

import math

import torch

N_TRIES = 10  # RandomResizedCrop: candidate boxes per sample before the central-crop fallback


def uniform(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Uniforms ``u`` in [0, 1) mapped onto [lo, hi)."""
    return lo + (hi - lo) * u


def sample_boxes(
    u: torch.Tensor,
    height: int | torch.Tensor,
    width: int | torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> torch.Tensor:
    """RandomResizedCrop boxes from uniforms ``u`` [B, 4 * N_TRIES] (vectorised torchvision ``get_params``).

    ``height`` / ``width``: the source size, one for the batch (ints) or per sample ([B] tensors:
    native-aspect images, each box drawn in its own image's height and width).
    Per sample: ``N_TRIES`` = 10 candidates (area fraction ~ U(scale), aspect ~ logU(ratio)); the first that
    fits is used, at a uniform position; if none fits, torchvision's central-crop fallback. Continuous (no
    pixel rounding).
    Returns [B, 4] (top, left, height, width) as fractions of the sample's source sides.
    """
    b = u.shape[0]
    u = u.reshape(b, N_TRIES, 4).double()
    # [B, 1] per sample or [1, 1] for the batch; float64 (a Python float's arithmetic, so the batch case is
    # bit-identical to scalar maths)
    hh = torch.as_tensor(height, dtype=torch.float64).reshape(-1, 1)
    ww = torch.as_tensor(width, dtype=torch.float64).reshape(-1, 1)
    area = uniform(u[..., 0], *scale) * (hh * ww)
    log_r = uniform(u[..., 1], math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(log_r)
    hf = torch.sqrt(area / r) / hh
    wf = torch.sqrt(area * r) / ww
    ok = (hf <= 1.0) & (wf <= 1.0)
    first = torch.argmax(ok.to(torch.int8), dim=1)  # index of the first valid candidate (0 if none)
    pick = first.unsqueeze(1)
    hf, wf = hf.gather(1, pick).squeeze(1), wf.gather(1, pick).squeeze(1)
    top = (1.0 - hf) * u[..., 2].gather(1, pick).squeeze(1)
    left = (1.0 - wf) * u[..., 3].gather(1, pick).squeeze(1)
    # central-crop fallback (torchvision): whole image, trimmed to the allowed aspect-ratio range
    hv, wv = hh.squeeze(1), ww.squeeze(1)
    in_ratio = wv / hv
    one = torch.ones_like(in_ratio)
    fh = torch.where(in_ratio < ratio[0], (wv / ratio[0]) / hv, one)
    fw = torch.where(in_ratio > ratio[1], (hv * ratio[1]) / wv, one)
    fallback = ~ok.any(dim=1)
    hf = torch.where(fallback, fh, hf)
    wf = torch.where(fallback, fw, wf)
    top = torch.where(fallback, (1.0 - hf) / 2, top)
    left = torch.where(fallback, (1.0 - wf) / 2, left)
    return torch.stack([top, left, hf, wf], -1).float()


def padded_boxes(boxes: torch.Tensor, sizes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes as fractions of each image's own ``sizes`` [B, 2] -> fractions of the padded ``height x width``
    frame the image sits in (top-left aligned). With replicate padding, sampling the padded frame there is
    sampling the image with its own border clamped (see :func:`selfsup.data.gather`)."""
    fy = sizes[:, 0].to(torch.float64) / height
    fx = sizes[:, 1].to(torch.float64) / width
    f = torch.stack([fy, fx, fy, fx], -1)
    return (boxes.double() * f).float()


def frame_chunks(sizes: torch.Tensor, waste: float = 2.0) -> list[torch.Tensor] | None:
    """Row groups of a padded native-aspect batch (``sizes`` [B, 2], CPU int64) such that each group padded to
    its OWN tallest and widest row holds at most ``waste`` times its rows' pixels; None when the whole batch's
    frame already does (the common case: one pass over the batch as it is).

    Why: a batch mixing a 10:1 panorama and a 1:10 portrait is padded to 10S x 10S, about 10x the pixels of
    its images, and the torch view path converts that frame to float and repeats it per view. Rows are
    sorted by aspect ratio (width / height) and cut greedily, so every group is a run of similar shapes; a
    row alone always fits. Each group is sliced from the top-left of the batch's frame, which with
    replicate padding is exactly that group's own padded batch (:func:`selfsup.data.images.pad_rows`).
    """
    hw = sizes.to(torch.float64)
    area = hw[:, 0] * hw[:, 1]
    if float(hw[:, 0].max() * hw[:, 1].max()) * len(hw) <= waste * float(area.sum()):
        return None
    chunks: list[list[int]] = []
    fh = fw = total = 0.0
    for r in torch.argsort(hw[:, 1] / hw[:, 0], stable=True).tolist():
        h, w = float(hw[r, 0]), float(hw[r, 1])
        nh, nw, nt = max(fh, h), max(fw, w), total + h * w
        if chunks and nh * nw * (len(chunks[-1]) + 1) <= waste * nt:
            chunks[-1].append(r)
            fh, fw, total = nh, nw, nt
        else:
            chunks.append([r])
            fh, fw, total = h, w, h * w
    return [torch.tensor(c, dtype=torch.int64) for c in chunks]


__all__ = ["N_TRIES", "frame_chunks", "padded_boxes", "sample_boxes", "uniform"]
