"""Frozen-feature extraction for evaluation (kNN, linear probe, baselines).

``extract_features`` runs an encoder over uint8 images in batches, in eval mode and under
``torch.no_grad``, and returns float32 features on the CPU. Mixed precision follows one switch
(``resolve_precision`` + ``autocast_context``, nanoGPT style): bf16 autocast where the hardware
supports it (CUDA with bf16, CPUs with AVX512-BF16 or AMX), fp16 only on CUDA, otherwise fp32.

``cached_features`` stores the features of a dataset as ``.safetensors`` (never pickle) under a key
built from the encoder's identity (checkpoint path, size and mtime; or the architecture and seed of a
random baseline), the dataset's identity (its image-cache key, which covers every file's path, size and
mtime), the eval transform, the image size and the precision, so that re-running an evaluation
(``selfsup eval``, ``selfsup report``) does not recompute them. The files live in
:func:`feature_cache_dir` (``<data cache>/features``, i.e. ``$SELFSUP_CACHE/features`` or
``~/.cache/selfsup/features``) and are written atomically.

``pixel_features`` is the raw-pixel baseline: flattened pixels in [0, 1], mean-centred per feature.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selfsup import console
from selfsup.errors import ConfigError, DataError

# precision: one implementation for training and evaluation, in selfsup.runtime (re-exported here;
# resolve_precision is runtime.precision_dtype: the dtype only)
from selfsup.runtime import PRECISIONS, autocast_context, cpu_supports_bf16, module_device  # noqa: F401
from selfsup.runtime import precision_dtype as resolve_precision

if TYPE_CHECKING:  # pragma: no cover
    from selfsup.data import ImageDataset

CACHE_VERSION = 2


# --------------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------------


def as_tensor(x: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """Features or labels given as a numpy array or a tensor -> a tensor (a read-only, e.g. cached, array is
    copied); DataError naming ``name`` for anything else."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x if x.flags.writeable else x.copy())
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name} must be a tensor or numpy array, got {type(x).__name__}")
    return x


def _default_transform() -> Callable[..., torch.Tensor]:
    from selfsup.augment.views import eval_transform

    return eval_transform


def _batch(images: np.ndarray | torch.Tensor, start: int, stop: int) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images[start:stop]
    if not isinstance(images, np.ndarray):  # e.g. RaggedImages: its array view (the centre squares)
        return torch.from_numpy(np.ascontiguousarray(images[start:stop]))
    arr = np.ascontiguousarray(images[start:stop])
    if not arr.flags.writeable:  # read-only memmap cache: copy the batch (torch wants writable memory)
        arr = arr.copy()
    return torch.from_numpy(arr)


@torch.no_grad()
def extract_features(
    encoder: nn.Module,
    images: np.ndarray | torch.Tensor,
    *,
    image_size: int,
    batch_size: int = 256,
    precision: str = "auto",
    channels_last: bool = True,
    transform: Callable[..., torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "features",
    crop_fraction: float = 1.0,
) -> torch.Tensor:
    """Encode ``images`` and return float32 features ``[N, F]`` on the CPU.

    The evaluation view (default transform, :func:`selfsup.augment.views.eval_transform`): the shorter side
    resized, then the centre ``image_size x image_size`` crop (``crop_fraction`` of the resized shorter side;
    1.0 keeps all of it, 0.875 is torchvision's ImageNet protocol). Native-aspect datasets
    (:class:`selfsup.data.RaggedImages`) are read at their own aspect ratio for it; a custom ``transform``
    gets their centre squares.

    images: uint8 ``[N, H, W, 3]`` or ``[N, 3, H, W]`` (the layout is detected by the transform); numpy
    (memmaps are read batch by batch) or torch. ``transform(batch, image_size, channels_last=..., dtype=float32)``
    turns a uint8 batch on the encoder's device into normalised ``[B, 3, image_size, image_size]`` floats;
    the default is :func:`selfsup.augment.views.eval_transform`. ``channels_last`` asks it for the channels-last
    memory format (faster convolutions); it does not change the values. The encoder runs in eval mode (BatchNorm uses its
    running statistics and does not update them); its previous train/eval mode is restored afterwards.
    """
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    n = int(images.shape[0])
    if n == 0:
        raise DataError("no images to encode (empty dataset); check the dataset path or split")
    tf = transform if transform is not None else _default_transform()
    native = transform is None and hasattr(images, "padded")  # RaggedImages: the protocol on native rows
    kw: dict[str, object] = {"crop_fraction": crop_fraction} if transform is None else {}
    device = module_device(encoder)
    dtype = resolve_precision(precision, device)
    was_training = encoder.training
    encoder.eval()
    out: torch.Tensor | None = None
    starts = range(0, n, batch_size)
    bar = None
    if progress and console.bars():
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc, unit="img", leave=False)
    try:
        for start in starts:
            stop = min(start + batch_size, n)
            sizes = None
            if native:
                arr, sz = images.padded(np.arange(start, stop))  # type: ignore[union-attr]
                x, sizes = torch.from_numpy(arr), (None if sz is None else torch.from_numpy(sz))
            else:
                x = _batch(images, start, stop)
            x = x.to(device, non_blocking=True)
            if sizes is not None:
                kw["sizes"] = sizes
            else:
                kw.pop("sizes", None)
            x = tf(x, image_size, channels_last=channels_last, dtype=torch.float32, **kw)
            with autocast_context(device, dtype):
                f = encoder(x)
            if isinstance(f, (tuple, list)):
                f = f[0]
            f = f.reshape(f.shape[0], -1).float()
            if out is None:
                out = torch.empty(n, f.shape[1], dtype=torch.float32)
            out[start:stop] = f.cpu()
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
        encoder.train(was_training)
    assert out is not None
    return out


