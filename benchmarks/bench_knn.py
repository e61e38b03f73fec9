"""kNN evaluation time and embedding throughput, side by side in one run.

1. ``selfsup.eval.knn.knn_predict`` (k=200, T=0.1) over 50,000 x 512 train and 10,000 x 512 test features
   (random, L2-normalised inside), torch path and faiss path. Target: < 5 s.
2. ``selfsup.eval.features.extract_features`` on ResNet-18 (CIFAR stem, 32 px, bf16, channels_last) against
   the inference roofline (forward FLOPs per image x bf16 matmul peak measured in the same run).

    .venv/bin/python benchmarks/bench_knn.py [--train 50000] [--test 10000] [--embed 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from selfsup.config import BackboneConfig  # noqa: E402
from selfsup.eval.features import extract_features  # noqa: E402
from selfsup.eval.knn import faiss_available, knn_predict  # noqa: E402
from selfsup.models.backbones import build_backbone  # noqa: E402
from selfsup.runtime import cpu_supports_bf16  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=50_000)
    ap.add_argument("--test", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--embed", type=int, default=4096, help="images to embed for the throughput row")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    common.set_threads()
    rows: list[dict[str, Any]] = []
    g = torch.Generator().manual_seed(0)
    tr = torch.randn(args.train, args.dim, generator=g)
    te = torch.randn(args.test, args.dim, generator=g)
    y = torch.randint(0, 10, (args.train,), generator=g)

    auto = "bf16" if cpu_supports_bf16() else "fp32"  # what precision=auto runs in here
    with common.note(f"{auto} matmul peak"):
        peak = common.matmul_peak(torch.bfloat16 if auto == "bf16" else torch.float32)

    paths = [("torch", False)] + ([("faiss", True)] if faiss_available() else [])
    for name, use_faiss in paths:
        with common.note(f"kNN {name}"):
            def run_knn(uf: bool = use_faiss) -> None:
                knn_predict(tr, y, te, k=200, temperature=0.1, num_classes=10, use_faiss=uf)

            ts = common.timed(run_knn, args.repeats, warmup=0)
        best, med = common.summary(ts)
        rows.append({"task": f"kNN {args.train:,}x{args.dim} vs {args.test:,} test, k=200, {name}",
                     "best": f"{best:.2f} s", "median": f"{med:.2f} s", "vs target": f"{'OK' if best < 5 else 'MISS'} (< 5 s)",
                     "load": common.load()})
        print(rows[-1], flush=True)

    images, _, _ = common.cifar_uint8("test", limit=args.embed)
    torch.manual_seed(0)
    enc = build_backbone(BackboneConfig(name="resnet18", small_stem=True), 32).to(memory_format=torch.channels_last)
    enc.eval()
    x = torch.randn(8, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        fwd = common.count_flops(lambda: enc(x)) / 8
    roof = peak * 1e9 / fwd
    for precision in ("auto", "fp32"):
        with common.note(f"extract_features {precision}"):
            extract_features(enc, images[:256], image_size=32, precision=precision)  # warm-up
            def run_embed(p: str = precision) -> None:
                extract_features(enc, images, image_size=32, precision=p)

            ts = common.timed(run_embed, max(1, args.repeats - 1), warmup=0)
        best, med = common.summary(ts)
        ips = len(images) / best
        rows.append({"task": f"extract_features ResNet-18 32 px, {precision} ({auto if precision == 'auto' else 'fp32'})",
                     "best": f"{ips:,.0f} img/s", "median": f"{len(images) / med:,.0f} img/s",
                     "vs target": f"{100 * ips / roof:.0f}% of {auto} roofline ({roof:,.0f} img/s)",
                     "load": common.load()})
        print(rows[-1], flush=True)

    tab = common.table(rows, ["task", "best", "median", "vs target", "load"])
    print(tab)
    if not args.no_write:
        body = common.header({
            f"{auto} matmul peak (measured now)": f"{peak:.0f} GFLOP/s",
            "forward FLOPs (FlopCounterMode)": f"{fwd / 1e9:.3f} GFLOP per 32 px image",
            "features": f"random N(0, 1) [{args.train}, {args.dim}] / [{args.test}, {args.dim}]; images: CIFAR-10 test "
                        f"({len(images)})",
        })
        body += "\n\n" + tab + ("\n\nFull 50k + 10k extraction time = 60,000 / img/s. "
                                "kNN paths give the same neighbours (tests/test_eval.py).")
        common.update_section("kNN evaluation and embedding throughput (bench_knn.py)", body)


if __name__ == "__main__":
    main()
