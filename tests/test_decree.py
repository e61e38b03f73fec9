"""DECREE (selfsup.security.decree): the collapse objective vs a slow reference, and its verdict on a planted
backdoor against a clean encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from selfsup.security.decree import decree_verdict, mean_pairwise_cosine


def test_mean_pairwise_cosine_matches_slow_reference():
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    ref = np.mean([float(torch.cosine_similarity(z[i], z[j], dim=0)) for i in range(6) for j in range(6) if i != j])
    assert float(mean_pairwise_cosine(z)) == pytest.approx(ref, abs=1e-6)
    assert float(mean_pairwise_cosine(torch.ones(4, 3))) == pytest.approx(1.0)


class _Encoder(nn.Module):
    """A random linear encoder; ``backdoor=True`` adds a (smooth) red-pixel detector whose firing moves every
    embedding to the same direction: a one-pixel trigger collapses all embeddings (a planted backdoor)."""

    def __init__(self, backdoor: bool) -> None:
        super().__init__()
        self.w = torch.randn(16, 3 * 16 * 16, generator=torch.Generator().manual_seed(0)) / 16
        self.backdoor = backdoor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1) @ self.w.T
        if self.backdoor:  # x is ImageNet-normalised: pure red is about R 2.2, G -2.0, B -1.8
            red = torch.sigmoid(4 * (x[:, 0] - x[:, 1] - x[:, 2] - 5.5)).amax((1, 2))
            f = f + 100 * red[:, None]
        return f


@pytest.mark.integration
def test_decree_flags_a_planted_backdoor_and_passes_a_clean_encoder():
    """Measured: PL1 0.003 (about one pixel of mask) on the backdoored encoder, 0.39 on the clean one
    (it needs a stamp over much of the image to collapse), against the 0.1 threshold."""
    imgs = np.random.default_rng(0).integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    bad = decree_verdict(_Encoder(True), imgs, image_size=16, steps=300, seed=0, batch_size=32)
    good = decree_verdict(_Encoder(False), imgs, image_size=16, steps=300, seed=0, batch_size=32)
    assert bad["verdict"] == "backdoored" and bad["pl1"] < 0.02
    assert good["verdict"] == "clean" and good["pl1"] > 0.2


def test_shadow_sample_spans_the_classes_of_a_class_ordered_folder():
    """Class folders are read in order, so the first rows are one class; the shadow set must be a random draw
    (a single-class shadow set makes a clean encoder's embeddings look collapsed)."""
    from selfsup.data.images import RaggedImages
    from selfsup.security.audit import shadow_sample

    labels = np.repeat(np.arange(10), 300)  # 3,000 rows, class-ordered
    images = np.broadcast_to(labels[:, None, None, None], (3000, 4, 4, 3)).astype(np.uint8)
    s = shadow_sample(images, seed=0, n=1000)
    assert s.shape == (1000, 4, 4, 3)
    counts = np.bincount(s[:, 0, 0, 0], minlength=10)
    assert counts.min() > 60 and counts.max() < 140  # ~100 per class
    assert len(np.unique(s[:, 0, 0, 0])) == 10
    np.testing.assert_array_equal(shadow_sample(images, seed=0, n=1000), s)  # seeded
    assert len(shadow_sample(images[:7], seed=0)) == 7  # fewer images than asked: all of them
    ragged = RaggedImages.from_sizes(np.zeros(4 * 6 * 3 * 5, np.uint8), np.tile([4, 6], (5, 1)), side=4)
    assert shadow_sample(ragged, seed=1, n=3).shape == (3, 4, 4, 3)  # native-aspect rows give centre squares
