"""SimCLR training throughput on ResNet-18 (CIFAR stem, 32 px): selfsup's whole step vs lightly's recipe vs the roofline.

selfsup: one iteration of ``selfsup.training.loop.pretrain`` with the ``cpu-32px`` preset, through the same
functions (sampler indices -> sorted uint8 memmap gather -> ``make_views`` -> ``selfsup.training.step.train_step``:
autocast forward -> loss -> zero_grad/backward -> optimizer step -> after-step hook), data from the CIFAR-10
uint8 cache. ``--real-loop`` also runs the
real ``selfsup.pretrain`` for a few steps and reports its logged images/s.
lightly: its documented CIFAR-10 recipe (benchmarks/common.py): LightlyDataset over the JPEG folder +
SimCLRTransform(32, cj 0.5, no blur) + DataLoader(2 workers, batch 128), ResNetGenerator('resnet-18'),
SimCLRProjectionHead(512, 512, 128), NTXentLoss, SGD, fp32. Measured twice: in this process (which has
selfsup's malloc tuning and thread settings, see common.set_threads) and, as a user would run it, in a fresh
child process with glibc's malloc defaults and torch's default threads (``--lightly-child``); 'vs lightly' is
against the plain child when it ran.
roofline: FLOPs per pair (FlopCounterMode over one selfsup forward + backward) against the matmul peak,
measured in the same run, of the precision selfsup's ``precision: auto`` picks: bf16 on CPUs with native bf16
(AVX512-BF16 / AMX), else fp32 (emulated bf16 is slower than fp32, and timing its peak takes minutes).

Throughput is in pairs/s (source images/s; each pair = 2 views = 2 image-steps). Wall time AND process CPU
time are recorded: on a shared machine the wall time is inflated by other processes.

    .venv/bin/python benchmarks/bench_step.py [--steps 4] [--batch 256] [--compile] [--real-loop] [--profile] [--plain-first]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from selfsup.augment.views import make_views  # noqa: E402
from selfsup.config.build import build_config  # noqa: E402
from selfsup.config.presets import load_preset  # noqa: E402
from selfsup.methods import Batch, Progress  # noqa: E402
from selfsup.runtime import cpu_supports_bf16, resolve_precision  # noqa: E402
from selfsup.training.batches import EpochSampler, step_seed  # noqa: E402
from selfsup.training.optim import build_optimizer, lr_at, param_groups, set_lr  # noqa: E402
from selfsup.training.setup import build_method, resolve_config  # noqa: E402
from selfsup.training.step import train_step  # noqa: E402


def step_layer() -> dict[str, Any]:
    """The cpu-32px preset's SimCLR recipe on ResNet-18 with the CIFAR stem, the network the issue compares
    (the preset itself now trains a compact CNN)."""
    return {**load_preset("cpu-32px", None), "backbone": {"name": "resnet18", "small_stem": True}}


class OurStep:
    """One iteration of selfsup.training.loop.pretrain's loop (same calls, same order), minus logging/checkpoints."""

    def __init__(self, images: np.ndarray, batch: int, precision: str, compile: bool = False) -> None:
        # data: a valid path for the validation only; the step reads ``images`` (CIFAR-10's cache) directly
        cfg = build_config(config=step_layer(), data="builtin:synthetic", batch_size=batch, precision=precision,
                           compile=compile, device="cpu", seed=0)
        cfg, spec, _ = resolve_config(cfg)
        self.cfg, self.images = cfg, images
        self.device = torch.device("cpu")
        self.amp, _ = resolve_precision(precision, self.device)
        self.method, self.hooks = build_method(cfg, spec, self.amp, self.device)
        if cfg.train.channels_last:
            self.method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.opt = build_optimizer(cfg.optim, param_groups(self.method, cfg.optim.weight_decay or 0.0,
                                                           cfg.optim.exclude_norm_bias, self.hooks.param_groups()))
        self.model: Any = torch.compile(self.method) if compile else self.method
        self.sampler = EpochSampler(len(images), batch, 0)
        self.spe = self.sampler.steps_per_epoch
        self.step = 0
        self.method.train()

    def views(self) -> tuple[list[torch.Tensor], Any, torch.Tensor]:
        epoch, i = divmod(self.step, self.spe)
        idx = self.sampler.indices(epoch, i).sort().values
        images = torch.from_numpy(np.ascontiguousarray(self.images[idx.numpy()]))
        gen = torch.Generator().manual_seed(step_seed(0, self.step, 0))
        dtype = self.amp if self.amp is not None else torch.float32
        views, params = make_views(images, self.hooks.view_recipe, gen, channels_last=self.cfg.train.channels_last,
                                   dtype=dtype, colour=self.cfg.data.colour)
        return views, params, idx

    def train_on(self, views: list[torch.Tensor], params: Any, idx: torch.Tensor) -> float:
        epoch = self.step // self.spe
        prog = Progress(step=self.step, total_steps=100 * self.spe, epoch=epoch, steps_per_epoch=self.spe)
        set_lr(self.opt, lr_at(self.step, 100 * self.spe, self.spe, self.cfg.optim.lr or 0.0), self.cfg.optim.lr or 0.0)
        res = train_step(self.model, self.hooks, self.opt, Batch(views=views, index=idx, params=params), prog,
                         device=self.device, amp_dtype=self.amp, clip_grad=self.cfg.optim.clip_grad)
        self.step += 1
        return float(res.out.loss.detach())

    def __call__(self) -> None:
        self.train_on(*self.views())


