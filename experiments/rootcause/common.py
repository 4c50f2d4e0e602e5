"""Shared helpers for the root-cause experiments (issue 24). Not product code."""
from __future__ import annotations
import json, math, os, sys
from pathlib import Path
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "runs" / "rootcause"  # git-ignored
OUT.mkdir(parents=True, exist_ok=True)
DATA = Path(os.environ.get("RAR_DATA", "data"))  # scripts/fetch_data.py --out data
torch.set_num_threads(int(os.environ.get("NT", "2")))

def load(path=None):
    from rar_core.checkpoint import load_rar
    m = load_rar(path or ROOT / "rar_core/weights/rar-compact.safetensors").float().eval()
    return m

def to_t(a):  # HxWx3 float -> [1,3,H,W]
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]

def to_a(t):
    return t[0].permute(1, 2, 0).clamp(0, 1).numpy()

def psnr(a, b):
    mse = float(((a - b) ** 2).mean())
    return -10 * math.log10(mse + 1e-12)

def sat(a):  # mean HSV-like saturation: (max-min)/max
    mx, mn = a.max(-1), a.min(-1)
    return float(((mx - mn) / (mx + 1e-6)).mean())

def period_share(d, p=8):
    """Share of the (zero-mean) difference image's energy in a pattern periodic with period p px
    (the mean p x p tile over all tiles)."""
    d = d.mean(-1) if d.ndim == 3 else d
    H, W = (d.shape[0] // p) * p, (d.shape[1] // p) * p
    d = d[:H, :W] - d[:H, :W].mean()
    tile = d.reshape(H // p, p, W // p, p).mean((0, 2))
    tile = tile - tile.mean()
    return float((tile ** 2).mean() / ((d ** 2).mean() + 1e-12))

def hf_energy(a):
    """Mean |Laplacian-like high-pass| in flat-image units."""
    g = a.mean(-1)
    hp = g[1:-1, 1:-1] * 4 - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float(np.abs(hp).mean())

def font(size):
    for f in ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        if os.path.exists(f):
            return ImageFont.truetype(f, size)
    return ImageFont.load_default()

def synth(seed: int, kind: str, size: int = 256) -> np.ndarray:
    """Synthetic flat / bright content, PIL-rendered."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    if kind == "white_text":
        im = Image.new("RGB", (size, size), (255, 255, 255) if seed % 2 == 0 else (248, 247, 242))
        d = ImageDraw.Draw(im)
        for i in range(6):
            d.text((10 + int(rng.integers(20)), 10 + 40 * i), " ".join(["Lorem", "ipsum", "RAR", "dolor"][: 2 + i % 3]),
                   fill=tuple(int(c) for c in rng.integers(0, 90, 3)), font=font(int(rng.integers(14, 26))))
        return np.asarray(im, np.float32) / 255
    if kind == "flat_drawing":
        bg = tuple(int(c) for c in rng.integers(215, 256, 3))
        im = Image.new("RGB", (size, size), bg)
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(4, 9))):
            x0, y0 = rng.integers(0, size - 40, 2)
            w, h = rng.integers(30, 120, 2)
            col = tuple(int(c) for c in rng.integers(60, 256, 3))
            box = [int(x0), int(y0), int(x0 + w), int(y0 + h)]
            (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=col, outline=(40, 40, 40), width=2)
        return np.asarray(im, np.float32) / 255
    if kind == "sky":
        top = rng.uniform([0.45, 0.6, 0.85], [0.6, 0.75, 0.98])
        bot = rng.uniform([0.85, 0.9, 0.95], [0.98, 0.99, 1.0])
        a = top[None, None] * (1 - yy[..., None]) + bot[None, None] * yy[..., None]
        # a few soft clouds
        for _ in range(3):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 0.6), rng.uniform(0.08, 0.2)
            m = np.exp(-(((xx - cx) / (2 * r)) ** 2 + ((yy - cy) / r) ** 2))[..., None]
            a = a * (1 - 0.8 * m) + 0.97 * 0.8 * m
        return np.clip(a, 0, 1).astype(np.float32)
    if kind == "wallpaper":
        c1, c2 = rng.uniform(0.7, 1.0, 3), rng.uniform(0.7, 1.0, 3)
        t = (0.5 + 0.5 * np.sin(2 * np.pi * (xx * rng.uniform(0.3, 1) + yy * rng.uniform(0.3, 1)) + rng.uniform(0, 6)))[..., None]
        return (c1 * t + c2 * (1 - t)).astype(np.float32)
    if kind == "snowfield":
        n = rng.standard_normal((size, size)).astype(np.float32)
        im = Image.fromarray(((n * 40 + 128).clip(0, 255)).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(1, 3)))
        t = np.asarray(im, np.float32) / 255 - 0.5
        base = 0.9 - 0.1 * yy
        a = base[..., None] + 0.08 * t[..., None] + np.array([-0.02, 0.0, 0.03])
        return np.clip(a, 0, 1).astype(np.float32)
    raise ValueError(kind)

KINDS = ("white_text", "flat_drawing", "sky", "wallpaper", "snowfield")

def midtone(a):
    """The same content moved to mid-tones (levels 0.2..0.65)."""
    return (0.2 + 0.45 * a).astype(np.float32)

def brighten(a, rng):
    """Overexposed / pale version of a photo: exposure gain and a gamma lift, clipped."""
    g = rng.uniform(1.4, 2.0)
    return np.clip((a ** rng.uniform(0.5, 0.8)) * g * 0.75 + 0.1, 0, 1).astype(np.float32)

def example_crops(size=256):
    p = Path(os.environ.get("COMFYUI_PATH", "ComfyUI")) / "input" / "example.png"
    if not p.exists():
        return []
    im = Image.open(p).convert("RGB")
    out = [np.asarray(im.resize((size, size), Image.LANCZOS), np.float32) / 255]
    w, h = im.size
    for (x, y) in ((w // 2 - size // 2, h // 2 - size // 2), (0, 0), (w - size, h - size)):
        out.append(np.asarray(im.crop((x, y, x + size, y + size)), np.float32) / 255)
    return out

def pool_crops(n, size=256, seed=123, split="train"):
    """Deterministic crops from the training pool (train split of DATA)."""
    man = json.loads((DATA / "manifest.json").read_text())
    files = [DATA / i["file"] for i in man["images"] if i["split"] == split]
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        f = files[int(rng.integers(len(files)))]
        im = Image.open(f).convert("RGB")
        im.thumbnail((512, 512), Image.LANCZOS)
        w, h = im.size
        x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
        out.append((f.name, np.asarray(im.crop((x, y, x + size, y + size)), np.float32) / 255))
    return out

def blockiness(a, p=8):
    """Mean |step| between columns/rows across a p-px grid line over the mean |step| elsewhere
    (1.0: no grid; JPEG-like 8 px blocks give > 1)."""
    g = a.mean(-1) if a.ndim == 3 else a
    dx = np.abs(np.diff(g, axis=1)); dy = np.abs(np.diff(g, axis=0))
    ix = (np.arange(dx.shape[1]) % p) == p - 1; iy = (np.arange(dy.shape[0]) % p) == p - 1
    on = (dx[:, ix].mean() + dy[iy].mean()) / 2; off = (dx[:, ~ix].mean() + dy[~iy].mean()) / 2
    return float(on / (off + 1e-9))
