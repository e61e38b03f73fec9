"""Native aspect ratio end to end (issue 23): storage, crop boxes per image size, both view backends, the
evaluation protocol, old caches, extreme and tiny images, SIGTERM during the first decode.

Real photos: scikit-image is not a dependency, so the "photos" here are synthetic non-square images written
with PIL (gradients and colour bands at 4:3, 3:2, 1:2, 3:1 and 1:4).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from torchvision.transforms import RandomResizedCrop

from selfsup.augment.masking import weights_to_view
from selfsup.augment.ops import eval_transform, normalize, resized_crop
from selfsup.augment.recipes import IMAGENET_MEAN, IMAGENET_STD, ViewRecipe, ViewSpec, simclr_recipe
from selfsup.augment.sampling import frame_chunks
from selfsup.augment.views import make_views
from selfsup.data import RaggedImages, gather, open_dataset
from selfsup.data import cache as cache_mod
from selfsup.data.images import pad_rows

SRC = str(Path(__file__).resolve().parents[1] / "src")

# (height, width) per aspect w:h = 1:1, 4:3, 1:2, 3:1, 1:4
ASPECTS = {"1:1": (96, 96), "4:3": (72, 96), "1:2": (128, 64), "3:1": (48, 144), "1:4": (160, 40)}


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _gradient(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // max(1, w - 1), yy * 255 // max(1, h - 1), (xx + yy) * 255 // (h + w)], -1).astype(
        np.uint8
    )


def _open(path: Path, size: int = 16, **kw):
    kw.setdefault("progress", False)
    return open_dataset(str(path), size, **kw)


# ------------------------------------------------------------------------------------------- storage


def test_rows_keep_their_aspect_and_index(tmp_path: Path) -> None:
    shapes = {"a.png": (30, 40), "b.png": (60, 30), "c.png": (5, 7), "d.png": (20, 20), "e.png": (10, 300)}
    for name, (h, w) in shapes.items():
        _save(tmp_path / "img" / name, _gradient(h, w))
    ds = _open(tmp_path / "img", 16)
    assert ds.native and len(ds) == 5
    # shorter side 16, longer side in proportion (rounded); 1:30 is cut to its centre 1:10
    expect = {"a.png": (16, 21), "b.png": (32, 16), "c.png": (16, 22), "d.png": (16, 16), "e.png": (16, 160)}
    got = {os.path.basename(p): tuple(int(v) for v in s) for p, s in zip(ds.paths, ds.sizes())}
    assert got == expect
    # the stored row is the whole image resized (PIL bicubic of the same box), not a centre square
    i = [os.path.basename(p) for p in ds.paths].index("a.png")
    ref = np.asarray(Image.fromarray(_gradient(30, 40)).resize((21, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(ds.images.row(i), ref)
    # the array view gives the centre S x S squares (what square-only code reads)
    sq = np.asarray(ds.images)
    assert sq.shape == (5, 16, 16, 3)
    np.testing.assert_array_equal(sq[i], ref[:, 2:18])
    # the extreme panorama (10 x 300) keeps its centre 10 x 100: source columns 100 ... 199
    j = [os.path.basename(p) for p in ds.paths].index("e.png")
    red = ds.images.row(j)[8, :, 0].astype(int)
    assert abs(red[0] - 100 * 255 // 299) <= 3 and abs(red[-1] - 199 * 255 // 299) <= 3


@pytest.mark.integration  # encodes and decodes a 4000 x 3000 JPEG: about a second
def test_tiny_and_huge_images_load_and_one_pixel_is_skipped(tmp_path: Path) -> None:
    _save(tmp_path / "img" / "tiny.png", _gradient(5, 7))  # 7 x 5 (w x h): upscaled
    _save(tmp_path / "img" / "huge.jpg", _gradient(3000, 4000), quality=90)  # 4000 x 3000 photo size
    _save(tmp_path / "img" / "one.png", np.zeros((1, 1, 3), np.uint8))  # 1 pixel: skipped, counted
    ds = _open(tmp_path / "img", 24)
    names = [os.path.basename(p) for p in ds.paths]
    assert names == ["huge.jpg", "tiny.png"]
    assert [tuple(int(v) for v in s) for s in ds.sizes()] == [(24, 32), (24, 34)]
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("one.png") and "1x1" in ds.skipped[0][1]
    big = ds.images.row(0).astype(int)  # the gradient survives the DCT-domain draft + resize
    assert abs(big[12, 0, 0] - 0) < 12 and abs(big[12, -1, 0] - 255) < 12


def test_square_folder_is_dense_and_unchanged(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        _save(tmp_path / "sq" / f"{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    ds = _open(tmp_path / "sq", 32)
    assert not ds.native and isinstance(ds.images, np.memmap) and ds.images.shape == (4, 32, 32, 3)
    x, sizes = gather(ds.images, np.arange(4))
    assert sizes is None and x.shape == (4, 32, 32, 3)
    assert [cache_mod.default_cache_size(s) for s in (28, 32, 64, 96, 128, 224)] == [28, 32, 64, 96, 146, 256]


def test_old_format_cache_is_rebuilt_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "img"
    for i, (h, w) in enumerate([(30, 40), (40, 30)]):
        _save(folder / f"{i}.png", _gradient(h, w))
    cdir = tmp_path / "cache"
    cdir.mkdir()
    entries = [(n, (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns) for n in ("0.png", "1.png")]
    # a version-1 cache of the same files: 2 squares of 16 px, as the old code wrote it
    old_key = cache_mod.cache_key(16, entries, version=1)
    (cdir / f"{old_key}.u8").write_bytes(np.full((2, 16, 16, 3), 7, np.uint8).tobytes())
    (cdir / f"{old_key}.json").write_text(json.dumps({
        "version": 1, "shape": [2, 16, 16, 3], "source": str(folder), "classes": None, "labels": None,
        "paths": ["0.png", "1.png"], "skipped": []}))
    # and a file at the new key that claims version 1 (e.g. written by an old build): must not be trusted
    new_key = cache_mod.cache_key(16, entries)
    (cdir / f"{new_key}.u8").write_bytes(np.full((2, 16, 16, 3), 7, np.uint8).tobytes())
    (cdir / f"{new_key}.json").write_text(json.dumps({
        "version": 1, "shape": [2, 16, 16, 3], "sizes": [[16, 16], [16, 16]], "side": 16, "source": str(folder),
        "classes": None, "labels": None, "paths": ["0.png", "1.png"], "skipped": []}))
    ds = _open(folder, 16, cache_dir=str(cdir))
    err = capsys.readouterr().err
    assert "older format" in err and err.count("\n") == 1
    assert [tuple(int(v) for v in s) for s in ds.sizes()] == [(16, 21), (21, 16)]
    assert not (ds.images.row(0) == 7).all()
    assert json.loads((cdir / f"{new_key}.json").read_text())["version"] == cache_mod.FORMAT_VERSION


def test_stale_temporaries_of_dead_builds_are_removed(tmp_path: Path) -> None:
    _save(tmp_path / "img" / "a.png", _gradient(20, 30))
    cdir = tmp_path / "cache"
    cdir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = cache_mod.owner_tag().rsplit("-", 1)[0]
    stale = cdir / f".0123456789abcdef.{host}-{dead.pid}.xyz.u8.tmp"  # this host, process gone
    stale.write_bytes(b"half")
    live = cdir / f".0123456789abcdef.{host}-{os.getppid()}.xyz.u8.tmp"  # a live process: left alone
    live.write_bytes(b"busy")
    foreign = cdir / ".0123456789abcdef.otherhost-1.xyz.u8.tmp"  # another host: judged by age only
    foreign.write_bytes(b"remote")
    old_foreign = cdir / ".0123456789abcdef.otherhost-2.xyz.u8.tmp"
    old_foreign.write_bytes(b"remote, a day old")
    day = time.time() - 2 * 24 * 3600
    os.utime(old_foreign, (day, day))
    _open(tmp_path / "img", 16, cache_dir=str(cdir))
    assert not stale.exists() and live.exists() and foreign.exists() and not old_foreign.exists()


# ------------------------------------------------------------------------------------ crop geometry


def _box_stats(boxes: torch.Tensor, h: int, w: int) -> dict[str, np.ndarray]:
    """boxes [N, 4] fractions (top, left, height, width) -> area fraction, log aspect, centre x / y."""
    b = boxes.double().numpy()
    return {
        "area": b[:, 2] * b[:, 3],
        "log_aspect": np.log((b[:, 3] * w) / (b[:, 2] * h)),
        "cx": b[:, 1] + b[:, 3] / 2,
        "cy": b[:, 0] + b[:, 2] / 2,
    }


def _torchvision_stats(h: int, w: int, n: int, scale: tuple[float, float], seed: int) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    img = torch.empty(3, h, w)
    rows = [RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
    t = torch.tensor(rows, dtype=torch.float64)  # (top, left, height, width) in pixels
    return _box_stats(t / torch.tensor([h, w, h, w], dtype=torch.float64), h, w)


@pytest.mark.integration  # 10,000 boxes per backend through full-size padded batches: seconds
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_crop_boxes_match_torchvision_per_aspect(backend: str) -> None:
    """The real make_views path on one padded batch of all five aspects: for each aspect the boxes' area,
    log aspect, centre x and centre y follow torchvision's get_params for that (h, w).

    torchvision rounds each box to whole pixels and ours is continuous; the fractions' distribution is
    otherwise the same for (h, w) and (k h, k w). So: (1) a two-sample KS test (1,000 boxes each side,
    p > 1e-4; seeded, so the outcome is fixed) against get_params at 8x the size, where its rounding is
    negligible (both rounded to 0.01 first: the central-crop fallback is an atom of up to 12% of the boxes,
    at a place the pixel rounding moves by 3e-4, which an unrounded KS statistic would count in full);
    (2) the means against get_params at the same (h, w), within 0.02."""
    per, n_views = 20, 50  # 20 images per aspect x 50 views = 1,000 boxes per aspect
    sizes = torch.tensor([ASPECTS[a] for a in ASPECTS for _ in range(per)], dtype=torch.int64)
    hmax, wmax = (int(v) for v in sizes.max(0).values)
    images = torch.zeros(len(sizes), hmax, wmax, 3, dtype=torch.uint8)
    spec = replace(simclr_recipe(4).views[0], jitter_p=0.0, gray_p=0.0)
    recipe = ViewRecipe([spec] * n_views)
    _, params = make_views(images, recipe, torch.Generator().manual_seed(7), sizes=sizes, backend=backend)
    boxes = torch.cat([p.boxes for p in params])  # [n_views * B, 4], view-major
    which = torch.arange(len(sizes)).repeat(n_views) // per
    for k, (name, (h, w)) in enumerate(ASPECTS.items()):
        ours = _box_stats(boxes[which == k], h, w)
        ref = _torchvision_stats(8 * h, 8 * w, per * n_views, spec.scale, seed=k)
        same = _torchvision_stats(h, w, per * n_views, spec.scale, seed=10 + k)
        for stat in ours:
            p = stats.ks_2samp(np.round(ours[stat], 2), np.round(ref[stat], 2)).pvalue
            assert p > 1e-4, f"{name} {stat}: KS p = {p:.2g}"
            assert abs(ours[stat].mean() - same[stat].mean()) < 0.02, (name, stat)
    # the same boxes in the square-frame mistake (drawn in the padded frame's aspect) are caught:
    wrong = _box_stats(boxes[which == 3], hmax, wmax)
    ref = _torchvision_stats(8 * 48, 8 * 144, 1000, spec.scale, 3)
    assert stats.ks_2samp(wrong["log_aspect"], ref["log_aspect"]).pvalue < 1e-4


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_padded_batch_equals_per_image_crops(backend: str) -> None:
    """A ragged batch through make_views equals cropping each image alone (own size, border clamped) with
    the same boxes: replicate padding (torch) and per-sample clamping (numba) are exact."""
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(16, 24), (32, 16), (16, 16), (16, 40)]]
    sizes = np.array([r.shape[:2] for r in rows])
    ragged = RaggedImages.from_sizes(np.concatenate([r.reshape(-1) for r in rows]), sizes, 16)
    x, sz = gather(ragged, np.arange(4))
    assert sz is not None and x.shape == (4, 32, 40, 3)
    spec = ViewSpec(size=8, jitter_p=0.0, gray_p=0.0)
    recipe = ViewRecipe([spec, spec], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    views, params = make_views(x, recipe, torch.Generator().manual_seed(3), sizes=sz, backend=backend,
                                 channels_last=False)
    for v, p in zip(views, params):
        assert p.sizes is not None and torch.equal(p.sizes, sz)
        for i, r in enumerate(rows):
            img = torch.from_numpy(r).permute(2, 0, 1)[None].float() / 255
            ref = resized_crop(img, p.boxes[i : i + 1], p.flip[i : i + 1], 8)
            torch.testing.assert_close(v[i : i + 1], ref, atol=2e-6, rtol=0)


def test_frame_chunks_bound_the_padding_of_mixed_orientations() -> None:
    """A batch of 10:1 panoramas, 1:10 portraits and squares (padded frame 10S x 10S, ~18x its pixels) is cut
    into groups of similar shape: every row in exactly one group, each group's own frame at most 2x its
    pixels (or one row); a batch whose frame wastes little is left whole (None)."""
    s = 16
    shapes = [(s, 10 * s), (10 * s, s), (s, s), (s, 4 * s), (3 * s, s), (s, 2 * s)] * 5
    sizes = torch.tensor(shapes, dtype=torch.int64)[torch.randperm(30, generator=torch.Generator().manual_seed(0))]
    chunks = frame_chunks(sizes)
    assert chunks is not None
    rows = torch.cat(chunks).sort().values
    assert torch.equal(rows, torch.arange(len(sizes)))
    area = (sizes[:, 0] * sizes[:, 1]).double()
    for c in chunks:
        fh, fw = sizes[c].max(dim=0).values.tolist()
        assert len(c) == 1 or fh * fw * len(c) <= 2 * float(area[c].sum())
    assert 2 <= len(chunks) <= 8
    assert frame_chunks(torch.tensor([[s, s], [s, s + 4], [s + 4, s]])) is None  # 4:3 and 3:4 photos


def test_chunked_views_equal_the_whole_frame_views(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch path on a wasteful ragged batch (cut into groups) makes the same views, colour jitter and
    all, as on the whole padded frame: the groups share the batch's random draws."""
    import selfsup.augment.views as views_mod

    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(8, 80), (80, 8), (8, 8), (8, 24)]]
    x, sz = pad_rows(rows)
    assert sz is not None and frame_chunks(torch.from_numpy(sz)) is not None
    recipe = simclr_recipe(8)

    def run() -> list[torch.Tensor]:
        out, _ = make_views(torch.from_numpy(x), recipe, torch.Generator().manual_seed(5),
                            sizes=torch.from_numpy(sz), backend="torch")
        return out

    chunked = run()
    monkeypatch.setattr(views_mod, "frame_chunks", lambda sizes: None)
    for a, b in zip(chunked, run()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_every_third_of_a_wide_image_reaches_the_views() -> None:
    """A 3:1 image with red / green / blue thirds: every third shows up in the views (the old centre-square
    cache gave the outer thirds 0), the two outer thirds in equal shares (within 0.05), and all three shares
    match the expectation under torchvision's get_params (Monte Carlo, 2,000 boxes) within 0.05 (about 4
    standard errors of the two estimates; 1,000 views). The middle third gets more, about 0.47 against 0.27:
    RandomResizedCrop boxes at most 4/3 as wide as high sit uniformly inside the image, so they overlap its
    middle more often; that is the recipe's distribution."""
    h, w = 48, 144
    img = np.zeros((h, w, 3), np.uint8)
    for c in range(3):
        img[:, c * 48 : (c + 1) * 48, c] = 255
    x = torch.from_numpy(img)[None].repeat(40, 1, 1, 1)
    spec = ViewSpec(size=8, jitter_p=0.0, gray_p=0.0)
    recipe = ViewRecipe([spec] * 25, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    views, _ = make_views(x, recipe, torch.Generator().manual_seed(0), channels_last=False)
    v = torch.cat(views)  # [1000, 3, 8, 8]
    share = (v.argmax(1, keepdim=True) == torch.arange(3).reshape(1, 3, 1, 1)).double().mean((0, 2, 3)).numpy()
    torch.manual_seed(1)
    tv = torch.tensor([RandomResizedCrop.get_params(torch.empty(3, h, w), [0.08, 1.0], [3 / 4, 4 / 3])
                       for _ in range(2000)], dtype=torch.float64)
    left, width = tv[:, 1] / w, tv[:, 3] / w
    expect = np.array([((torch.clamp(torch.minimum(left + width, torch.tensor((c + 1) / 3))
                                     - torch.maximum(left, torch.tensor(c / 3)), min=0)) / width).mean().item()
                       for c in range(3)])
    assert np.all(share > 0.2) and abs(share[0] - share[2]) < 0.05, share
    np.testing.assert_allclose(share, expect, atol=0.05)


# ------------------------------------------------------------------------------------------ eval


def test_eval_protocol_on_square_images_equals_the_square_protocol() -> None:
    """Square images at crop_fraction 1.0: exactly what eval_transform computed before native aspect (the
    whole image resized to size x size, bilinear + antialias, then normalised), written out here."""
    imgs = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8))
    out = eval_transform(imgs, 16)
    x = imgs.permute(0, 3, 1, 2).float().mul_(1 / 255)
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    ref = normalize(x, IMAGENET_MEAN, IMAGENET_STD).contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, ref)
    same = eval_transform(imgs[:, :16, :16], 16)  # already the size: only normalised
    assert torch.equal(same, normalize(imgs[:, :16, :16].permute(0, 3, 1, 2).float().mul_(1 / 255),
                                         IMAGENET_MEAN, IMAGENET_STD).contiguous(memory_format=torch.channels_last))


