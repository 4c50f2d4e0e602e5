"""Bad and unusual inputs: files that are missing, not images or too small; odd sizes, grayscale,
RGBA, 16-bit, palette, EXIF-rotated and animated images; NaN and out-of-range images / latents;
tiled processing; atomic saving (no partial or clobbered file, whatever happens during a save)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from rar_core.cli import main
from rar_core.image import (
    MIN_SIDE,
    ImageError,
    ImageWarning,
    check_image_tensor,
    check_size,
    check_writable,
    list_images,
    load_image,
    pad_to_multiple,
    save_image,
    to_rgb,
)
from rar_core.model import LatentError
from rar_core.loop import restore_image


def rgb_array(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def png16(path: Path, arr: np.ndarray) -> Path:
    """Write a 16-bit PNG (gray [H,W] or RGB [H,W,3]) by hand: Pillow cannot write 16-bit RGB."""
    h, w = arr.shape[:2]
    color = 0 if arr.ndim == 2 else 2
    rows = arr.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


# ----- reading -----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="input not found: .*missing.png"):
        load_image(tmp_path / "missing.png")


@pytest.mark.parametrize("content", [b"", b"plain text, not pixels", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_non_image_file(tmp_path, content):
    p = tmp_path / "photo.png"
    p.write_bytes(content)
    with pytest.raises(ImageError, match="photo.png is not an image PIL can read"):
        load_image(p)


def test_truncated_image(tmp_path):
    p = tmp_path / "cut.png"
    Image.fromarray(rgb_array(64, 64)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png could not be decoded .*truncated"):
        load_image(p)


@pytest.mark.parametrize("size", [(1, 1), (15, 40), (40, 15), (1, 100)])
def test_too_small(tmp_path, size):
    p = tmp_path / "tiny.png"
    Image.fromarray(rgb_array(*size)).save(p)
    with pytest.raises(ImageError, match=rf"tiny.png is {size[0]}x{size[1]} pixels; RAR needs at least 16x16"):
        load_image(p)


def test_minimum_size_is_accepted(tmp_path):
    p = tmp_path / "min.png"
    Image.fromarray(rgb_array(MIN_SIDE, MIN_SIDE)).save(p)
    x, alpha = load_image(p)
    assert x.shape == (1, 3, 16, 16) and alpha is None


def test_rgb_values(tmp_path):
    arr = rgb_array(23, 17)
    p = tmp_path / "rgb.png"
    Image.fromarray(arr).save(p)
    x, alpha = load_image(p)
    assert x.dtype == torch.float32 and x.shape == (1, 3, 17, 23) and alpha is None
    assert torch.allclose(x[0].permute(1, 2, 0), torch.from_numpy(arr).float() / 255)


def test_grayscale(tmp_path):
    g = rgb_array(20, 18)[..., 0]
    p = tmp_path / "gray.png"
    Image.fromarray(g, mode="L").save(p)
    x, alpha = load_image(p)
    assert x.shape == (1, 3, 18, 20) and alpha is None
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])
    assert torch.allclose(x[0, 0], torch.from_numpy(g).float() / 255)


def test_rgba_alpha_preserved(tmp_path):
    arr = rgb_array(21, 19)
    a = np.linspace(0, 255, 21 * 19).astype(np.uint8).reshape(19, 21)
    p = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([arr, a]), mode="RGBA").save(p)
    x, alpha = load_image(p)
    assert x.shape == (1, 3, 19, 21)
    assert torch.allclose(x[0].permute(1, 2, 0), torch.from_numpy(arr).float() / 255)  # not premultiplied
    assert np.array_equal(np.round(alpha * 255).astype(np.uint8), a)
    out = tmp_path / "back.png"
    save_image(x, out, alpha)
    with Image.open(out) as im:
        assert im.mode == "RGBA"
        back = np.asarray(im)
    assert np.array_equal(back[..., 3], a) and np.array_equal(back[..., :3], arr)


def test_save_image_formats(tmp_path):
    x = torch.rand(1, 3, 16, 18, generator=torch.Generator().manual_seed(0))
    alpha = np.full((16, 18), 0.5, np.float32)
    save_image(x, tmp_path / "deep" / "a.jpg", alpha)  # JPEG has no alpha: the RGB is kept
    with Image.open(tmp_path / "deep" / "a.jpg") as im:
        assert im.mode == "RGB" and im.size == (18, 16)
    save_image(x[0], tmp_path / "b.png", alpha)
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "RGBA"
        back = np.asarray(im)
    assert np.all(back[..., 3] == 128)
    assert np.abs(back[..., :3] / 255.0 - x[0].permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


def saved_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_save_image_unknown_extension(tmp_path):
    with pytest.raises(ImageError, match=r"out.xyz: unknown image extension '.xyz'; use one of .bmp .jpeg"):
        save_image(torch.rand(1, 3, 16, 16), tmp_path / "out.xyz")
    assert saved_files(tmp_path) == []


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch, failure):
    """A save that dies half-way (full disk, Ctrl-C) leaves the old file and no temporary file."""
    out = tmp_path / "out.png"
    Image.fromarray(rgb_array(20, 20)).save(out)
    before = out.read_bytes()

    def half_then_fail(self, fp, *a, **k):
        fp.write(before[:33])  # what an interrupted PNG write leaves
        raise failure

    monkeypatch.setattr(Image.Image, "save", half_then_fail)
    with pytest.raises(type(failure)):
        save_image(torch.rand(1, 3, 20, 20), out)
    assert out.read_bytes() == before
    assert saved_files(tmp_path) == ["out.png"]


def test_save_without_overwrite_keeps_an_existing_file(tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"written by someone else meanwhile")
    with pytest.raises(FileExistsError, match="out.png already exists"):
        save_image(torch.rand(1, 3, 16, 16), out, overwrite=False)
    assert out.read_bytes() == b"written by someone else meanwhile"
    assert saved_files(tmp_path) == ["out.png"]
    save_image(torch.rand(1, 3, 16, 16), tmp_path / "new.png", overwrite=False)
    with Image.open(tmp_path / "new.png") as im:
        assert im.size == (16, 16)
    assert saved_files(tmp_path) == ["new.png", "out.png"]


def test_overwrite_keeps_the_file_mode(tmp_path):
    out = tmp_path / "out.png"
    save_image(torch.rand(1, 3, 16, 16), out)
    out.chmod(0o640)
    save_image(torch.rand(1, 3, 16, 16), out)
    assert out.stat().st_mode & 0o777 == 0o640


def test_concurrent_writers_never_leave_a_broken_file(tmp_path):
    """Writers racing on one name: the file is always one complete image, never mixed bytes."""
    import threading

    out = tmp_path / "out.png"
    images = [torch.full((1, 3, 64, 64), v) for v in (0.1, 0.5, 0.9)]
    levels = {round(v * 255 + 0.5) for v in (0.1, 0.5, 0.9)}
    seen: list[int] = []
    errors: list[BaseException] = []

    def writer(x):
        try:
            for _ in range(15):
                save_image(x, out)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def reader():
        for _ in range(60):
            if out.exists():
                with Image.open(out) as im:
                    arr = np.asarray(im)
                assert arr.shape == (64, 64, 3) and len(np.unique(arr)) == 1
                seen.append(int(arr[0, 0, 0]))

    threads = [threading.Thread(target=writer, args=(x,)) for x in images]
    for t in threads:
        t.start()
    reader()
    for t in threads:
        t.join()
    assert not errors
    assert set(seen) <= levels
    with Image.open(out) as im:
        assert int(np.asarray(im)[0, 0, 0]) in levels
    assert saved_files(tmp_path) == ["out.png"]


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "deeper" / "x.png")  # missing folders are fine (made at save)
    assert saved_files(tmp_path) == []  # and not made by the check
    (tmp_path / "f").write_text("")
    with pytest.raises(ImageError, match=r"cannot create output folder .*f/sub: .*f is a file"):
        check_writable(tmp_path / "f" / "sub" / "x.png")
    with pytest.raises(ImageError, match="is a folder; give a file name"):
        check_writable(tmp_path)


def test_animated_image_warns(tmp_path):
    frames = [Image.fromarray(np.full((20, 20, 3), v, np.uint8)) for v in (10, 120, 240)]
    src = tmp_path / "anim.png"  # APNG
    frames[0].save(src, save_all=True, append_images=frames[1:])
    with pytest.warns(ImageWarning, match="anim.png has 3 frames .*only the first frame is restored"):
        x, _ = load_image(src)
    assert torch.allclose(x, torch.full_like(x, 10 / 255))


def test_still_image_does_not_warn(tmp_path):
    import warnings

    src = tmp_path / "still.gif"
    Image.fromarray(rgb_array(20, 20)).save(src)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(src)


def test_gray_alpha(tmp_path):
    la = np.dstack([rgb_array(16, 16)[..., 0], np.full((16, 16), 77, np.uint8)])
    p = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(p)
    x, alpha = load_image(p)
    assert x.shape == (1, 3, 16, 16)
    assert np.allclose(alpha, 77 / 255)


def test_16bit_gray_png(tmp_path):
    a = (np.arange(32 * 24, dtype=np.uint32).reshape(24, 32) * 85).astype(np.uint16)
    p = png16(tmp_path / "g16.png", a)
    with Image.open(p) as im:
        assert im.mode.startswith("I")
    x, _ = load_image(p)
    assert x.shape == (1, 3, 24, 32)
    assert torch.allclose(x[0, 0], torch.from_numpy(a.astype(np.float32)) / 65535, atol=1e-6)


def test_dark_16bit_png_is_not_mistaken_for_8bit(tmp_path):
    """A 16-bit image whose values all sit below 256 is very dark, not a bright 8-bit one."""
    a = np.full((20, 20), 200, np.uint16)
    a[5:10] = 0
    x, _ = load_image(png16(tmp_path / "dark16.png", a))
    assert x.max().item() == pytest.approx(200 / 65535, rel=1e-5)
    Image.fromarray(a.astype(np.uint8), mode="L").save(tmp_path / "bright8.png")
    x8, _ = load_image(tmp_path / "bright8.png")  # the same numbers in an 8-bit file are bright
    assert x8.max().item() == pytest.approx(200 / 255)


def test_16bit_rgb_png(tmp_path):
    a = np.zeros((18, 22, 3), np.uint16)
    a[..., 0] = 65535
    a[..., 1] = 32896  # 0x8080 -> 128 in 8 bits
    a[:, :11, 2] = 4112  # 0x1010 -> 16
    x, _ = load_image(png16(tmp_path / "rgb16.png", a))
    assert x.shape == (1, 3, 18, 22)
    assert torch.allclose(x[0, 0], torch.ones(18, 22), atol=1 / 255)
    assert torch.allclose(x[0, 1], torch.full((18, 22), 0.502), atol=1 / 255)
    assert torch.allclose(x[0, 2, :, :11], torch.full((18, 11), 16 / 255), atol=1 / 255)
    assert torch.all(x[0, 2, :, 11:] == 0)


def test_palette_png(tmp_path):
    arr = rgb_array(24, 20)
    pal = Image.fromarray(arr).quantize(colors=8)
    p = tmp_path / "pal.png"
    pal.save(p)
    with Image.open(p) as im:
        assert im.mode == "P"
        expected = np.asarray(im.convert("RGB")).astype(np.float32) / 255
    x, alpha = load_image(p)
    assert alpha is None and x.shape == (1, 3, 20, 24)
    assert torch.allclose(x[0].permute(1, 2, 0), torch.from_numpy(expected))
    assert len(torch.unique(x.reshape(3, -1), dim=1).T) <= 8


def test_palette_png_with_transparency(tmp_path):
    pal = Image.fromarray(rgb_array(16, 16)).quantize(colors=4)
    p = tmp_path / "palt.png"
    pal.save(p, transparency=0)
    x, alpha = load_image(p)
    idx = np.asarray(Image.open(p))
    assert alpha is not None
    assert np.array_equal(alpha == 0, idx == 0)


def test_exif_rotated_jpeg(tmp_path):
    w, h = 48, 24
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, :12] = 255  # a white band on the left of the stored pixels
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif, quality=95)
    x, _ = load_image(p)
    assert x.shape == (1, 3, w, h)  # displayed upright: width and height swap
    with Image.open(p) as raw:
        expected = np.asarray(ImageOps.exif_transpose(raw).convert("RGB")).astype(np.float32) / 255
    assert torch.allclose(x[0].permute(1, 2, 0), torch.from_numpy(expected))
    assert x[0, :, :12].mean() > 0.9 and x[0, :, -12:].mean() < 0.1  # the band is now on top


def test_list_images(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.txt", "d.webp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.png").write_bytes(b"x")
    found = list_images([tmp_path, tmp_path / "single.png"])
    assert [p.name for p in found] == ["a.jpg", "b.PNG", "d.webp", "single.png"]


# ----- tensors -----------------------------------------------------------------------------


def test_to_rgb():
    g = torch.rand(2, 1, 16, 16)
    assert torch.equal(to_rgb(g), g.expand(-1, 3, -1, -1))
    rgba = torch.rand(1, 4, 16, 16)
    assert torch.equal(to_rgb(rgba), rgba[:, :3])
    with pytest.raises(ImageError, match="image has 2 channels"):
        to_rgb(torch.rand(1, 2, 16, 16))
    with pytest.raises(ImageError, match=r"expected an image batch \[B,C,H,W\]"):
        to_rgb(torch.rand(3, 16, 16))


def test_check_size():
    check_size(16, 16)
    with pytest.raises(ImageError, match="16x8 pixels"):
        check_size(8, 16)


@pytest.mark.parametrize("h,w,m", [(37, 53, 16), (16, 16, 16), (17, 40, 8), (5, 7, 16)])
def test_pad_to_multiple(h, w, m):
    x = torch.rand(1, 3, h, w)
    y, (oh, ow) = pad_to_multiple(x, m)
    assert (oh, ow) == (h, w)
    assert y.shape[-2] % m == 0 and y.shape[-1] % m == 0
    assert y.shape[-2] - h < m and y.shape[-1] - w < m
    assert torch.equal(y[..., :h, :w], x)


# ----- restore_image on the tiny model ------------------------------------------------------


@pytest.mark.parametrize("h,w", [(53, 37), (16, 16), (21, 18)])
def test_odd_sizes_restore_to_the_same_size(tiny_model, h, w):
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    res = restore_image(tiny_model, x, max_rounds=1, steps=1)
    assert res.image.shape == (1, 3, h, w)
    assert torch.isfinite(res.image).all() and res.image.min() >= 0 and res.image.max() <= 1
    assert res.tiles == 1 and len(res.trace) == 1


def test_grayscale_and_rgba_tensors_restore(tiny_model):
    g = torch.rand(1, 1, 20, 24)
    assert restore_image(tiny_model, g, max_rounds=1, steps=1).image.shape == (1, 3, 20, 24)
    rgba = torch.rand(1, 4, 20, 24)
    rgb = restore_image(tiny_model, rgba[:, :3], max_rounds=1, steps=1).image
    assert torch.equal(restore_image(tiny_model, rgba, max_rounds=1, steps=1).image, rgb)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_image(tiny_model, bad):
    x = torch.rand(1, 3, 16, 16)
    x[0, 1, 3, 4] = bad
    with pytest.raises(ImageError, match="image contains NaN or infinite values"):
        restore_image(tiny_model, x)


def test_nan_latent(tiny_model):
    z = torch.zeros(1, 16, 8, 8)
    z[..., 0, 0] = float("nan")
    for call in (lambda: tiny_model.assess(z), lambda: tiny_model.run(z), lambda: tiny_model.verify(z, z)):
        with pytest.raises(LatentError, match="latent contains NaN or infinite values"):
            call()


@pytest.mark.parametrize("channels", [4, 3, 32])
def test_wrong_latent_channels(tiny_model, channels):
    z = torch.zeros(1, channels, 8, 8)
    with pytest.raises(LatentError, match=rf"latent has shape \(1, {channels}, 8, 8\).*needs \[batch, 16, h, w\]"):
        tiny_model.run(z)
    with pytest.raises(LatentError):
        tiny_model.assess(z)


def test_check_image_tensor():
    check_image_tensor(torch.rand(2, 3, 16, 16))
    check_image_tensor(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2) + 5e-4)  # float rounding passes
    with pytest.raises(ImageError, match=r"must be in \[0, 1\], found 0..255; 8-bit data must be divided by 255"):
        check_image_tensor(torch.arange(256.0).view(1, 1, 16, 16))
    with pytest.raises(ImageError, match=r"must be in \[0, 1\], found -0.5..0.5$"):
        check_image_tensor(torch.linspace(-0.5, 0.5, 256).view(1, 1, 16, 16))
    with pytest.raises(ImageError, match=r"found 0..1.01$"):
        check_image_tensor(torch.tensor([0.0, 1.01]).view(1, 1, 1, 2))
    with pytest.raises(ImageError, match="NaN or infinite"):
        check_image_tensor(torch.tensor([0.0, float("nan")]).view(1, 1, 1, 2))
    with pytest.raises(ImageError, match=r"expected an image batch \[B,C,H,W\], got shape \(3, 16, 16\)"):
        check_image_tensor(torch.rand(3, 16, 16))
    with pytest.raises(ImageError, match="empty"):
        check_image_tensor(torch.rand(0, 3, 16, 16))


def test_restore_image_rejects_0_255_data(tiny_model):
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    with pytest.raises(ImageError, match=r"image values must be in \[0, 1\].*divided by 255"):
        restore_image(tiny_model, x)


def test_too_small_tensor(tiny_model):
    with pytest.raises(ImageError, match="RAR needs at least 16x16"):
        restore_image(tiny_model, torch.rand(1, 3, 1, 1))


def test_tiled_restore(tiny_model):
    """Larger than the restorer's window (32 latent px = 64 px here) and the codec tile (48 px)."""
    x = torch.rand(1, 3, 90, 100, generator=torch.Generator().manual_seed(1))
    res = restore_image(tiny_model, x, max_rounds=1, steps=1, tile=48)
    assert res.tiles > 1 and len(res.trace[0]) == 1
    assert res.image.shape == x.shape and torch.isfinite(res.image).all()


