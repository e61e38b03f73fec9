"""Colour constants shared by the torch view ops (:mod:`selfsup.augment.views`) and the fused CPU kernel
(:mod:`selfsup.augment.kernel`), in their own module so that neither imports the other's internals."""

from __future__ import annotations

#: ITU-R 601-2 luma weights, as in torchvision's ``rgb_to_grayscale`` (and PIL's "L" conversion).
GRAY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.587, 0.114)
