"""Forward passes over a batch's views: equal-size views share one backbone pass; an EMA teacher's targets."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def forward_by_size(
    backbone: nn.Module, head: Callable[[torch.Tensor], torch.Tensor], views: list[torch.Tensor]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``head(backbone(v))`` for every view, in order, where consecutive views of equal size share ONE
    backbone pass (multi-crop: global views together, local views together; the reference SwAV/DINO
    MultiCropWrapper does the same, so BN statistics are per resolution). Also returns the backbone
    features of the first view, detached (the loop's online kNN / collapse logs). Two-view methods pass
    ``batch.views[:2]``: both views in one pass, so BN statistics are over 2B."""
    outs: list[torch.Tensor] = []
    first: torch.Tensor | None = None
    i = 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
            j += 1
        h = backbone(torch.cat(views[i:j]) if j - i > 1 else views[i])
        if first is None:
            first = h[: views[0].shape[0]].detach()
        outs.extend(head(h).split(views[i].shape[0]))
        i = j
    assert first is not None
    return outs, first


@torch.no_grad()
def teacher_outputs(backbone: nn.Module, head: Callable[[torch.Tensor], torch.Tensor],
                    views: list[torch.Tensor]) -> list[torch.Tensor]:
    """``head(backbone(v))`` for every view without gradients (an EMA teacher's targets), batched as
    :func:`forward_by_size` batches them."""
    return forward_by_size(backbone, head, views)[0]