# ----- CLI with unusual files ----------------------------------------------------------------


def test_cli_restores_rgba_keeping_alpha_and_odd_size(tmp_path, tiny_model_path):
    arr = rgb_array(37, 53)
    a = (np.arange(37 * 53) % 256).astype(np.uint8).reshape(53, 37)
    src = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([arr, a]), mode="RGBA").save(src)
    out = tmp_path / "out.png"
    assert main(["restore", str(src), "-o", str(out), "--model", str(tiny_model_path), "--max-rounds", "1",
                 "--steps", "1", "-q"]) == 0
    with Image.open(out) as im:
        assert im.size == (37, 53) and im.mode == "RGBA"
        assert np.array_equal(np.asarray(im)[..., 3], a)


@pytest.mark.parametrize("kind", ["gray", "pal", "16bit", "exif"])
def test_cli_restores_unusual_files(tmp_path, tiny_model_path, kind):
    src = tmp_path / f"{kind}.png"
    if kind == "gray":
        Image.fromarray(rgb_array(30, 20)[..., 0], mode="L").save(src)
        size = (30, 20)
    elif kind == "pal":
        Image.fromarray(rgb_array(30, 20)).quantize(colors=16).save(src)
        size = (30, 20)
    elif kind == "16bit":
        png16(src, (np.arange(30 * 20).reshape(20, 30) * 100).astype(np.uint16))
        size = (30, 20)
    else:
        src = tmp_path / "exif.jpg"
        im = Image.fromarray(rgb_array(30, 20))
        exif = im.getexif()
        exif[0x0112] = 8
        im.save(src, exif=exif)
        size = (20, 30)
    out = tmp_path / "out.png"
    assert main(["restore", str(src), "-o", str(out), "--model", str(tiny_model_path), "--max-rounds", "1",
                 "--steps", "1", "-q"]) == 0
    with Image.open(out) as im:
        assert im.size == size and im.mode == "RGB"
