"""Embed a folder of images with a pretrained encoder (the Python API behind ``selfsup embed``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.checkpoint import atomic_write
from selfsup.config.validate import check_output_file
from selfsup.errors import ConfigError, DataError


def embed_folder(checkpoint: str, data: str, out: str, *, batch_size: int = 256, precision: str = "auto",
                 strict: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the features of every image under ``data`` to ``out`` (.safetensors or .npz), one row per file.

    Returns ``n``, ``dim``, ``path``, ``skipped`` and the embeddings themselves: ``features`` (float32 [n, dim])
    and ``paths`` (the image of each row)."""
    from selfsup.checkpoint import load_encoder
    from selfsup.data import open_dataset
    from selfsup.eval.features import extract_features

    out_path = check_output_file(out, "--out", (".safetensors", ".npz"))  # before any work
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    encoder, info = load_encoder(checkpoint)
    ds = open_dataset(data, int(info["image_size"]), strict=strict, progress=progress)
    feats = extract_features(encoder, ds.images, image_size=int(info["image_size"]), batch_size=batch_size,
                             precision=precision, progress=progress, desc="embed")
    source = str(info["source"])
    if Path(source).exists():  # absolute: `selfsup search` may run from another working directory
        source = str(Path(source).resolve())
    features = feats.numpy()
    write_embeddings(out_path, features, ds.paths, ds.labels, ds.classes, source=source)
    return {"n": int(feats.shape[0]), "dim": int(feats.shape[1]), "path": str(out_path), "skipped": len(ds.skipped),
            "features": features, "paths": list(ds.paths)}


def write_embeddings(path: Path, features: np.ndarray, paths: list[str], labels: np.ndarray | None,
                     classes: list[str], source: str = "") -> None:
    if path.suffix == ".safetensors":
        import torch
        from safetensors.torch import save_file

        tensors = {"features": torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))}
        if labels is not None:
            tensors["labels"] = torch.from_numpy(np.array(labels, dtype=np.int64))
        meta = {"paths": json.dumps(paths), "classes": json.dumps(classes), "checkpoint": source}
        atomic_write(path, lambda p: save_file(tensors, p, metadata=meta))
    else:
        arrays: dict[str, Any] = {"features": features.astype(np.float32), "paths": np.array(paths, dtype=str),
                                  "classes": np.array(classes, dtype=str)}
        if labels is not None:
            arrays["labels"] = np.asarray(labels, dtype=np.int64)

        def _w(p: str) -> None:
            with open(p, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(path, _w)


def read_embeddings(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`write_embeddings` (no pickle); any damage is a one-line DataError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"embeddings file not found: {p} (write one with `selfsup embed`)")
    if p.suffix not in (".safetensors", ".npz"):
        raise DataError(f"{p}: not an embeddings index (.safetensors or .npz written by `selfsup embed`)")
    try:
        out = _read_embeddings(p)
        feats = np.asarray(out["features"])
        n = feats.shape[0] if feats.ndim == 2 else -1
        ok = (feats.ndim == 2 and feats.shape[1] > 0 and np.issubdtype(feats.dtype, np.floating)
              and len(out["paths"]) == n and ("labels" not in out or len(out["labels"]) == n))
    except DataError:
        raise
    except Exception as exc:  # a damaged file: safetensors, zip, JSON or numpy errors of many kinds
        first = " ".join((str(exc).strip().splitlines() or [""])[0].split())[:100]
        raise DataError(f"{p} is not a readable embeddings index ({type(exc).__name__}{': ' + first if first else ''}); "
                        "write it again with `selfsup embed`") from None
    if not ok:
        raise DataError(f"{p}: features, paths and labels do not match (a damaged or hand-made index); write it "
                        "again with `selfsup embed`")
    return out


def _read_embeddings(p: Path) -> dict[str, Any]:
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="np") as f:
            meta = f.metadata() or {}
            out: dict[str, Any] = {"features": f.get_tensor("features")}
            if "labels" in f.keys():
                out["labels"] = f.get_tensor("labels")
        out["paths"] = json.loads(meta.get("paths", "[]"))
        out["classes"] = json.loads(meta.get("classes", "[]"))
        return out
    with np.load(p, allow_pickle=False) as z:
        res = {k: z[k] for k in z.files}
    res["paths"] = [str(x) for x in res["paths"]]
    res["classes"] = [str(x) for x in res.get("classes", [])]
    return res