def run_steps(step: Any, n: int, warmup: int) -> tuple[list[float], list[float]]:
    """(wall s, process CPU s) per step."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(n):
        w0, c0 = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


class LightlyStep:
    def __init__(self, root: Path | None, images: np.ndarray, batch: int = 128) -> None:
        torch.manual_seed(0)
        self.model = common.LightlySimCLR()
        self.opt = common.lightly_optimizer(self.model, batch)
        if root is not None:
            self.loader = common.lightly_folder_loader(root / "train", batch)
            self.source = "LightlyDataset(JPEG folder)"
        else:
            ds = common.PILDataset(images, common.lightly_transform(32))
            self.loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                                                      num_workers=2, persistent_workers=True)
            self.source = "PIL images in memory"
        self.it = iter(self.loader)
        self.model.train()

    def __call__(self) -> None:
        batch = next(self.it)
        (x0, x1) = batch[0]
        loss = self.model(x0, x1)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()


def lightly_child(steps: int, warmup: int) -> None:
    """Time lightly's recipe as its users run it: no selfsup malloc tuning, torch's default thread count."""
    images = common.cifar_uint8("train")[0]  # the memmapped cache the parent built (random pixels without CIFAR)
    ls = LightlyStep(common.ensure_cifar(), images)
    wall, cpu = run_steps(ls, steps, warmup + 1)
    print("LIGHTLY_JSON " + json.dumps({"wall": wall, "cpu": cpu, "source": ls.source,
                                         "threads": torch.get_num_threads()}), flush=True)


def run_lightly_child(steps: int, warmup: int) -> dict[str, Any]:
    env = {**os.environ, "SELFSUP_MALLOC_TUNING": "0"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--lightly-child", "--steps", str(steps),
           "--warmup", str(warmup)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("LIGHTLY_JSON ")), None)
    if out.returncode != 0 or line is None:
        raise SystemExit(f"bench_step: the plain lightly child failed (rc {out.returncode}): {out.stderr[-2000:]}")
    return dict(json.loads(line[len("LIGHTLY_JSON "):]))


def profile_ours(step: OurStep, n: int = 2) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(n):
            step()
    ka = prof.key_averages()
    top = ka.table(sort_by="self_cpu_time_total", row_limit=18)
    total = sum(e.self_cpu_time_total for e in ka)
    views_us = sum(e.cpu_time_total for e in ka if e.key in ("aten::grid_sampler_2d",))
    conv = [e for e in prof.events() if e.name in ("aten::mkldnn_convolution", "aten::convolution")
            and e.input_shapes and e.input_shapes[0]]
    bn = [e for e in prof.events() if e.name in ("aten::native_batch_norm", "aten::_native_batch_norm_legit",
                                                 "aten::_batch_norm_impl_index")]
    lines = [f"profiled {n} steps, total self CPU {total / 1e6:.1f} s; grid_sample {views_us / 1e6:.2f} s",
             f"conv calls: {len(conv)}; BN calls: {len(bn)}"]
    return "\n".join(lines) + "\n" + top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile of the method")
    ap.add_argument("--fp32", action="store_true", help="also measure selfsup in fp32")
    ap.add_argument("--real-loop", action="store_true", help="also run selfsup.pretrain for a few steps")
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of selfsup's step")
    ap.add_argument("--skip-lightly", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--plain-first", action="store_true",
                    help="time the plain lightly process before the in-process one (to check order effects)")
    ap.add_argument("--lightly-child", action="store_true",
                    help="internal: time lightly's recipe alone, print JSON (run in a clean child process)")
    args = ap.parse_args()
    if args.lightly_child:
        lightly_child(args.steps, args.warmup)
        return
    threads = common.set_threads()
    images, _, source = common.cifar_uint8("train")
    root = common.ensure_cifar()
    rows: list[dict[str, Any]] = []

    prec = "bf16" if cpu_supports_bf16() else "fp32"  # what precision=auto trains in here
    with common.note(f"{prec} / fp32 matmul peak"):
        peak_fp32 = common.matmul_peak(torch.float32)
        peak = common.matmul_peak(torch.bfloat16) if prec == "bf16" else peak_fp32
    print(f"matmul peak: {prec} {peak:.0f} GFLOP/s, fp32 {peak_fp32:.0f} GFLOP/s")

    ours = OurStep(images, args.batch, "auto")
    views, params, idx = ours.views()
    flops = common.count_flops(lambda: ours.train_on(views, params, idx))
    flops_pair = flops / args.batch
    roof_pairs = peak * 1e9 / flops_pair
    roof_col = f"% {prec} roofline"
    print(f"FLOPs per step {flops / 1e9:.1f} G = {flops_pair / 1e9:.2f} GFLOP per pair "
          f"({flops_pair / 2e9:.2f} per image-step); {prec} roofline {roof_pairs:.1f} pairs/s")

    def add(name: str, wall: list[float], cpu: list[float], pairs: int, notes: str = "") -> None:
        best, med = common.summary(wall)
        r = {"contender": name, "pairs/s (best)": pairs / best, "pairs/s (median)": pairs / med,
             "pairs/s (CPU time)": pairs * threads / float(np.median(cpu)) if cpu else float("nan"),
             roof_col: 100 * pairs / best / roof_pairs, "load": common.load(), "notes": notes}
        rows.append(r)
        print(f"{name:48s} {r['pairs/s (best)']:6.1f} pairs/s best, {r['pairs/s (median)']:6.1f} median, "
              f"{r['pairs/s (CPU time)']:6.1f} by CPU time; load {r['load']}", flush=True)

    with common.note("selfsup step (cpu-32px preset)"):
        add(f"selfsup whole step, {prec}, batch {args.batch}", *run_steps(ours, args.steps, args.warmup), args.batch,
            "uint8 cache + views + fwd/bwd + LARS")
    with common.note("selfsup model only (views made once)"):
        add(f"selfsup model only, {prec}, batch {args.batch}",
            *run_steps(lambda: ours.train_on(views, params, idx), args.steps, 0), args.batch,
            "fwd/bwd + LARS, no data/views")
    if args.fp32:
        with common.note("selfsup fp32"):
            o32 = OurStep(images, args.batch, "fp32")
            add(f"selfsup whole step, fp32, batch {args.batch}", *run_steps(o32, args.steps, args.warmup), args.batch)
            del o32
    if args.compile:
        with common.note("selfsup torch.compile"):
            oc = OurStep(images, args.batch, "auto", compile=True)
            add(f"selfsup whole step, {prec}, compile, batch {args.batch}",
                *run_steps(oc, args.steps, args.warmup + 1), args.batch, "2 warm-up steps (compilation)")
            del oc
    if not args.skip_lightly:
        def lightly_here() -> None:
            with common.note("lightly recipe (fp32, 2 workers, batch 128)"):
                ls = LightlyStep(root, images)
                add("lightly recipe, fp32, batch 128, in this process (selfsup's malloc tuning)",
                    *run_steps(ls, args.steps, args.warmup + 1), 128,
                    f"{ls.source} + SimCLRTransform, 2 workers; CPU time excludes workers")
                del ls

        def lightly_plain() -> None:
            with common.note("lightly recipe in a fresh process (glibc malloc defaults, torch default threads)"):
                child = run_lightly_child(args.steps, args.warmup)
                add("lightly recipe, plain process, fp32, batch 128", child["wall"], child["cpu"], 128,
                    f"{child['source']}; as a user runs it: own process, no selfsup malloc tuning, "
                    f"{child['threads']} torch threads")

        for arm in ((lightly_plain, lightly_here) if args.plain_first else (lightly_here, lightly_plain)):
            arm()
    if args.real_loop:
        with common.note("real selfsup.pretrain loop"):
            import selfsup

            with tempfile.TemporaryDirectory() as tmp:
                n = args.warmup + args.steps
                summ = selfsup.pretrain(str(root / "train") if root else None, config=step_layer(),
                                        out=f"{tmp}/run", max_steps=n, batch_size=args.batch,
                                        set=[f"train.log_every={n}", "train.progress=false"])
                ips = float(summ["images_per_s"] or 0.0)
            rows.append({"contender": f"selfsup.pretrain (real loop), {n} steps", "pairs/s (best)": ips,
                         "pairs/s (median)": ips, roof_col: 100 * ips / roof_pairs, "load": common.load(),
                         "notes": "images_per_s over all steps incl. the first"})
    prof = ""
    if args.profile:
        with common.note("torch.profiler over 2 selfsup steps"):
            prof = profile_ours(ours)
        print(prof)

    ref = next((r["pairs/s (best)"] for r in rows if r["contender"].startswith("lightly recipe, plain")), None)
    for r in rows:
        r["vs lightly"] = f"{r['pairs/s (best)'] / ref:.2f}x" if ref else ""
    cols = ["contender", "pairs/s (best)", "pairs/s (median)", "pairs/s (CPU time)", "vs lightly", roof_col,
            "load", "notes"]
    tab = common.table(rows, cols)
    print(tab)
    head = common.header({
        "data": source,
        f"{prec} matmul peak (measured now)": f"{peak:.0f} GFLOP/s (fp32 {peak_fp32:.0f})",
        "FLOPs (FlopCounterMode, fwd+bwd)": f"{flops_pair / 1e9:.2f} GFLOP per pair -> {prec} roofline "
                                             f"{roof_pairs:.1f} pairs/s",
        "targets": f">= 2.5x lightly, >= 80% of the {prec} roofline",
    })
    print(head)  # also with --no-write: command, date, machine, peak RSS for a hand-written RESULTS entry
    if not args.no_write:
        body = head + ("\n\npairs/s = source images per second (2 views each). 'CPU time' = pairs x threads / process CPU "
                 "seconds: an estimate for an idle machine when the wall clock is inflated by load.\n\n" + tab)
        if prof:
            body += "\n\nProfile of the selfsup step (top ops by self CPU time):\n\n```\n" + prof.strip() + "\n```"
        common.update_section("Training step: SimCLR ResNet-18 32 px (bench_step.py)", body)


if __name__ == "__main__":
    main()
