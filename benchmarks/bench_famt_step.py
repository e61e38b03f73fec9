"""FAMT-MAE vs MAE: training-step time at the same batch size (ViT-Tiny, 32 px, patch 4).

MAE masks 75% (16 of 64 patches visible; decoder sees all 64). FAMT-MAE masks 45% and throws 40%
(9 visible; decoder sees 9 + 29 = 38), so both the encoder and the decoder process fewer tokens.
A step = views already made -> forward -> backward -> AdamW step. Steps of the two methods are interleaved
and the median is reported. FAMT weights are refreshed once before timing (the refresh cost, one forward pass over the data every K epochs, is reported separately).

    .venv/bin/python benchmarks/bench_famt_step.py [--batch 128] [--steps 10] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from selfsup.augment.views import make_views
from selfsup.config import BackboneConfig
from selfsup.methods import Batch, Progress, registry
from selfsup.models.backbones import build_backbone


def setup(name: str, imgs: torch.Tensor, device: torch.device) -> tuple[Callable[[], None], float]:
    spec = registry()[name]
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(name="vit-tiny", patch_size=4), 32)
    m = spec.build(bb, spec.config_cls(), image_size=32).to(device)
    refresh_s = 0.0
    if hasattr(m, "refresh_weights"):
        t0 = time.perf_counter()
        m.refresh_weights(imgs)
        refresh_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, betas=(0.9, 0.95))
    views, params = make_views(imgs, m.view_recipe, torch.Generator().manual_seed(0), channels_last=False)
    batch = Batch(views=views, index=torch.arange(imgs.shape[0], device=device), params=params)
    prog = Progress(step=0, total_steps=1, epoch=0, steps_per_epoch=1)

    def step() -> None:
        out = m(batch, prog)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return step, refresh_s


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    imgs = torch.randint(0, 256, (args.batch, 32, 32, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(0)).to(device)
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch}, {args.steps} timed steps")
    step_mae, _ = setup("mae", imgs, device)
    step_famt, refresh = setup("famt-mae", imgs, device)
    for _ in range(2):  # warm-up
        step_mae()
        step_famt()
    # interleaved, median: both methods see the same machine load (shared CPUs are noisy)
    times: dict[str, list[float]] = {"mae": [], "famt": []}
    for _ in range(args.steps):
        times["mae"].append(timed(step_mae, device))
        times["famt"].append(timed(step_famt, device))
    t_mae, t_famt = statistics.median(times["mae"]), statistics.median(times["famt"])
    print(f"{'method':<10}{'s/step':>10}{'img/s':>10}")
    print(f"{'mae':<10}{t_mae:>10.4f}{args.batch / t_mae:>10.1f}")
    print(f"{'famt-mae':<10}{t_famt:>10.4f}{args.batch / t_famt:>10.1f}")
    print(f"famt-mae / mae step time: {t_famt / t_mae:.3f}")
    print(f"famt refresh of {args.batch} images: {refresh:.3f} s ({refresh / t_mae:.2f} MAE steps)")


if __name__ == "__main__":
    main()
