"""Streaming training data from WebDataset tar shards (local paths or URLs), without the memmap cache.

Spec (``--data``): ``wds:PATTERN[#N]`` or any pattern ending in ``.tar``, e.g.
``shards/cifar-{000000..000009}.tar`` or ``wds:https://host/data/train-{0000..0099}.tar#1281167``.
Brace patterns are expanded (``braceexpand``); URLs are opened by ``webdataset.gopen`` (http(s) through
curl, ``pipe:CMD``, local files). ``#N`` gives the number of samples; it is needed only for remote shards
without a manifest. Local shards are counted from ``shards.json`` (written by :func:`write_shards`) or,
failing that, by scanning the tar headers once.

Shard format (WebDataset convention): each sample is a group of tar members sharing a key,
``KEY.jpg`` (or any extension an image folder accepts: .png, .webp, .tif, ...), optionally ``KEY.cls`` (the
class index as text). Images are decoded
exactly like image folders (:func:`selfsup.data.folder.decode_native`: EXIF, colour rules, native aspect
with the shorter side resized to the cache size, at most 10:1) in the data-loader workers, after shuffling;
a batch of different shapes is replicate-padded with per-sample sizes (:func:`selfsup.data.images.pad_rows`),
so the views crop every image in its own height and width, as for folders.

Ordering, per training epoch ``e`` (the nominal epoch: ``N // global_batch`` steps):

1. the shard list is permuted with a generator seeded by (seed, e): the same order on every rank;
2. rank ``r`` of ``W`` takes shards ``r, r+W, ...`` of that order (per-rank split, no sample read twice
   per epoch across ranks), and its loader worker ``v`` of ``K`` takes every K-th of those (per-worker
   split); so at least ``W`` shards are required, and ``K`` is capped at the shards per rank;
3. each worker streams its shards through a seeded shuffle buffer (``buffer`` samples) and yields whole
   local batches (global batch / W). Batch ``i`` of the epoch comes from worker ``i mod K``. A worker
   whose shards run out before the epoch's quota starts over on them (unequal shards repeat a few samples).

Resume: the step's position ``(epoch, i)`` is all the loop saves. Restarting at batch ``i`` replays the
epoch's shard order and shuffle buffers and *skips* the raw (undecoded) samples of batches ``< i``, so a
resumed run sees the same images as an uninterrupted one **provided the world size and worker count are
unchanged**; with a different world size or worker count the resumed epoch is a different (still
disjoint, still shuffled) split, i.e. resume is approximate. Skipping reads at most one epoch of shard
bytes without decoding them.

The dataset-index of a sample (``Batch.index``) is ``offset(shard) + position in shard`` in the order the
shards were listed, so it is stable across runs.

Making shards: :func:`write_shards` (or ``python -m selfsup.data.stream SRC OUT --shard-size 5000``) from an
image folder (original file bytes, no re-encoding) or any :class:`~selfsup.data.folder.ImageDataset`
(PNG-encoded), in a seeded random order so that every shard mixes all classes.
"""

from __future__ import annotations

import io
import json
import os
import random
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data.folder import IMAGE_EXTENSIONS
from selfsup.errors import ConfigError, DataError

PREFIX = "wds:"
MANIFEST = "shards.json"
#: A sample's image member: any extension an image folder accepts (the shard writer keeps each file's own).
IMAGE_KEYS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)


def _require_webdataset(load: bool = True) -> Any:
    """The ``webdataset`` module (imported lazily: it is slow to import), or a one-line install hint."""
    import importlib.util

    if importlib.util.find_spec("webdataset") is None:
        raise ConfigError(
            "streaming from tar shards needs the 'webdataset' package: pip install 'selfsup[stream]'"
        )
    if not load:
        return None
    import webdataset

    return webdataset


def is_stream_spec(spec: str) -> bool:
    """True for ``wds:...`` and for shard patterns/URLs ending in ``.tar`` (an image folder never is)."""
    spec = str(spec)
    return spec.startswith(PREFIX) or spec.split("#", 1)[0].endswith(".tar")


