"""Flat graphics for training: pages of text, drawings, gradients and interface panels.

Registry photos are nearly all mid-tone textured scenes; a restorer that never sees a white page,
a flat drawing or a sky learns that such content is degraded (BENCHMARKS.md, "Why bright and flat
content is harmed"). These are drawn with Pillow's own font (the bench's text images use DejaVu,
scripts/fetch_data.py) and a seed, so the pool is the same on every machine.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = ("page", "drawing", "gradient", "panel")
_SYLLABLES = "ka lo mi ne ru sa ti vo ber con dia fel gra hul ist jon mar ped qua ros sel tor und ven".split()


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join("".join(_SYLLABLES[int(i)] for i in rng.integers(0, len(_SYLLABLES), int(rng.integers(1, 4))))
                    for _ in range(n))


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _page(rng, d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    y = int(rng.integers(8, 30))
    ink = _colour(rng, 0, 70)
    while y < h - 12:
        size = int(rng.choice([10, 12, 14, 16, 20, 28]))
        f = ImageFont.load_default(size=size)
        d.text((int(rng.integers(6, 40)), y), _words(rng, int(rng.integers(2, 12))), font=f, fill=ink)
        y += int(size * rng.uniform(1.2, 1.9))


def _drawing(rng, d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    for _ in range(int(rng.integers(4, 14))):
        x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        fill, line = _colour(rng), _colour(rng, 0, 80)
        width = int(rng.integers(1, 5))
        shape = int(rng.integers(3))
        if shape == 0:
            d.rectangle((x0, y0, x1, y1), fill=fill, outline=line, width=width)
        elif shape == 1:
            d.ellipse((x0, y0, x1, y1), fill=fill, outline=line, width=width)
        else:
            pts = [(int(rng.integers(x0, x1)), int(rng.integers(y0, y1))) for _ in range(3)]
            d.polygon(pts, fill=fill, outline=line, width=width)


def _gradient(rng, w: int, h: int) -> np.ndarray:
    a, b = np.array(_colour(rng, 120, 256), np.float32), np.array(_colour(rng), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if rng.random() < 0.5:  # linear, any direction (a sky when it runs top to bottom)
        t = np.cos(rng.uniform(0, np.pi)) * xx / w + np.sin(rng.uniform(0, np.pi)) * yy / h
    else:  # radial
        t = np.hypot(xx / w - rng.random(), yy / h - rng.random())
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    return a + (b - a) * t[..., None] ** rng.uniform(0.5, 2.0)


def _panel(rng, d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    f = ImageFont.load_default(size=int(rng.choice([11, 13, 15])))
    d.rectangle((0, 0, w, int(rng.integers(20, 40))), fill=_colour(rng, 40, 200))
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w - 60)), int(rng.integers(40, h - 30))
        x1, y1 = x0 + int(rng.integers(50, 200)), y0 + int(rng.integers(18, 40))
        d.rounded_rectangle((x0, y0, x1, y1), radius=int(rng.integers(0, 8)), fill=_colour(rng, 150, 256),
                            outline=_colour(rng, 60, 160))
        d.text((x0 + 6, y0 + 4), _words(rng, 2), font=f, fill=_colour(rng, 0, 60))


def render(kind: str, seed: int, size: tuple[int, int] = (512, 384)) -> Image.Image:
    """One flat graphic of `kind` (KINDS); the same (kind, seed) gives the same pixels."""
    rng = np.random.default_rng([KINDS.index(kind), seed])
    w, h = size
    if kind == "gradient":
        im = Image.fromarray(np.clip(_gradient(rng, w, h), 0, 255).round().astype(np.uint8))
    else:
        light = kind in ("page", "panel") or rng.random() < 0.6
        im = Image.new("RGB", (w, h), _colour(rng, 225, 256) if light else _colour(rng, 0, 256))
        {"page": _page, "drawing": _drawing, "panel": _panel}[kind](rng, ImageDraw.Draw(im), w, h)
    if rng.random() < 0.3:  # a scan or a resized screenshot is a little soft
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return im


def pool(per_kind: int, seed: int = 0) -> list[Image.Image]:
    """`per_kind` graphics of every kind, for PhotoPool."""
    return [render(k, seed * 10_000 + i) for k in KINDS for i in range(per_kind)]
