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

__all__ = ["N_TRIES", "padded_boxes", "sample_boxes", "uniform"]
