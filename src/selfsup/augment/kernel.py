"""One fused CPU pass for the hot part of :func:`selfsup.augment.views.make_views`: crop + flip + exact colour jitter +
grayscale, per sample, compiled with numba.

Why our own kernel: on a CPU the torch path (the ops of :mod:`selfsup.augment.ops`) is ~60 elementwise
passes per view at 32 px (the HSV hue round trip alone is ~25), each over a slice of ~100 samples, and what it
costs is op dispatch and memory traffic, not arithmetic (benchmarks/RESULTS.md, augmentation). Here each output
sample is made in one loop nest from the uint8 source: the bilinear crop writes a 12 KiB [3, S, S] slab, and
the colour ops of that sample run on it in its own random order while it sits in L1. The random parameters are
drawn by :mod:`selfsup.augment.views` exactly as for the torch path, and every op computes what its torch
counterpart in ``ops`` computes (same formulas, same order; equal up to float rounding, see
tests/test_views.py), so the two backends give the same views for the same generator state. CUDA and
``colour="linear"`` keep the torch path (``make_views(backend=...)``). Blur and solarize (BYOL, DINO) stay torch ops after the kernel.

Compilation: the first call in a fresh install compiles the kernel (once per source dtype, uint8 and float32;
seconds, see benchmarks/RESULTS.md); numba caches the machine code beside this file (``cache=True``), so later
processes only load it.

Threads: the function releases the GIL; :func:`crop_jitter_gray` splits the samples over
``torch.get_num_threads()`` Python threads (so DDP's and ``set_num_threads``' settings apply, and numba's own
threading layer, which would compete with torch's OpenMP pool, is never started).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit

from selfsup.augment.colour import GRAY_WEIGHTS

# torchvision's grayscale weights as float32, like the torch path's scalar ops
_W_R, _W_G, _W_B = (np.float32(w) for w in GRAY_WEIGHTS)


@njit(nogil=True, cache=True)
def _clamp01(v):
    return min(max(v, np.float32(0.0)), np.float32(1.0))


@njit(nogil=True, cache=True)
def _luma(r, g, b):
    return _W_R * r + _W_G * g + _W_B * b


@njit(nogil=True, cache=True)
def _samples(src, hw, scale, rows, boxes, flip, jit, order, factors, active, gray, size, norm, out32, out16, nhwc,
             lo, hi):
    """Samples lo..hi-1 of the output from ``src`` [B, H, W, 3] (uint8 or float32) times ``scale`` (float32:
    1 / 255 for uint8).

    hw [B, 2] int64: the height and width of each source image, its top-left part of ``src`` (a padded
    batch of native-aspect images; the rest is never read: sampling clamps to the image's own border);
    rows [N] int64: source image of each sample; boxes [N, 4] float32 (top, left, height, width as
    fractions); flip / jit / gray [N] bool; order [N, 4] int64 (op at each position: 0 brightness,
    1 contrast, 2 saturation, 3 hue); factors [4, N] float32; active [4] bool (strength > 0); size: the
    output side. Output: with ``norm`` [0, 3], ``out32`` [N, 3, S, S] in [0, 1]; with ``norm`` [2, 3]
    (1 / std, -mean / std), normalised into ``out16`` (bf16 bits, when it is not empty) or ``out32``,
    laid out [N, S, S, 3] if ``nhwc`` else [N, 3, S, S].
    """
    npix = size * size
    one, zero = np.float32(1.0), np.float32(0.0)
    two = np.float32(2.0)
    x0 = np.empty(size, np.uintp)  # unsigned: no negative-index wraparound checks in the loops
    x1 = np.empty(size, np.uintp)
    ax = np.empty(size, np.float32)  # weight of x0 (x1 gets 1 - ax)
    y0 = np.empty(size, np.uintp)
    y1 = np.empty(size, np.uintp)
    ay = np.empty(size, np.float32)
    tmp = np.empty((3, src.shape[1], size), np.float32)  # x-interpolated source rows
    done = np.full(src.shape[1], -1, np.int64)  # done[y] == i: row y of sample i is in tmp
    o = np.empty((3, size, size), np.float32)  # the sample being made
    flat = np.empty(3 * npix, np.float32)  # its normalised values, pixel-major when nhwc
    bits = flat.view(np.uint32)
    for i in range(lo, hi):
        # --- crop + flip: ops.resized_crop (grid_sample, bilinear, align_corners=False, border) ---
        r = rows[i]
        n_src_h, n_src_w = hw[r, 0], hw[r, 1]
        top, left, bh, bw = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        sx = -bw if flip[i] else bw
        ox, oy = two * left + bw - one, two * top + bh - one
        for j in range(size):
            c = np.float32(j * 2 + 1) / np.float32(size) - one  # output pixel centre in [-1, 1]
            # grid value, then grid_sample's unnormalise and border clip
            ix = ((sx * c + ox + one) * np.float32(n_src_w) - one) / two
            ix = min(max(ix, zero), np.float32(n_src_w - 1))
            iy = ((bh * c + oy + one) * np.float32(n_src_h) - one) / two
            iy = min(max(iy, zero), np.float32(n_src_h - 1))
            fx, fy = np.floor(ix), np.floor(iy)
            x0[j], y0[j] = int(fx), int(fy)
            x1[j], y1[j] = min(int(fx) + 1, n_src_w - 1), min(int(fy) + 1, n_src_h - 1)
            ax[j], ay[j] = one - (ix - fx), one - (iy - fy)
        # separable: first along x for the source rows the output uses (gathers), then along y (contiguous)
        for py in range(2 * size):
            yy = y0[py // 2] if py % 2 == 0 else y1[py // 2]
            if done[yy] == i:  # rows repeat when the crop is enlarged
                continue
            done[yy] = i
            for px in range(size):
                wx0 = ax[px] * scale
                wx1 = (one - ax[px]) * scale
                for ch in range(3):
                    tmp[ch, yy, px] = (np.float32(src[r, yy, x0[px], ch]) * wx0
                                       + np.float32(src[r, yy, x1[px], ch]) * wx1)
        for ch in range(3):
            for py in range(size):
                wy0, wy1 = ay[py], one - ay[py]
                t0, t1, orow = tmp[ch, y0[py]], tmp[ch, y1[py]], o[ch, py]
                for px in range(size):
                    orow[px] = t0[px] * wy0 + t1[px] * wy1
        rr, gg, bb = o[0].reshape(npix), o[1].reshape(npix), o[2].reshape(npix)
        # --- colour jitter in this sample's order (ops._brightness_ ... _hue_) ---
        if jit[i]:
            for pos in range(4):
                op = order[i, pos]
                if active[op]:
                    f = factors[op, i]
                    if op == 0:
                        _brightness(rr, gg, bb, f)
                    elif op == 1:
                        _contrast(rr, gg, bb, f)
                    elif op == 2:
                        _saturation(rr, gg, bb, f)
                    else:
                        _hue(rr, gg, bb, f)
        if gray[i]:  # random grayscale (ops.to_grayscale)
            for p in range(npix):
                gv = _luma(rr[p], gg[p], bb[p])
                rr[p] = gv
                gg[p] = gv
                bb[p] = gv
        # --- output: as it is, or normalised (ops.normalize) in the caller's layout and dtype ---
        if norm.shape[0] == 0:
            out32[i] = o
            continue
        for ch in range(3):
            mul, add = norm[0, ch], norm[1, ch]
            plane = o[ch].reshape(npix)
            if nhwc:
                for p in range(npix):
                    flat[p * 3 + ch] = plane[p] * mul + add
            else:
                for p in range(npix):
                    flat[ch * npix + p] = plane[p] * mul + add
        if out16.shape[0] == 0:
            out32[i].reshape(3 * npix)[:] = flat
        else:  # float32 -> bfloat16 bits, rounding to nearest even like torch (values are finite)
            dst = out16[i].reshape(3 * npix)
            for p in range(3 * npix):
                u = bits[p]
                dst[p] = np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))

# One function per colour op, on the three channel planes of one sample (1-D, npix). Straight-line bodies
# (selects, no branches in the pixel loops) so LLVM vectorises them.


@njit(nogil=True, cache=True)
def _brightness(rr, gg, bb, f):
    for p in range(rr.shape[0]):  # clamp(f x)
        rr[p] = _clamp01(rr[p] * f)
        gg[p] = _clamp01(gg[p] * f)
        bb[p] = _clamp01(bb[p] * f)


@njit(nogil=True, cache=True)
def _contrast(rr, gg, bb, f):
    acc = 0.0  # float64 sum (torch's fp32 mean sums pairwise: equal up to rounding)
    for p in range(rr.shape[0]):
        acc += _luma(rr[p], gg[p], bb[p])
    shift = (np.float32(1.0) - f) * np.float32(acc / rr.shape[0])
    for p in range(rr.shape[0]):  # clamp(f x + (1 - f) mean_gray)
        rr[p] = _clamp01(rr[p] * f + shift)
        gg[p] = _clamp01(gg[p] * f + shift)
        bb[p] = _clamp01(bb[p] * f + shift)


@njit(nogil=True, cache=True)
def _saturation(rr, gg, bb, f):
    # clamp(torch.lerp(gray, x, f)); lerp's two formulas (ATen picks one by |weight| < 0.5)
    one = np.float32(1.0)
    if abs(f) < 0.5:
        for p in range(rr.shape[0]):
            gv = _luma(rr[p], gg[p], bb[p])
            rr[p] = _clamp01(gv + f * (rr[p] - gv))
            gg[p] = _clamp01(gv + f * (gg[p] - gv))
            bb[p] = _clamp01(gv + f * (bb[p] - gv))
    else:
        for p in range(rr.shape[0]):
            gv = _luma(rr[p], gg[p], bb[p])
            rr[p] = _clamp01(rr[p] - (rr[p] - gv) * (one - f))
            gg[p] = _clamp01(gg[p] - (gg[p] - gv) * (one - f))
            bb[p] = _clamp01(bb[p] - (bb[p] - gv) * (one - f))


@njit(nogil=True, cache=True)
def _sector(k, chroma, maxc):
    k = k - np.float32(6.0) * np.floor(k * np.float32(1.0 / 6.0))  # mod 6
    w = min(max(min(k, np.float32(4.0) - k), np.float32(0.0)), np.float32(1.0))
    return maxc - w * chroma


@njit(nogil=True, cache=True)
def _hue(rr, gg, bb, f):
    # ops._hue_: hue in sixths from the max channel, shifted, back with c_n = V - C clamp(min(k, 4 - k), 0, 1)
    shift6 = np.float32(6.0) * f
    for p in range(rr.shape[0]):
        rv, gv, bv = rr[p], gg[p], bb[p]
        maxc = max(max(rv, gv), bv)
        minc = min(min(rv, gv), bv)
        chroma = maxc - minc
        inv = np.float32(1.0) / max(chroma, np.float32(1e-12))
        h_r = (gv - bv) * inv
        h_g = (bv - rv) * inv + np.float32(2.0)
        h_b = (rv - gv) * inv + np.float32(4.0)
        h6 = (h_r if maxc == rv else (h_g if maxc == gv else h_b)) + shift6
        rr[p] = _sector(h6 + np.float32(5.0), chroma, maxc)
        gg[p] = _sector(h6 + np.float32(3.0), chroma, maxc)
        bb[p] = _sector(h6 + np.float32(1.0), chroma, maxc)


_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, executor)
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool with at least ``workers`` threads (started lazily by the executor). Made again after a
    fork or when more threads are wanted; a replaced pool is never shut down, so a concurrent caller that
    still holds it keeps working (its idle threads exit when it is garbage-collected)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] < workers:
            _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="selfsup-views"))
        return _pool[2]


def warm_up() -> None:
    """Compile (or load from numba's on-disk cache) the kernel for uint8 sources: slow on a fresh install,
    quick from the cache. ``pretrain`` calls it before its first step."""
    one = torch.ones(1, dtype=torch.bool)
    crop_jitter_gray(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), 4, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), one, one,
                     torch.arange(4)[None], torch.ones(4, 1), (True,) * 4, one)


def _compiles() -> int:
    return sum(_samples.stats.cache_misses.values())


def crop_jitter_gray(
    src: torch.Tensor, size: int, boxes: torch.Tensor, flip: torch.Tensor, jit: torch.Tensor, order: torch.Tensor,
    factors: torch.Tensor, active: tuple[bool, ...], gray: torch.Tensor,
    finish: tuple[tuple[float, ...], tuple[float, ...], bool, torch.dtype] | None = None,
    sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """[N, 3, size, size] views: sample i is source row ``i % B`` of ``src`` [B, H, W, 3] (CPU, contiguous,
    uint8 or float32 in [0, 1]; with ``sizes`` [B, 2], image b is the top-left ``sizes[b]`` part of row b and
    ``boxes`` are fractions of that part), cropped to ``boxes[i]`` and flipped by ``flip[i]``, then (if ``jit[i]``)
    colour-jittered in the op order ``order[i]`` with ``factors[:, i]``, then grayed if ``gray[i]``: what
    ``resized_crop`` + ``colour_jitter_`` + ``to_grayscale`` compute, in one pass (module docstring).

    Without ``finish`` the result is float32 in [0, 1], contiguous. ``finish = (mean, std, channels_last,
    dtype)`` (dtype float32 or bfloat16) also normalises and writes the final layout and dtype, as
    ``ops.normalize`` + ``ops.to_layout`` would: no further pass over the views.
    """
    n = boxes.shape[0]
    b = src.shape[0]
    if finish is None:
        out, nhwc, bf16 = torch.empty(n, 3, size, size, dtype=torch.float32), False, False
        norm = np.zeros((0, 3), np.float32)
    else:
        mean, std, nhwc, dtype = finish
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"crop_jitter_gray: finish dtype must be float32 or bfloat16, got {dtype}")
        bf16 = dtype == torch.bfloat16
        shape = (n, size, size, 3) if nhwc else (n, 3, size, size)
        out = torch.empty(shape, dtype=torch.int16 if bf16 else torch.float32)
        s64, m64 = np.asarray(std, np.float64), np.asarray(mean, np.float64)
        norm = np.stack([1.0 / s64, -m64 / s64]).astype(np.float32)  # ops.normalize's constants
    none32 = np.zeros((0, 3, 1, 1), np.float32)
    none16 = np.zeros((0, 3, 1, 1), np.uint16)
    out_np = out.numpy()
    src_np = src.contiguous().numpy()  # (a strided source would compile another variant)
    if not src_np.flags.writeable:  # e.g. a read-only memmap: numba would compile a separate read-only variant
        src_np = src_np.copy()
    if sizes is None:
        hw = np.tile(np.array([[src.shape[1], src.shape[2]]], np.int64), (b, 1))
    else:
        hw = sizes.to(torch.int64).contiguous().numpy()
    args = (
        src_np,
        hw,
        np.float32(1.0 / 255.0 if src.dtype == torch.uint8 else 1.0),
        np.arange(n, dtype=np.int64) % b,
        boxes.to(torch.float32).contiguous().numpy(),
        flip.contiguous().numpy(),
        jit.contiguous().numpy(),
        order.to(torch.int64).contiguous().numpy(),
        factors.to(torch.float32).contiguous().numpy(),
        np.array(active, dtype=np.bool_),
        gray.contiguous().numpy(),
        size,
        norm,
        none32 if bf16 else out_np,
        out_np.view(np.uint16) if bf16 else none16,
        nhwc,
    )
    compiled_before, t0 = _compiles(), time.perf_counter()
    if n:
        threads = max(1, min(torch.get_num_threads(), n // 16))
        if threads == 1:
            _samples(*args, 0, n)
        else:
            cuts = np.linspace(0, n, threads + 1).astype(int).tolist()
            pool = _executor(torch.get_num_threads() - 1)  # sized by the setting, not by n: no churn
            futures = [pool.submit(_samples, *args, lo, hi) for lo, hi in zip(cuts[1:-1], cuts[2:])]
            _samples(*args, cuts[0], cuts[1])  # the first share in this thread: one wake-up fewer
            for fut in futures:
                fut.result()
    if _compiles() > compiled_before and os.environ.get("RANK", "0") == "0":  # once per install and source dtype
        print(f"views: compiled the fused CPU view kernel in {time.perf_counter() - t0:.0f} s (numba; cached in "
              f"{_samples.stats.cache_path} for later runs)", file=sys.stderr)
    if bf16:
        out = out.view(torch.bfloat16)
    return out.permute(0, 3, 1, 2) if nhwc else out
