"""Export a pretrained encoder to TorchScript or ONNX, checked against the PyTorch model (``selfsup export``).

The exported model is the encoder alone, in eval mode and fp32 on the CPU:

    input   ``images``    float32 [B, 3, S, S]: RGB in [0, 1], normalised with the ImageNet mean/std
                          (what :func:`selfsup.augment.ops.eval_transform` produces; S = the run's image size)
    output  ``features``  float32 [B, num_features], the pooled features ``selfsup embed`` writes

The batch dimension is dynamic. A JSON file beside the export (``FILE.json``) records the image size, mean,
std, feature size and source checkpoint. After writing, the exported file is loaded back and run on a fixed
random batch of a different batch size than the one it was traced with; its output must equal the PyTorch
encoder's within ``atol + rtol * max|output|``, or the export fails. The ONNX check needs ``onnxruntime``
(``pip install 'selfsup[onnx]'``); without it the file is written and the result says the check was skipped.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import ConfigError

FORMATS = ("torchscript", "onnx")
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}
ONNX_OPSET = 18


def _check_output(name: str, got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> float:
    if tuple(got.shape) != tuple(want.shape):
        raise ConfigError(f"{name}: exported model returns shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
    diff = float((got.float() - want.float()).abs().max())
    tol = atol + rtol * float(want.abs().max())
    if not diff <= tol:
        raise ConfigError(f"{name}: exported model differs from PyTorch by {diff:.3g} (> {tol:.3g}); "
                          "try the other --format")
    return diff


def _export_torchscript(encoder: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    from selfsup.checkpoint import atomic_write

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about Python control flow on shapes (fixed per size)
        traced = torch.jit.trace(encoder, example, check_trace=False)
    def write(p: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream but still loads
            torch.jit.save(traced, p)

    atomic_write(path, write)


def _export_onnx(encoder: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    from selfsup.checkpoint import atomic_write

    def write(p: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                # the TorchScript-based exporter: fast and needs no onnxscript
                torch.onnx.export(encoder, (example,), p, input_names=["images"], output_names=["features"],
                                  dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                                  opset_version=ONNX_OPSET, dynamo=False)
            except Exception:  # noqa: BLE001 - a torch without it: the torch.export-based exporter
                torch.onnx.export(encoder, (example,), p, input_names=["images"], output_names=["features"],
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=ONNX_OPSET,
                                  dynamo=True)

    atomic_write(path, write)


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor | None:
    try:
        import onnxruntime as ort  # type: ignore[import-not-found]
    except ImportError:
        return None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return torch.from_numpy(out)


def export_encoder(checkpoint: str, out: str | Path, *, format: str = "onnx", atol: float = 1e-4,
                   rtol: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Export the encoder in ``checkpoint`` to ``out`` and check it (see the module docstring).

    Returns ``{"path", "format", "image_size", "num_features", "max_abs_diff" (None when not checked),
    "checked_with", "metadata"}``.
    """
    from selfsup.augment.recipes import IMAGENET_MEAN, IMAGENET_STD
    from selfsup.checkpoint import atomic_write_text, load_encoder

    if format not in FORMATS:
        raise ConfigError(f"--format {format}: choose one of {', '.join(FORMATS)}")
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out {out} is a folder; pass a file name such as encoder{SUFFIX[format]}")
    encoder, info = load_encoder(checkpoint)
    encoder = encoder.float().cpu().eval()
    size = int(info["image_size"])
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(2, 3, size, size, generator=gen)
    check_x = torch.randn(3, 3, size, size, generator=gen)  # another batch size: the batch axis is dynamic
    with torch.no_grad():
        want = encoder(check_x)
    if format == "torchscript":
        _export_torchscript(encoder, example, path)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            got: torch.Tensor | None = torch.jit.load(str(path), map_location="cpu")(check_x)
        checked_with = "torch.jit.load"
    else:
        try:
            import onnx  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            raise ConfigError("--format onnx needs the onnx package: pip install 'selfsup[onnx]' "
                              "(or use --format torchscript)") from None
        _export_onnx(encoder, example, path)
        got = _run_onnx(path, check_x)
        checked_with = "onnxruntime" if got is not None else "not checked: onnxruntime is not installed"
    diff = _check_output(str(path), got, want, atol, rtol) if got is not None else None
    meta = {"format": format, "input": "images: float32 [B, 3, S, S], RGB in [0, 1] normalised with mean/std",
            "output": "features: float32 [B, num_features]", "image_size": size, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "num_features": int(want.shape[1]), "source": str(info["source"]),
            "backbone": info["backbone"].get("name")}
    atomic_write_text(Path(str(path) + ".json"), json.dumps(meta, indent=2))
    return {"path": str(path), "format": format, "image_size": size, "num_features": int(want.shape[1]),
            "max_abs_diff": diff, "checked_with": checked_with, "metadata": str(path) + ".json"}