def test_eval_protocol_on_a_padded_batch_equals_each_image_alone() -> None:
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(16, 24), (32, 16), (16, 16)]]
    ragged = RaggedImages.from_sizes(np.concatenate([r.reshape(-1) for r in rows]), [r.shape[:2] for r in rows], 16)
    x, sz = gather(ragged, np.arange(3))
    for cf in (1.0, 0.875):
        out = eval_transform(x, 12, sizes=sz, crop_fraction=cf)
        for i, r in enumerate(rows):
            ref = eval_transform(torch.from_numpy(r)[None], 12, crop_fraction=cf)
            torch.testing.assert_close(out[i : i + 1], ref, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------ FAMT


def test_weights_to_view_on_the_native_grid() -> None:
    """A weight map over the eval view (the centre square) of a 1:2 image, read through crop boxes given as
    fractions of the whole image: the centre square reads the map as is, the right half reads its right
    edge replicated (outside the map), and a square image is unchanged from the square rule."""
    g = 4
    maps = torch.arange(g * g, dtype=torch.float32).reshape(1, g, g)
    sizes = torch.tensor([[32, 64]])
    centre = torch.tensor([[0.0, 0.25, 1.0, 0.5]])  # the centre 32 x 32 square of a 32 x 64 image
    out = weights_to_view(maps, centre, None, g, sizes=sizes)
    torch.testing.assert_close(out.reshape(1, g, g), maps)
    right = torch.tensor([[0.0, 0.75, 1.0, 0.25]])  # beyond the map's right edge: its last column
    out = weights_to_view(maps, right, None, 2, sizes=sizes).reshape(2, 2)
    # x beyond the map: column 3 (3, 7, 11, 15); y at 1/4 and 3/4 of the map: between rows 0-1 and 2-3
    torch.testing.assert_close(out, torch.tensor([[5.0, 5.0], [13.0, 13.0]]))
    # a same-shape non-square batch (sizes from make_views' ViewParams) maps the same way as a ragged one
    x = torch.zeros(2, 32, 64, 3, dtype=torch.uint8)
    _, ps = make_views(x, ViewRecipe([ViewSpec(size=4)]), torch.Generator().manual_seed(0))
    assert torch.equal(ps[0].sizes, torch.tensor([[32, 64], [32, 64]]))
    torch.testing.assert_close(weights_to_view(maps.expand(2, g, g), centre.expand(2, 4), None, g, sizes=ps[0].sizes),
                               maps.expand(2, g, g).reshape(2, -1))
    sq = torch.tensor([[0.1, 0.2, 0.5, 0.6]])
    torch.testing.assert_close(weights_to_view(maps, sq, None, g, sizes=torch.tensor([[32, 32]])),
                               weights_to_view(maps, sq, None, g))


# ----------------------------------------------------------------------------------------- SIGTERM


_SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time
    import selfsup.data.folder as f
    real = f.decode_native
    def slow(path, size):
        time.sleep(0.02)
        return real(path, size)
    f.decode_native = slow
    if sys.argv[3] == "pool":
        f._POOL_MIN_IMAGES, f._num_workers = 1, lambda: 2
    from selfsup.data import open_dataset
    open_dataset(sys.argv[1], 16, cache_dir=sys.argv[2], progress=False)
    print("finished")
""")


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["serial", "pool"])
def test_sigterm_during_first_decode_leaves_no_temporary(tmp_path: Path, mode: str) -> None:
    folder = tmp_path / "img"
    for i in range(300):
        _save(folder / f"{i:03d}.png", _gradient(20 + i % 7, 30))
    cdir = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _SIGTERM_SCRIPT, str(folder), str(cdir), mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (cdir.is_dir() and any(cdir.glob(".*.tmp"))):
        time.sleep(0.02)
    time.sleep(0.3)  # well inside the ~6 s decode
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)
    assert "finished" not in out and "Traceback" not in err, err
    assert "nothing was cached" in err and err.strip().count("\n") == 0, err
    assert list(cdir.iterdir()) == []


# --------------------------------------------------------------------------------------- streaming


@pytest.mark.integration  # importing webdataset takes seconds
def test_stream_decodes_at_native_aspect(tmp_path: Path) -> None:
    pytest.importorskip("webdataset")
    from selfsup.data.stream import open_stream, write_shards

    shapes = [(30, 40), (40, 30), (24, 72), (20, 20)] * 2
    for i, (h, w) in enumerate(shapes):
        _save(tmp_path / "img" / f"{i}.png", _gradient(h, w))
    spec = write_shards(str(tmp_path / "img"), tmp_path / "shards", 8, prefix="s", shuffle=False)
    stream = open_stream(spec, 16, 8, workers=0)
    imgs, idx, sizes = stream.batch(0, 0)
    assert sizes is not None
    got = sorted(tuple(int(v) for v in s) for s in sizes)
    assert got == sorted([(16, 21), (21, 16), (16, 48), (16, 16)] * 2)
    assert tuple(imgs.shape) == (8, 21, 48, 3)
    for k in range(8):  # each image top-left, padded by replicating its last row and column
        h, w = (int(v) for v in sizes[k])
        assert torch.equal(imgs[k, h:, :w], imgs[k, h - 1 : h, :w].expand(21 - h, w, 3))
        assert torch.equal(imgs[k, :, w:], imgs[k, :, w - 1 : w].expand(21, 48 - w, 3))


# ------------------------------------------------------------------------------------ training loop


@pytest.mark.integration
@pytest.mark.parametrize("method,backend,low_res", [("simclr", "torch", 0), ("simclr", "numba", 8), ("dino", "auto", 0)])
def test_pretrain_on_native_aspect_photos(tmp_path: Path, make_class_folder, method: str, backend: str,
                                          low_res: int) -> None:
    """The real loop on a folder of mixed-shape images (20-48 px, mixed modes): ragged batches reach the
    views of both backends, multi-crop (DINO) and the resolution schedule; the online kNN reads native rows."""
    from selfsup.training.loop import pretrain

    from .helpers import tiny_config

    data = make_class_folder(tmp_path / "data", classes=2, per_class=8)
    cfg = tiny_config(str(data), str(tmp_path / "run"), method=method, epochs=2, max_steps=3, knn_every=1)
    cfg.data.val = str(data)
    cfg.data.view_backend = backend
    cfg.data.low_res_size = low_res
    pretrain(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))


# ----------------------------------------------------------------------------------------- views command


@pytest.mark.integration  # builds the method and draws a matplotlib figure: seconds
def test_views_command_boxes_span_panoramas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from selfsup.cli import main

    for i, (h, w) in enumerate([(50, 150), (40, 160), (60, 80)]):
        _save(tmp_path / "pano" / f"{i}.png", _gradient(h, w))
    out, boxes = tmp_path / "views.png", tmp_path / "boxes.json"
    assert main(["views", "--data", str(tmp_path / "pano"), "--out", str(out), "--boxes", str(boxes),
                 "--image-size", "16", "--views", "16", "--num", "3"]) == 0
    assert out.stat().st_size > 1000 and Image.open(out).format == "PNG"
    rec = json.loads(boxes.read_text())["views"]
    assert len(rec) == 3 * 16
    for r in rec:  # pixels of the original file: inside it, with the recipe's aspect range and area range
        assert -1e-6 <= r["top"] and r["top"] + r["box_height"] <= r["height"] + 1e-6
        assert -1e-6 <= r["left"] and r["left"] + r["box_width"] <= r["width"] + 1e-6
        assert 3 / 4 - 0.02 <= r["box_width"] / r["box_height"] <= 4 / 3 + 0.02
        assert 0.08 - 0.01 <= r["box_width"] * r["box_height"] / (r["width"] * r["height"]) <= 1.0 + 1e-6
    wide = [r for r in rec if r["image"].endswith("1.png")]  # 160 x 40: the centre square is x 60 ... 100
    assert min(r["left"] for r in wide) < 30 and max(r["left"] + r["box_width"] for r in wide) > 130
    capsys.readouterr()
    assert main(["views", "--data", str(tmp_path / "pano"), "--out", str(tmp_path / "no" / "v.png")]) == 2
    assert main(["views", "--data", str(tmp_path / "pano"), "--out", str(tmp_path / "v.jpg")]) == 2
    assert main(["views", "--data", str(tmp_path / "pano"), "--out", str(out), "--method", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("selfsup: error: ") for line in err)