# --------------------------------------------------------------------------------------------------
# raw-pixel baseline
# --------------------------------------------------------------------------------------------------


def raw_pixels(
    images: np.ndarray | torch.Tensor, size: int | None = None, *, chunk: int = 4096
) -> torch.Tensor:
    """Flattened pixels in [0, 1], float32 ``[N, size*size*C]`` (images ``[N, H, W, C]`` uint8)."""
    n = int(images.shape[0])
    if n == 0:
        raise DataError("no images for the pixel baseline (empty dataset)")
    if images.ndim != 4:
        raise DataError(f"pixel baseline expects images [N, H, W, C], got shape {tuple(images.shape)}")
    h, w, c = (int(s) for s in images.shape[1:])
    s_out = (h, w) if size is None or (size == h and size == w) else (int(size), int(size))
    out = torch.empty(n, s_out[0] * s_out[1] * c, dtype=torch.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        x = _batch(images, start, stop).float().div_(255.0)
        if s_out != (h, w):
            x = x.permute(0, 3, 1, 2)
            x = F.interpolate(x, size=s_out, mode="bilinear", antialias=True, align_corners=False)
            x = x.clamp_(0.0, 1.0).permute(0, 2, 3, 1)
        out[start:stop] = x.reshape(stop - start, -1)
    return out


def pixel_features(
    images: np.ndarray | torch.Tensor, size: int | None = None, *, mean: torch.Tensor | None = None
) -> torch.Tensor:
    """Raw-pixel baseline features: flattened pixels in [0, 1] (resized to ``size`` if given), mean-centred.

    By default each feature is centred by its mean over ``images``; pass ``mean`` (e.g. the training
    set's ``raw_pixels(...).mean(0)``) to centre a test set with training statistics instead.
    """
    x = raw_pixels(images, size)
    x -= x.mean(0) if mean is None else mean.to(x)
    return x


# --------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------


def feature_cache_dir() -> Path:
    """Where evaluation features are cached: ``features/`` inside the data cache (see
    :func:`selfsup.data.cache.default_cache_dir`), so they sit beside the decoded images they come from and
    work for any checkpoint, including read-only run folders and external ``torchvision:``/``timm:`` weights."""
    from selfsup.data import default_cache_dir

    return Path(default_cache_dir()) / "features"


def checkpoint_key(path: str | Path) -> str:
    """An identity string for a checkpoint file: resolved path, size and modification time."""
    p = Path(path).resolve()
    if p.is_dir():
        for name in ("checkpoint.pt", "encoder.safetensors"):
            if (p / name).is_file():
                p = p / name
                break
    st = p.stat()
    return f"{p}|{st.st_size}|{st.st_mtime_ns}"


def encoder_key(info: dict[str, Any]) -> str:
    """The cache identity of the encoder ``load_encoder`` returned with ``info``.

    A selfsup checkpoint is identified by :func:`checkpoint_key` of its file (a new save changes its mtime);
    an external ``torchvision:NAME:WEIGHTS`` / ``timm:...`` spec by its weights file the same way.
    """
    source = str(info.get("source", ""))
    if Path(source).exists():
        return checkpoint_key(source)
    weights = str((info.get("external") or {}).get("weights", ""))
    if weights and Path(weights).exists():
        return f"{source}|{checkpoint_key(weights)}"
    return source  # no file to stat: the spec alone


def random_encoder_key(info: dict[str, Any], seed: int) -> str:
    """The cache identity of the random-init baseline: architecture, image size, seed and torch version
    (the same seed draws the same weights only within one torch version)."""
    arch = info.get("external") or info.get("backbone")
    return "random|" + json.dumps({"arch": arch, "size": info.get("image_size"), "seed": int(seed),
                                   "torch": torch.__version__}, sort_keys=True, default=str)


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """The identity of a dataset's pixels.

    A folder's images are a memmap over the data cache file, whose name is the hash of every file's path,
    size and mtime: that name and the shape identify the pixels. Otherwise (builtin or in-memory data) the
    file paths, or the pixels themselves when there are no paths, are hashed.
    """
    h = hashlib.sha256()
    images = dataset.images
    h.update(repr(tuple(int(s) for s in images.shape)).encode())
    if hasattr(images, "sizes") and not callable(images.sizes):  # native-aspect rows: their shapes too
        h.update(np.ascontiguousarray(images.sizes).tobytes())
    filename = getattr(images, "filename", None)
    paths = getattr(dataset, "paths", None)
    if filename:
        h.update(b"memmap:" + Path(str(filename)).name.encode())
    elif paths:
        for p in paths:
            h.update(str(p).encode())
            h.update(b"\0")
    else:
        n = int(images.shape[0])
        step = 4096
        for start in range(0, n, step):
            h.update(np.ascontiguousarray(np.asarray(images[start : start + step])).tobytes())
    return h.hexdigest()


def transform_key(transform: Callable[..., torch.Tensor] | None) -> str:
    """The eval transform's qualified name (a different transform gives different features)."""
    tf = transform if transform is not None else _default_transform()
    return f"{getattr(tf, '__module__', '?')}.{getattr(tf, '__qualname__', repr(tf))}"


def cache_path(cache_dir: str | Path, key: str, dataset: ImageDataset, image_size: int, precision: str,
               transform: str = "", crop_fraction: float = 1.0) -> Path:
    fields: dict[str, object] = {"v": CACHE_VERSION, "key": key, "data": dataset_fingerprint(dataset),
                                 "size": int(image_size), "precision": precision, "transform": transform}
    if crop_fraction != 1.0:  # the eval protocol's centre crop (absent at 1.0, the default)
        fields["crop"] = float(crop_fraction)
    ident = json.dumps(fields, sort_keys=True)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:20]
    return Path(cache_dir) / f"features-{digest}.safetensors"


