#!/usr/bin/env python3
"""Write the README's small degraded sample (rar_core/assets/sample_degraded.png).

Why a script and not a committed photo: the sample is derived from an evaluation image
(fetched by scripts/fetch_data.py), so it is rebuilt deterministically from the pinned data.
The PNG carries its labels in text chunks (rar:labels, rar:severities, rar:source, rar:seed)
so tools can check what the model should find.  The file is kept under 100 KB, which is why
the default is defocus + haze (MiO100 group A) on Kodak houses: any visible noise makes a
256x256 PNG incompressible (~150 KB), so haze + noise only fits at smaller sizes.

Usage:  python scripts/make_sample.py [--data data] [--out rar_core/assets/sample_degraded.png]
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from rar_core import degrade  # noqa: E402

DEFAULT_OUT = REPO / "rar_core" / "assets" / "sample_degraded.png"
DEFAULT_IMAGE = "eval/kodak/I08.bmp"
MAX_BYTES = 100_000


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to `size` (Lanczos), then take the central size x size square."""
    h, w = image.shape[:2]
    s = size / min(h, w)
    im = Image.fromarray(image).resize((max(size, round(w * s)), max(size, round(h * s))),
                                       Image.Resampling.LANCZOS)
    a = np.asarray(im)
    y, x = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[y:y + size, x:x + size]


def make_sample(data: Path = REPO / "data", out: Path = DEFAULT_OUT, image: str = DEFAULT_IMAGE,
                names=("defocus", "haze"), severities=(2, 3), seed: int = 0,
                size: int = 256) -> dict:
    """Degrade one eval image (center crop, `size` px) and write a labelled PNG; return its info."""
    src = Path(data) / image
    if not src.exists():
        raise FileNotFoundError(f"{src} not found; run `python scripts/fetch_data.py` first")
    clean = center_crop(np.asarray(Image.open(src).convert("RGB")), size)
    sample = degrade.degrade(clean.astype(np.float32) / 255.0, list(names), list(severities),
                             np.random.default_rng(seed))
    u8 = (sample.image * 255.0 + 0.5).astype(np.uint8)
    info = {"labels": sample.labels, "severities": sample.severities, "answer": sample.answer,
            "source": image, "seed": seed, "size": size}
    meta = PngImagePlugin.PngInfo()
    for k, v in info.items():
        meta.add_text(f"rar:{k}", json.dumps(v))
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG", optimize=True, pnginfo=meta)
    if buf.tell() > MAX_BYTES:
        raise ValueError(f"sample is {buf.tell()} bytes (> {MAX_BYTES}); drop noise or use a smaller --size")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    info["bytes"] = buf.tell()
    info["path"] = str(out)
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO / "data")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--image", default=DEFAULT_IMAGE, help="path relative to --data")
    ap.add_argument("--degradations", default="defocus,haze")
    ap.add_argument("--severities", default="2,3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    a = ap.parse_args(argv)
    info = make_sample(a.data, a.out, a.image, a.degradations.split(","),
                       [int(s) for s in a.severities.split(",")], a.seed, a.size)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
