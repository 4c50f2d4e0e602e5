"""Image IO and size handling: what comes in from disk, and how large images are processed.

Images in the core are float tensors [B, 3, H, W] in [0, 1]. Reading handles what real folders
contain (grayscale, palette, RGBA, 16-bit, EXIF rotation); sizes that the codec cannot take are
padded by reflection and cropped back (large images: tiling.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
MIN_SIDE = 16


class ImageError(ValueError):
    """An input image that cannot be restored, with the reason."""


def load_image(path: str | Path) -> tuple[torch.Tensor, np.ndarray | None]:
    """Read an image file -> ([1,3,H,W] float in [0,1], alpha [H,W] float or None).

    Alpha is returned separately so it can be put back on the restored RGB unchanged.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"input not found: {path}")
    try:
        with Image.open(path) as im:
            fmt = im.format  # exif_transpose returns a copy that no longer knows it
            im = ImageOps.exif_transpose(im)
            arr, alpha = _to_array(im, fmt)
    except UnidentifiedImageError as e:
        raise ImageError(f"{path.name} is not an image PIL can read") from e
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


def save_image(image: torch.Tensor, path: str | Path, alpha: np.ndarray | None = None) -> None:
    """[1,3,H,W] or [3,H,W] in [0,1] -> 8-bit PNG/JPEG (RGBA when alpha is given)."""
    x = image[0] if image.dim() == 4 else image
    arr = (x.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    path = Path(path)
    no_alpha = path.suffix.lower() in (".jpg", ".jpeg")  # JPEG cannot store alpha: keep the RGB
    if alpha is not None and alpha.shape == arr.shape[:2] and not no_alpha:
        arr = np.concatenate([arr, (alpha * 255 + 0.5).astype(np.uint8)[..., None]], axis=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


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
    """Files and folders (non-recursive) -> image paths, in a stable order."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            out.append(p)
    return out