def parse_spec(spec: str) -> tuple[list[str], int | None]:
    """``wds:PATTERN[#N]`` -> (expanded shard URLs, N or None)."""
    from braceexpand import braceexpand

    body = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    n: int | None = None
    if "#" in body:
        body, _, tail = body.rpartition("#")
        if not tail.isdigit() or int(tail) < 1:
            raise ConfigError(f"{spec}: '#{tail}' must be the number of samples, e.g. {body}#50000")
        n = int(tail)
    urls = [os.path.expanduser(u) for u in braceexpand(body)]
    if not urls or not body:
        raise ConfigError(f"{spec}: no shards; pass e.g. 'shards/train-{{000000..000009}}.tar'")
    return urls, n


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def _count_local(path: str) -> int:
    """Samples in one local shard, from the tar headers (no data is read)."""
    keys = set()
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if m.isfile() and not os.path.basename(m.name).startswith("__"):
                    keys.add(_split_key(m.name)[0])
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"cannot read shard {path} ({e}); check the file or re-create the shards") from None
    return len(keys)


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset's key/extension split: the key ends at the first dot of the basename."""
    d, b = os.path.split(name)
    stem, _, ext = b.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def shard_counts(urls: list[str], n: int | None) -> list[int] | None:
    """Samples per shard (manifest, else tar scan for local shards); None when only the total is known."""
    if all(not _is_remote(u) for u in urls):
        missing = [u for u in urls if not os.path.isfile(u)]
        if missing:
            raise DataError(f"shard {missing[0]} does not exist ({len(missing)} of {len(urls)} missing); "
                            "check the pattern, e.g. 'shards/cifar-{000000..000009}.tar'")
        counts: dict[str, int] = {}
        for folder in {os.path.dirname(os.path.abspath(u)) for u in urls}:
            mf = Path(folder) / MANIFEST
            if mf.is_file():
                for name, c in json.loads(mf.read_text()).get("shards", {}).items():
                    counts[os.path.join(folder, name)] = int(c)
        return [counts.get(os.path.abspath(u)) or _count_local(u) for u in urls]
    if n is None:
        raise ConfigError(f"remote shards ({urls[0]}, ...): append '#N' with the number of samples to the spec, "
                          "e.g. wds:https://host/train-{0000..0099}.tar#1281167")
    return None


class ShardStream:
    """Training batches streamed from tar shards: ``batch(epoch, i) -> (uint8 [B, H, W, 3], int64 [B],
    sizes int64 [B, 2] or None)`` (see :func:`selfsup.data.images.gather` for the padded layout).

    Quacks enough like :class:`~selfsup.data.folder.ImageDataset` for the training loop (``len``,
    ``labels``, ``skipped``); it has no ``images`` array (no random access, so no online kNN bank).
    """

    def __init__(self, spec: str, size: int, global_batch: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, workers: int | None = None, buffer: int = 1000) -> None:
        _require_webdataset(load=False)
        self.root, self.size, self.seed, self.rank, self.world_size = spec, size, seed, rank, world_size
        self.urls, n = parse_spec(spec)
        self.counts = shard_counts(self.urls, n)
        self.num_samples = sum(self.counts) if self.counts is not None else int(n or 0)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64) if self.counts else None
        if len(self.urls) < world_size:
            raise ConfigError(f"{spec}: {len(self.urls)} shard(s) for {world_size} processes; every process needs "
                              f"its own shards — write at least {world_size} (write_shards --shard-size smaller)")
        if global_batch % world_size:
            raise ConfigError(f"--batch-size {global_batch} (global) is not divisible by {world_size} processes")
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = self.num_samples // global_batch
        if workers is None:
            workers = int(os.environ.get("SELFSUP_STREAM_WORKERS", "2"))
        self.workers, self.buffer = max(0, workers), buffer
        self.labels = None
        self.classes: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self._it: Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] | None = None
        self._next: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return f"ShardStream({self.root!r}, shards={len(self.urls)}, n={self.num_samples}, size={self.size})"

    def shards_for(self, epoch: int, rank: int | None = None) -> list[int]:
        """Shard indices this rank reads in ``epoch`` (all of its workers together), in order."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.urls), generator=g).tolist()
        return order[(self.rank if rank is None else rank) :: self.world_size]

    def batch(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self._it is None or self._next != (epoch, i):
            self._it = None  # drops the previous loader (its workers exit)
            self._it = self._epoch(epoch, i)
        self._next = (epoch, i + 1)
        return next(self._it)

    def _epoch(self, epoch: int, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        mine = self.shards_for(epoch)
        k = max(1, min(self.workers, len(mine)))
        ds = _EpochShards(self, epoch, start, mine, k)
        if self.workers == 0:
            yield from iter(ds)
            return
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=k, prefetch_factor=2,
                                             collate_fn=_as_is)
        yield from loader


def _as_is(item: Any) -> Any:
    """The loader's collate for whole batches: pass them through (a None ``sizes`` stays None)."""
    return item


