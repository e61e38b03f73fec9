"""Embed a folder of images with a pretrained encoder (the Python API behind ``selfsup embed``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.checkpoint import atomic_write
from selfsup.errors import ConfigError


def embed_folder(checkpoint: str, data: str, out: str, *, batch_size: int = 256, precision: str = "auto",
                 strict: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the features of every image under ``data`` to ``out`` (.safetensors or .npz), one row per file."""
    from selfsup.checkpoint import load_encoder
    from selfsup.data import open_dataset
    from selfsup.eval.features import extract_features

    out_path = Path(out)
    if out_path.suffix not in (".safetensors", ".npz"):
        raise ConfigError(f"--out {out}: use a .safetensors or .npz file name")
    encoder, info = load_encoder(checkpoint)
    ds = open_dataset(data, int(info["image_size"]), strict=strict, progress=progress)
    feats = extract_features(encoder, ds.images, image_size=int(info["image_size"]), batch_size=batch_size,
                             precision=precision, progress=progress, desc="embed")
    write_embeddings(out_path, feats.numpy(), ds.paths, ds.labels, ds.classes, source=str(info["source"]))
    return {"n": int(feats.shape[0]), "dim": int(feats.shape[1]), "path": str(out_path), "skipped": len(ds.skipped)}


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
    """Read a file written by :func:`write_embeddings` (no pickle)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"embeddings file not found: {p} (write one with `selfsup embed`)")
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
