"""Image IO and size handling: what comes in from disk, and how large images are processed.

Images in the core are float tensors [B, 3, H, W] in [0, 1]. Reading handles what real folders
contain (grayscale, palette, RGBA, 16-bit, EXIF rotation); sizes that the codec cannot take are
padded by reflection and cropped back (large images: tiling.py).
"""

from __future__ import annotations

import os
import secrets
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
MIN_SIDE = 16
RANGE_TOLERANCE = 1e-3  # float rounding around [0, 1], far below one 8-bit level (1/255)


class ImageError(ValueError):
    """An input image that cannot be restored, with the reason."""


class ImageWarning(UserWarning):
    """An input that is restored, but not all of it (e.g. only the first frame of an animation)."""


def load_image(path: str | Path) -> tuple[torch.Tensor, np.ndarray | None]:
    """Read an image file -> ([1,3,H,W] float in [0,1], alpha [H,W] float or None).

    Alpha is returned separately so it can be put back on the restored RGB unchanged.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"input not found: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as im:
            fmt = im.format  # exif_transpose returns a copy that no longer knows it
            frames = getattr(im, "n_frames", 1)
            if frames > 1:  # GIF, APNG, animated WebP: Pillow reads the first frame only
                warnings.warn(f"{path.name} has {frames} frames (animated or multi-page); only the first frame is restored",
                              ImageWarning, stacklevel=2)
            im = ImageOps.exif_transpose(im)
            arr, alpha = _to_array(im, fmt)
    except UnidentifiedImageError as e:
        raise ImageError(f"{path.name} is not an image PIL can read") from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path.name} is too large to open safely ({e})") from e
    except OSError as e:
        raise ImageError(f"{path.name} could not be decoded ({e}); the file may be truncated") from e
    check_size(arr.shape[0], arr.shape[1], path.name)
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous(), alpha


def _to_array(im: Image.Image, fmt: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    alpha = None
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im).astype(np.float32)
        # 16-bit data is always on the 0..65535 scale, however dark the picture (a max <= 255
        # does not make it 8-bit); only a 32-bit "I" image from another format is guessed.
        sixteen = im.mode != "I" or fmt == "PNG" or a.max() > 255
        a = a / (65535.0 if sixteen else 255.0)
        return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=2), None
    if im.mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float32), 0, 1)
        return np.repeat(a[..., None], 3, axis=2), None
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3].copy()
        return np.ascontiguousarray(rgba[..., :3]), alpha
    arr = np.asarray(im.convert("RGB"))
    scale = 65535.0 if arr.dtype == np.uint16 else 255.0
    return arr.astype(np.float32) / scale, None


def save_image(image: torch.Tensor, path: str | Path, alpha: np.ndarray | None = None, overwrite: bool = True) -> None:
    """[1,3,H,W] or [3,H,W] in [0,1] -> 8-bit PNG/JPEG/... (RGBA when alpha is given), atomically.

    The file appears complete or not at all (see `write_atomic`); `overwrite=False` raises
    FileExistsError instead of replacing a file that exists when the write finishes.
    """
    path = Path(path)
    fmt = output_format(path)
    x = image[0] if image.dim() == 4 else image
    arr = (x.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    no_alpha = fmt == "JPEG"  # JPEG cannot store alpha: keep the RGB
    if alpha is not None and alpha.shape == arr.shape[:2] and not no_alpha:
        arr = np.concatenate([arr, (alpha * 255 + 0.5).astype(np.uint8)[..., None]], axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: Image.fromarray(arr).save(f, format=fmt), overwrite=overwrite)


def output_format(path: str | Path) -> str:
    """Pillow format name for an output file's extension; ImageError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ImageError(f"{Path(path).name}: unknown image extension {suffix or '(none)'!r}; "
                         f"use one of {' '.join(sorted(IMAGE_EXTENSIONS))}")
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:  # e.g. a Pillow built without WebP
        raise ImageError(f"{Path(path).name}: this Pillow cannot write {suffix} files; use .png")
    return fmt


def write_atomic(path: str | Path, write: Callable, overwrite: bool = True) -> None:
    """Write a file through a temporary file in the same folder, then rename it into place.

    Readers (and a Ctrl-C, a full disk, a second process writing the same name) see either the
    old file or the complete new one, never a partial one; the temporary file is removed on any
    failure. `write(f)` gets the open binary file. Without `overwrite`, an existing `path` is
    kept (FileExistsError), checked at the rename itself by hard-linking where the file system can.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666: the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the name points at it
        if overwrite:
            if path.exists():
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))  # a replaced file keeps its permissions
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # fails if path exists, atomically
        except FileExistsError:
            raise FileExistsError(f"{path} already exists") from None
        except OSError:  # no hard links here (some network / FAT file systems)
            if path.exists():
                raise FileExistsError(f"{path} already exists") from None
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def check_writable(path: str | Path, what: str = "output") -> None:
    """The folder that will hold `path` exists or can be made, and a file can be created there.

    Checked before any work: a read-only disk should not be found after an hour of restoring.
    Nothing is left behind (missing folders are not created here).
    """
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{what} {path} is a folder; give a file name")
    folder = path.parent.absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ImageError(f"cannot create {what} folder {folder}: {existing} is a file")
    try:
        probe = existing / f".rar-write-test-{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise ImageError(f"cannot write {what} {path}: {existing} is not writable ({e.strerror})") from e


def check_image_tensor(image: torch.Tensor) -> None:
    """An image batch the core can take: [B,C,H,W], finite, values in [0, 1].

    0-255 data would otherwise pass through (decoded, clamped) as an almost white image; a small
    tolerance lets float rounding from a previous step through.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ImageError(f"expected an image batch [B,C,H,W], got shape {shape}")
    if image.numel() == 0:
        raise ImageError(f"image batch is empty (shape {tuple(image.shape)})")
    if not torch.isfinite(image).all():
        raise ImageError("image contains NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
        hint = "; 8-bit data must be divided by 255" if hi > 1.5 else ""
        raise ImageError(f"image values must be in [0, 1], found {lo:.4g}..{hi:.4g}{hint}")


def check_size(h: int, w: int, name: str = "image") -> None:
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ImageError(f"{name} is {w}x{h} pixels; RAR needs at least {MIN_SIDE}x{MIN_SIDE}")


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] with C in {1,3,4} -> [B,3,H,W] (grayscale repeated, alpha dropped)."""
    if image.dim() != 4:
        raise ImageError(f"expected an image batch [B,C,H,W], got shape {tuple(image.shape)}")
    c = image.shape[1]
    if c == 1:
        return image.expand(-1, 3, -1, -1)
    if c in (3, 4):
        return image[:, :3]
    raise ImageError(f"image has {c} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)")


def pad_to_multiple(image: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple (the codec and patch grid need it); returns the crop."""
    h, w = image.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        image = F.pad(image, (0, pw, 0, ph), mode=mode)
    return image, (h, w)


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Files and folders (non-recursive) -> image paths, in a stable order.

    Files named explicitly are kept whatever their extension (and may be missing: load_image
    reports that); folders contribute their files with image extensions.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file()))
        else:
            out.append(p)
    return out
