"""Nearest neighbours of query images in an embeddings file written by ``selfsup embed`` (the library behind
``selfsup search`` and ``selfsup.search``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def index_checkpoint(path: str | Path) -> str | None:
    """The checkpoint recorded in a .safetensors embeddings file's metadata (None if absent)."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return None
    from safetensors import safe_open

    from selfsup.errors import DataError

    try:
        with safe_open(str(p), framework="np") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise DataError(f"{p} is not a readable embeddings index ({type(exc).__name__}); write it again with "
                        "`selfsup embed`") from None
    ckpt = meta.get("checkpoint") or None
    if ckpt and not Path(ckpt).is_absolute() and not Path(ckpt).exists() and (p.parent / ckpt).exists():
        ckpt = str(p.parent / ckpt)  # an index written before paths were stored absolute, moved with its run
    return ckpt


def search(index: str, query: str, *, k: int = 10, checkpoint: str | None = None, batch_size: int = 256,
           precision: str = "auto", progress: bool = False) -> list[dict[str, Any]]:
    """``[{"query": path, "neighbours": [{"rank", "score", "path", "class"?}]}]`` for each query image."""
    import torch

    from selfsup.checkpoint import load_encoder
    from selfsup.data import IMAGE_EXTENSIONS, decode_image, open_dataset
    from selfsup.embed import read_embeddings
    from selfsup.errors import ConfigError, DataError
    from selfsup.eval.features import extract_features
    from selfsup.eval.knn import FAISS_AUTO_PAIRS, faiss_available, neighbours_faiss, neighbours_torch

    if k < 1:
        raise ConfigError(f"-k must be >= 1, got {k}")
    emb = read_embeddings(index)
    ckpt = checkpoint or index_checkpoint(index)
    if not ckpt:
        raise ConfigError(f"{index} does not record its encoder; pass --checkpoint (the one used by `selfsup embed`)")
    encoder, info = load_encoder(ckpt)
    size = int(info["image_size"])
    q = Path(query)
    if q.is_file():
        if q.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"--query {q}: not an image ({', '.join(IMAGE_EXTENSIONS)})")
        try:
            images = decode_image(str(q), size)[None]
        except Exception as exc:
            raise DataError(f"--query {q}: cannot decode the image ({exc})") from None
        qpaths = [str(q)]
    elif q.is_dir():
        ds = open_dataset(str(q), size, progress=progress)
        images, qpaths = ds.images, list(ds.paths)
    else:
        raise DataError(f"--query {q}: no such file or folder")
    fq = extract_features(encoder, images, image_size=size, batch_size=batch_size, precision=precision)
    gallery = torch.as_tensor(np.asarray(emb["features"], dtype=np.float32))
    if gallery.shape[1] != fq.shape[1]:
        raise ConfigError(f"{index} holds {gallery.shape[1]}-d features but {ckpt} gives {fq.shape[1]}-d; pass the "
                          "--checkpoint that wrote the index")
    gallery = torch.nn.functional.normalize(gallery, dim=1)
    fq = torch.nn.functional.normalize(fq, dim=1)
    kk = min(int(k), gallery.shape[0])
    if gallery.shape[0] * fq.shape[0] > FAISS_AUTO_PAIRS and faiss_available():
        sims, idx = neighbours_faiss(gallery, fq, kk)
    else:
        sims, idx = neighbours_torch(gallery, fq, kk, 1024)
    labels = emb.get("labels")
    classes = emb.get("classes") or []
    out = []
    for i, qp in enumerate(qpaths):
        nbrs = []
        for r in range(kk):
            j = int(idx[i, r])
            row: dict[str, Any] = {"rank": r + 1, "score": round(float(sims[i, r]), 6), "path": emb["paths"][j]}
            if labels is not None and len(classes) > int(labels[j]) >= 0:
                row["class"] = classes[int(labels[j])]
            nbrs.append(row)
        out.append({"query": qp, "neighbours": nbrs})
    return out


__all__ = ["index_checkpoint", "search"]
