"""Where a training batch comes from: the data sources, the shuffled sampler and the per-step seeds.

A training set is read through one small contract, :class:`BatchSource`: ``batch(epoch, i)`` returns step ``i``
of epoch ``epoch`` as (uint8 images [B, H, W, 3], int64 dataset indices [B]) on the CPU. A WebDataset stream
(``selfsup.data.stream.ShardStream``) is one already; a decoded, memory-mapped set (``ImageDataset``) is read
through :class:`SampledImages`, which draws the shuffled indices. Which of the two a run uses is decided once,
from ``data.path``, when the data is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from selfsup import console, distributed
from selfsup.config import PretrainConfig
from selfsup.data import ImageDataset, gather, open_dataset
from selfsup.data.stream import is_stream_spec, open_stream
from selfsup.errors import ConfigError


class BatchSource(Protocol):
    """A training set as the loop reads it, one step's local batch at a time."""

    skipped: list[tuple[str, str]]  # (path, reason) of images left out (corrupt files)

    def __len__(self) -> int: ...

    def batch(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(uint8 [B, H, W, 3], int64 [B] dataset indices, sizes) of step ``i`` of epoch ``epoch``, on the CPU.

        ``sizes`` is None when every row has the batch's shape; else int64 [B, 2] (height, width) of each
        native-aspect row inside the edge-replicated padding (:func:`selfsup.data.gather`)."""
        ...


@dataclass
class EpochSampler:
    """Shuffled, drop-last batches; each process takes its own slice of every global batch."""

    n: int
    global_batch: int
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.global_batch % self.world_size:
            raise ConfigError(
                f"--batch-size {self.global_batch} (global) is not divisible by {self.world_size} processes"
            )
        self.local_batch = self.global_batch // self.world_size
        self.steps_per_epoch = self.n // self.global_batch
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def indices(self, epoch: int, i: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        start = i * self.global_batch + self.rank * self.local_batch
        return self._perm[start : start + self.local_batch]


class SampledImages:
    """A :class:`BatchSource` over a random-access ``ImageDataset``: each step's rows in sampler order."""

    def __init__(self, dataset: ImageDataset, sampler: EpochSampler) -> None:
        self.dataset, self.sampler, self.skipped = dataset, sampler, dataset.skipped

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # sorted reads are sequential in the memmap; batch order inside a step does not matter
        idx = self.sampler.indices(epoch, i).sort().values
        images, sizes = gather(self.dataset.images, idx.numpy())
        return images, idx, sizes


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1_009 + rank


@dataclass
class TrainData:
    """The opened data of a run. ``images`` is the random-access training set (None for a stream: no kNN bank);
    ``epoch_data`` is what ``Method.on_epoch_start`` receives."""

    source: BatchSource
    images: ImageDataset | None
    epoch_data: object
    val: ImageDataset | None
    steps_per_epoch: int
    batch_size: int  # global; the configured one, or capped to the dataset (``capped_batch``)


def capped_batch(batch: int, n: int, world_size: int, where: str) -> int:
    """The global batch for ``n`` images: ``batch``, or the largest multiple of ``world_size`` that fits in the
    dataset (with a warning) when the dataset is smaller than the batch; an error when not even 2 images fit."""
    if batch <= n:
        return batch
    fits = n - n % world_size
    if fits < 2:
        raise ConfigError(f"{where} has {n} image(s): pretraining needs at least 2 per batch "
                          f"({world_size} process(es)); add images")
    console.info(f"warning: --batch-size {batch} is larger than the dataset ({n} images in {where}); "
                 f"using batch {fits} (one step per epoch)")
    return fits


def load_data(cfg: PretrainConfig) -> TrainData:
    """Open the training (and validation) data of a resolved config."""
    info = distributed.env_info()
    size = cfg.data.cache_size or cfg.data.image_size
    progress = info.is_main and cfg.train.progress
    images: ImageDataset | None = None
    epoch_data: object
    if is_stream_spec(cfg.data.path):  # WebDataset tar shards: streamed, no memmap cache (docs/scaling.md)
        stream = open_stream(cfg.data.path, size, cfg.train.batch_size, seed=cfg.train.seed, rank=info.rank,
                             world_size=info.world_size)
        n, epoch_data = len(stream), stream
    else:
        images = open_dataset(cfg.data.path, size, cache_dir=cfg.data.cache_dir, strict=cfg.data.strict,
                              progress=progress)
        n, epoch_data = len(images), images
    val = None
    if cfg.data.val:
        val = open_dataset(cfg.data.val, size, cache_dir=cfg.data.cache_dir, strict=cfg.data.strict,
                           require_labels=True, min_classes=2, progress=progress)
    batch = capped_batch(cfg.train.batch_size, n, info.world_size, str(cfg.data.path))
    sampler = EpochSampler(n, batch, cfg.train.seed, info.rank, info.world_size)
    source: BatchSource = stream if images is None else SampledImages(images, sampler)
    return TrainData(source, images, epoch_data, val, sampler.steps_per_epoch, batch)