def cached_features(
    encoder: nn.Module,
    dataset: ImageDataset,
    *,
    key: str,
    cache_dir: str | Path | None = None,
    image_size: int,
    precision: str = "auto",
    transform: Callable[..., torch.Tensor] | None = None,
    crop_fraction: float = 1.0,
    **options: Any,
) -> torch.Tensor:
    """``extract_features`` on ``dataset.images``, memoised in ``cache_dir`` as a ``.safetensors`` file.

    ``key`` identifies the encoder weights (e.g. :func:`encoder_key`); the file name also hashes the
    dataset's identity, the eval transform, the image size and the resolved precision. ``cache_dir`` defaults
    to :func:`feature_cache_dir`. A file that is unreadable or of the wrong length is recomputed. Loading uses
    safetensors only (no pickle). ``options`` (``batch_size``, ``channels_last``, ``progress``, ``desc``) go to
    :func:`extract_features`; they do not change the features, so they are not part of the file name.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from selfsup.checkpoint import atomic_write

    resolved = resolve_precision(precision, module_device(encoder))
    prec_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[resolved]
    path = cache_path(cache_dir if cache_dir is not None else feature_cache_dir(), key, dataset, image_size,
                      prec_name, transform_key(transform), crop_fraction)
    n = int(dataset.images.shape[0])
    if path.is_file():
        try:
            feats = load_file(str(path))["features"]
            if feats.ndim == 2 and feats.shape[0] == n and feats.dtype == torch.float32:
                return feats
        except (SafetensorError, KeyError, OSError, ValueError, RuntimeError):
            pass  # corrupt or foreign file: recompute and overwrite
    feats = extract_features(encoder, dataset.images, image_size=image_size, precision=precision, transform=transform,
                             crop_fraction=crop_fraction, **options)
    meta = {"key": key, "image_size": str(image_size), "precision": prec_name, "n": str(n)}
    try:
        os.makedirs(path.parent, exist_ok=True)
        atomic_write(path, lambda p: save_file({"features": feats.contiguous()}, p, metadata=meta))
    except OSError as exc:  # a read-only or full cache disk costs the reuse, not the evaluation
        import sys

        sys.stderr.write(f"warning: cannot cache features in {path.parent} ({exc.strerror or exc})\n")
    return feats