class _EpochShards(torch.utils.data.IterableDataset):
    """One epoch of one rank: loader worker ``w`` serves batches ``start + w, start + w + K, ...``."""

    def __init__(self, s: ShardStream, epoch: int, start: int, mine: list[int], k: int) -> None:
        super().__init__()
        self.s, self.epoch, self.start, self.mine, self.k = s, epoch, start, mine, k

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        info = torch.utils.data.get_worker_info()
        w = info.id if info is not None else 0
        s, k = self.s, self.k
        workers = range(k) if info is None else [w]
        streams = {}
        for w in workers:
            v = (self.start + w) % k  # the virtual worker: batch j always comes from stream j mod K
            skip = len(range(v, self.start, k))
            quota = len(range(self.start + w, s.steps_per_epoch, k))
            streams[w] = self._batches(v, skip, quota)
        if info is not None:
            yield from streams[w]
            return
        active = list(streams)  # in-process: the same round robin a DataLoader does
        while active:
            for w in list(active):
                try:
                    yield next(streams[w])
                except StopIteration:
                    active.remove(w)

    def _raw(self, v: int) -> Iterator[tuple[int, bytes]]:
        """(dataset index, image bytes) of stream ``v``, shuffled through a seeded buffer; endless."""
        wds = _require_webdataset()
        from webdataset import tariterators

        s = self.s
        shards = self.mine[v :: self.k]
        rng = random.Random(f"{s.seed}/{self.epoch}/{s.rank}/{v}")
        buf: list[tuple[int, bytes]] = []
        size = s.buffer
        if s.counts is not None:  # never buffer more than one pass over this stream's shards
            size = max(1, min(size, sum(s.counts[sh] for sh in shards)))

        def one_pass() -> Iterator[tuple[int, bytes]]:
            for sh in shards:
                stream = wds.gopen(s.urls[sh])
                try:
                    files = ({**f, "__url__": s.urls[sh]} for f in tariterators.tar_file_iterator(stream))
                    for pos, sample in enumerate(tariterators.group_by_keys(files)):
                        data = next((sample[e] for e in IMAGE_KEYS if e in sample), None)
                        if data is None:
                            continue
                        base = int(s.offsets[sh]) if s.offsets is not None else sh * 1_000_000_000
                        yield base + pos, data
                finally:
                    stream.close()

        while True:  # passes over this stream's shards; the buffer is flushed at the end of each pass,
            for item in one_pass():  # so no sample repeats within a pass
                if len(buf) < size:
                    buf.append(item)
                    continue
                j = rng.randrange(len(buf))
                buf[j], item = item, buf[j]
                yield item
            rng.shuffle(buf)
            yield from buf
            buf = []

    def _batches(self, v: int, skip: int, quota: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        from selfsup.data.folder import decode_native
        from selfsup.data.images import pad_rows

        s = self.s
        raw = self._raw(v)
        for _ in range(skip * s.local_batch):  # resume: skip without decoding
            next(raw)
        for _ in range(quota):
            imgs: list[np.ndarray] = []
            idx: list[int] = []
            while len(imgs) < s.local_batch:
                index, data = next(raw)
                try:
                    imgs.append(decode_native(io.BytesIO(data), s.size))  # type: ignore[arg-type]
                except Exception:  # a corrupt sample: take the next one (deterministically)
                    continue
                idx.append(index)
            arr, sizes = pad_rows(imgs, s.size)
            yield (torch.from_numpy(arr), torch.tensor(idx, dtype=torch.long),
                   None if sizes is None else torch.from_numpy(sizes))


def open_stream(spec: str, size: int, global_batch: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                workers: int | None = None) -> ShardStream:
    """Open a shard stream for the training loop (see the module docstring)."""
    return ShardStream(spec, size, global_batch, seed=seed, rank=rank, world_size=world_size, workers=workers)


# ------------------------------------------------------------------------------------------------ writer


def _folder_items(root: Path) -> tuple[list[tuple[str, int | None]], list[str]]:
    """(path, label) of every image under ``root`` (class sub-folders give labels) and the class names."""
    files = sorted(
        str(p) for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not any(x.startswith(".") for x in p.parts)
    )
    if not files:
        raise DataError(f"no images found in {root}; pass an image folder (root/<class>/*.jpg or root/*.jpg)")
    rels = [os.path.relpath(f, root) for f in files]
    if all(r.count(os.sep) == 1 for r in rels):
        classes = sorted({r.split(os.sep, 1)[0] for r in rels})
        ci = {c: i for i, c in enumerate(classes)}
        return [(f, ci[r.split(os.sep, 1)[0]]) for f, r in zip(files, rels)], classes
    return [(f, None) for f in files], []


def write_shards(dataset: Any, out_dir: str | Path, shard_size: int, *, prefix: str = "shard", seed: int = 0,
                 shuffle: bool = True) -> str:
    """Write ``dataset`` as WebDataset shards ``OUT/PREFIX-000000.tar ...`` plus ``shards.json``.

    ``dataset``: an image-folder path (files are copied byte for byte) or an
    :class:`~selfsup.data.folder.ImageDataset` (its uint8 squares are PNG-encoded). Samples are written in a
    seeded random order (``shuffle``) so every shard mixes the classes. Each shard is written to a temporary
    name and renamed, so an interrupted write leaves no half shard. Returns the ``--data`` spec to use.
    """
    from PIL import Image

    from selfsup.checkpoint import atomic_write, atomic_write_text

    if shard_size < 1:
        raise ConfigError(f"shard size must be at least 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(dataset, str | Path):
        items, classes = _folder_items(Path(dataset).expanduser())
        n = len(items)
    else:
        classes, n = list(dataset.classes), len(dataset)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)

    def sample(j: int) -> dict[str, Any]:
        if isinstance(dataset, str | Path):
            path, label = items[j]
            ext = Path(path).suffix.lower().lstrip(".")
            rec: dict[str, Any] = {"__key__": f"{j:09d}", ext: Path(path).read_bytes()}
        else:
            b = io.BytesIO()
            Image.fromarray(np.asarray(dataset.images[j])).save(b, format="PNG")
            rec = {"__key__": f"{j:09d}", "png": b.getvalue()}
            label = int(dataset.labels[j]) if dataset.labels is not None else None
        if label is not None:
            rec["cls"] = str(label).encode()
        return rec

    counts: dict[str, int] = {}
    for k, lo in enumerate(range(0, n, shard_size)):
        name = f"{prefix}-{k:06d}.tar"
        chunk = order[lo : lo + shard_size]

        def write(tmp: str, chunk: np.ndarray = chunk) -> None:
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:  # plain tar = the WebDataset format
                for j in chunk:
                    rec = sample(int(j))
                    key = rec.pop("__key__")
                    for ext, data in rec.items():
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size, info.mode = len(data), 0o444
                        tf.addfile(info, io.BytesIO(data))

        atomic_write(out / name, write)
        os.chmod(out / name, 0o644)  # shards are data to share (the atomic writer creates 0600 files)
        counts[name] = len(chunk)
    atomic_write_text(out / MANIFEST, json.dumps({"total": n, "classes": classes, "shards": counts}, indent=1))
    last = len(counts) - 1
    return str(out / f"{prefix}-{{000000..{last:06d}}}.tar") if last > 0 else str(out / f"{prefix}-000000.tar")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m selfsup.data.stream",
                                description="Write WebDataset tar shards from an image folder or builtin:NAME.")
    p.add_argument("src", help="image folder (root/<class>/*.jpg) or builtin:NAME[:SPLIT]")
    p.add_argument("out", help="output folder for PREFIX-000000.tar ... and shards.json")
    p.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    p.add_argument("--prefix", default="shard")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    src: Any = a.src
    if a.src.startswith("builtin:"):
        from selfsup.data import open_dataset

        src = open_dataset(a.src, 64 if "synthetic" in a.src else 28)
    spec = write_shards(src, a.out, a.shard_size, prefix=a.prefix, seed=a.seed)
    print(f"wrote shards; train with: selfsup pretrain --data '{spec}' ...", file=sys.stderr)
    print(spec)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
