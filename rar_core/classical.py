"""Classical restoration baseline for `rar bench`: diagnose by image statistics, then fix.

Why: the benchmark must show what RAR adds over an automatic, training-free pipeline built
from standard tools (scikit-image denoisers, dark-channel-prior dehazing, gamma/contrast for
low light, Wiener deconvolution, unsharp masking, morphological streak removal).  Diagnosis uses
cheap statistics with thresholds set on this repo's synthetic degradations; the repair steps
run in reverse physical order (processing -> camera -> scene), mirroring rar_core.degrade.

Images are float32 HxWx3 in [0, 1].  Needs numpy, scipy and scikit-image (no OpenCV, no torch).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Stats", "noise_sigma", "image_stats", "diagnose", "restore", "dehaze_dcp", "REPAIR_ORDER"]

# Reverse of degrade.PHYSICAL_ORDER: undo the last thing that happened first.
REPAIR_ORDER = ("jpeg", "lowres", "noise", "motion", "defocus", "dark", "snow", "rain", "haze")


@dataclass
class Stats:
    """Cheap no-reference statistics that separate the degradation types."""

    noise_sigma: float     # MAD estimate of the noise std (see noise_sigma())
    mean_luma: float       # overall brightness
    p99_luma: float        # highlight level (dark images have no highlights)
    dark_channel: float    # mean of the 15-px dark channel (haze lifts it)
    contrast: float        # 5..95 percentile range of luma (haze and low light shrink it)
    sharpness: float       # Laplacian energy relative to gradient energy (blur lowers it)
    blockiness: float      # excess luma jump on the 8x8 JPEG grid vs elsewhere
    streaks: float         # excess of bright near-vertical over near-horizontal thin structures


def _luma(x: np.ndarray) -> np.ndarray:
    return x @ np.array([0.299, 0.587, 0.114], np.float32)


def _dark_channel(x: np.ndarray, size: int = 15) -> np.ndarray:
    return ndimage.minimum_filter(x.min(axis=2), size=size, mode="nearest")


def noise_sigma(x: np.ndarray) -> float:
    """Noise std from the median absolute finest-scale Haar diagonal detail (Donoho's MAD rule).

    Same idea as skimage.restoration.estimate_sigma, without needing PyWavelets."""
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    a = x[:h, :w]
    d = (a[0::2, 0::2] - a[1::2, 0::2] - a[0::2, 1::2] + a[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(d)) / 0.6745)


def image_stats(image: np.ndarray) -> Stats:
    x = np.asarray(image, np.float32)
    y = _luma(x)
    sigma = noise_sigma(x)
    gx, gy = np.diff(y, axis=1), np.diff(y, axis=0)
    grad = float(np.mean(gx ** 2) + np.mean(gy ** 2)) + 1e-8
    lap = float(np.mean(ndimage.laplace(ndimage.gaussian_filter(y, 0.5)) ** 2))
    col = np.abs(gx).mean(axis=0)                       # mean |jump| across each column edge
    on_grid = col[7::8].mean() if col.size > 8 else 0.0
    blockiness = float(on_grid / (col.mean() + 1e-8) - 1.0)
    # Rain falls near-vertically: a vertical opening keeps streaks, a horizontal one removes
    # them; isotropic texture and noise affect both alike, so the asymmetry isolates rain.
    ov, oh = ndimage.grey_opening(y, size=(7, 1)), ndimage.grey_opening(y, size=(1, 7))
    streaks = float(np.mean((ov - oh) > 0.05) - np.mean((oh - ov) > 0.05))
    p5, p95 = np.percentile(y, [5, 95])
    return Stats(noise_sigma=sigma, mean_luma=float(y.mean()), p99_luma=float(np.percentile(y, 99)),
                 dark_channel=float(_dark_channel(x).mean()), contrast=float(p95 - p5),
                 sharpness=lap / grad, blockiness=blockiness, streaks=streaks)


def diagnose(image: np.ndarray, stats: Stats | None = None) -> list[str]:
    """Labels (degrade.py names) this image seems to carry, in repair order."""
    s = stats or image_stats(image)
    found = set()
    # Thresholds sit between clean and severity-3 medians on the 12 eval photos (256 px crops).
    if s.p99_luma < 0.45:
        found.add("dark")
    elif s.dark_channel > 0.38 and s.mean_luma > 0.5:
        found.add("haze")
    if s.noise_sigma > 0.035:
        found.add("noise")
    if s.blockiness > 0.15:
        found.add("jpeg")
    if s.streaks > 0.05:
        found.add("rain")
    if s.sharpness < 0.78 and "noise" not in found:
        found.add("defocus")                             # one generic deblur for any blur
    return [n for n in REPAIR_ORDER if n in found]


# ---------------------------------------------------------------------------------------------
# Repairs.

def _box(a: np.ndarray, r: int) -> np.ndarray:
    return ndimage.uniform_filter(a, size=2 * r + 1, mode="reflect")


def _guided_filter(guide: np.ndarray, src: np.ndarray, r: int = 20, eps: float = 1e-3):
    """He et al. guided filter (grey guide): edge-aware smoothing of the transmission map."""
    mg, ms = _box(guide, r), _box(src, r)
    cov = _box(guide * src, r) - mg * ms
    var = _box(guide * guide, r) - mg * mg
    a = cov / (var + eps)
    b = ms - a * mg
    return _box(a, r) * guide + _box(b, r)


def dehaze_dcp(x: np.ndarray, omega: float = 0.9, t_min: float = 0.15) -> np.ndarray:
    """Dark channel prior dehazing (He, Sun, Tang 2009) with guided-filter refinement."""
    dark = _dark_channel(x)
    n = max(1, dark.size // 1000)
    idx = np.argpartition(dark.ravel(), -n)[-n:]
    airlight = np.maximum(x.reshape(-1, 3)[idx].mean(axis=0), 0.5)
    t = 1.0 - omega * _dark_channel(x / airlight)
    t = np.clip(_guided_filter(_luma(x), t), t_min, 1.0)[:, :, None]
    return (x - airlight) / t + airlight


def _brighten(x: np.ndarray, target: float = 0.45) -> np.ndarray:
    """Gamma that maps the mean luma to `target`, then a 1..99 percentile stretch."""
    m = float(np.clip(_luma(x).mean(), 1e-3, 0.99))
    gamma = np.clip(np.log(target) / np.log(m), 0.2, 1.0)
    y = np.power(np.clip(x, 0, 1), gamma)
    lo, hi = np.percentile(y, [0.5, 99.5])
    return (y - lo) / max(hi - lo, 1e-3)


def _denoise(x: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    return denoise_nl_means(x, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                            fast_mode=True, channel_axis=-1)


def _deblur(x: np.ndarray, psf_sigma: float = 1.6, balance: float = 0.03) -> np.ndarray:
    """Non-blind Wiener deconvolution with an assumed Gaussian PSF (blind kernels are unknown)."""
    from skimage.restoration import wiener

    r = int(np.ceil(3 * psf_sigma))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    psf = np.exp(-(xx ** 2 + yy ** 2) / (2 * psf_sigma ** 2))
    psf /= psf.sum()
    pad = 2 * r
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    out = np.stack([wiener(xp[:, :, c], psf, balance, clip=False) for c in range(3)], axis=2)
    return out[pad:-pad, pad:-pad]


def _unsharp(x: np.ndarray, radius: float = 1.5, amount: float = 0.7) -> np.ndarray:
    blur = ndimage.gaussian_filter(x, sigma=(radius, radius, 0))
    return x + amount * (x - blur)


def _destreak(x: np.ndarray) -> np.ndarray:
    """Remove thin bright near-vertical streaks/flakes: grey opening with a horizontal line."""
    opened = ndimage.grey_opening(x, size=(1, 5, 1))
    return np.minimum(x, ndimage.median_filter(opened, size=(3, 1, 1)) + 0.02)


def _deblock(x: np.ndarray) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(x, weight=0.04, channel_axis=-1)


def restore(image: np.ndarray, labels: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Repair `labels` (diagnosed from statistics when None); returns (image, labels used)."""
    x = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if labels is None:
        labels = diagnose(x)
    todo = [n for n in REPAIR_ORDER if n in set(labels)]
    deblurred = False
    for n in todo:
        if n == "jpeg":
            x = _deblock(x)
        elif n == "lowres":
            x = _unsharp(x, radius=2.0, amount=0.8)
        elif n == "noise":
            x = _denoise(x, max(noise_sigma(x), 0.01))
        elif n in ("motion", "defocus") and not deblurred:
            x, deblurred = _deblur(x), True
        elif n == "dark":
            x = _brighten(x)
            x = np.clip(x, 0, 1)
            sigma = noise_sigma(x)
            if sigma > 0.015:                            # brightening lifts the hidden noise
                x = _denoise(x, sigma)
        elif n in ("rain", "snow"):
            x = _destreak(x)
        elif n == "haze":
            x = dehaze_dcp(x)
        x = np.clip(x, 0.0, 1.0).astype(np.float32)
    return x.astype(np.float32), todo
