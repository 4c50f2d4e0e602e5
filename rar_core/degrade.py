"""Synthetic degradations with labels, for training and benchmarking RAR.

Why: no registry ships paired degraded/clean data, so every training pair and every benchmark
input is synthesised from clean photos here.  Each op has five severities, a canonical label
(what the LQA must identify) and a human-readable answer.  Composites run in physical order:
scene/weather (haze, rain, snow) -> camera (low light, defocus, motion, noise) -> processing
(low resolution, JPEG), so e.g. JPEG blocks are never blurred and noise is never hazed.

Images are float32 HxWx3 in [0, 1]; every function returns a new clipped float32 array and
draws all randomness from the given ``np.random.Generator`` (same seed -> same output).
Pure numpy / scipy / Pillow: no torch, OpenCV or ComfyUI needed.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage, signal

__all__ = [
    "Degradation", "Sample", "DEGRADATIONS", "LABELS", "ANSWERS", "PHYSICAL_ORDER", "GROUPS",
    "SEVERITIES", "apply", "degrade", "random_single", "random_composite", "random_group",
    "answer_text", "physical_sort", "group_of",
    "gaussian_noise", "poisson_gaussian_noise", "defocus_blur", "motion_blur", "haze", "rain",
    "snow", "low_light", "jpeg", "low_resolution", "disk_kernel", "line_kernel",
]

SEVERITIES = (1, 2, 3, 4, 5)

Fn = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


# ---------------------------------------------------------------------------------------------
# Helpers.

def _as_image(image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"expected a float image in [0, 1], got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _out(a: np.ndarray) -> np.ndarray:
    return np.clip(a, 0.0, 1.0).astype(np.float32, copy=False)


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _level(table: Sequence[float], severity: int, rng: np.random.Generator,
           jitter: float = 0.08) -> float:
    """Parameter for a severity, jittered a little so one level is a band, not a point.

    Level ratios in the tables are >= 1.25, so with 8 % jitter the bands never overlap and a
    higher severity is always stronger.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be in 1..5, got {severity!r}")
    return float(table[severity - 1]) * float(rng.uniform(1.0 - jitter, 1.0 + jitter))


def _convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Same-size 2-D convolution per channel with reflect padding (FFT; fast for big kernels)."""
    kh, kw = kernel.shape
    py, px = kh // 2, kw // 2
    padded = np.pad(image, ((py, kh - 1 - py), (px, kw - 1 - px), (0, 0)), mode="reflect")
    return signal.fftconvolve(padded, kernel[:, :, None].astype(np.float32), mode="valid",
                              axes=(0, 1))


def disk_kernel(radius: float) -> np.ndarray:
    """Anti-aliased uniform disk (a defocused lens PSF), normalised to sum 1."""
    r = max(float(radius), 0.5)
    n = int(np.ceil(r))
    yy, xx = np.mgrid[-n:n + 1, -n:n + 1].astype(np.float32)
    # 4x supersampled coverage for a smooth edge.
    sub = (np.arange(4, dtype=np.float32) + 0.5) / 4 - 0.5
    cover = np.zeros_like(yy)
    for dy in sub:
        for dx in sub:
            cover += ((yy + dy) ** 2 + (xx + dx) ** 2 <= r * r)
    k = cover / cover.sum()
    return k.astype(np.float32)


def line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """Anti-aliased straight line of `length` px at `angle_deg` (a linear motion PSF), sum 1."""
    length = max(float(length), 1.0)
    n = int(np.ceil(length / 2)) + 1
    k = np.zeros((2 * n + 1, 2 * n + 1), np.float32)
    t = np.linspace(-length / 2, length / 2, int(length * 4) + 1)
    a = np.deg2rad(angle_deg)
    xs, ys = n + t * np.cos(a), n - t * np.sin(a)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = (xs - x0).astype(np.float32), (ys - y0).astype(np.float32)
    for ox, oy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                      (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (y0 + oy, x0 + ox), w)
    return k / k.sum()


def _luma(image: np.ndarray) -> np.ndarray:
    return image @ np.array([0.299, 0.587, 0.114], np.float32)


def _resize(image: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    """Float-exact per-channel resize with Pillow ('F' mode); size is (width, height)."""
    chans = [np.asarray(Image.fromarray(image[:, :, c]).resize(size, resample), np.float32)
             for c in range(image.shape[2])]
    return np.stack(chans, axis=2)


# ---------------------------------------------------------------------------------------------
# Degradations.  Each: (image float32 HxWx3 in [0,1], severity 1..5, rng) -> new image.

_GAUSS_SIGMA = (0.02, 0.04, 0.065, 0.095, 0.135)        # x255: 5, 10, 17, 24, 34


def gaussian_noise(image, severity, rng):
    """Additive white Gaussian noise, independent per channel (the AWGN benchmark model)."""
    x = _as_image(image)
    sigma = _level(_GAUSS_SIGMA, severity, rng)
    return _out(x + rng.standard_normal(x.shape, dtype=np.float32) * sigma)


_PG_PEAK = (600.0, 250.0, 100.0, 45.0, 20.0)            # photons at white
_PG_READ = (0.004, 0.008, 0.012, 0.018, 0.025)


def _shot_read(x: np.ndarray, peak: float, read: float, rng: np.random.Generator) -> np.ndarray:
    """Poisson-Gaussian noise in its heteroscedastic Gaussian form (Foi et al. 2008):
    variance = x / peak + read^2.  Several times faster than rng.poisson and the standard model."""
    std = np.sqrt(np.maximum(x, 0.0) / peak + read * read)
    return x + rng.standard_normal(x.shape, dtype=np.float32) * std


def poisson_gaussian_noise(image, severity, rng):
    """Shot noise (Poisson, signal dependent) plus read noise: a real sensor's noise model."""
    x = _as_image(image)
    peak = 1.0 / _level([1.0 / p for p in _PG_PEAK], severity, rng)
    read = _level(_PG_READ, severity, rng)
    return _out(_shot_read(x, peak, read, rng))


def noise(image, severity, rng):
    """Label "noise": Gaussian or Poisson-Gaussian with equal odds."""
    if rng.random() < 0.5:
        return gaussian_noise(image, severity, rng)
    return poisson_gaussian_noise(image, severity, rng)


_DEFOCUS_R = (1.2, 2.0, 3.0, 4.2, 5.8)


def defocus_blur(image, severity, rng):
    """Out-of-focus blur: convolution with a uniform disk (thin-lens circle of confusion)."""
    x = _as_image(image)
    return _out(_convolve(x, disk_kernel(_level(_DEFOCUS_R, severity, rng))))


_MOTION_LEN = (5.0, 9.0, 14.0, 20.0, 28.0)


def motion_blur(image, severity, rng):
    """Linear camera-shake blur: a line PSF with a random direction."""
    x = _as_image(image)
    angle = rng.uniform(0.0, 180.0)
    return _out(_convolve(x, line_kernel(_level(_MOTION_LEN, severity, rng), angle)))


def depth_proxy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relative scene depth in [0, 1] without a depth net: top and bright regions are far.

    A tilted vertical gradient (ground near, horizon far) blended with a heavily smoothed
    luminance (sky and distant haze are bright); good enough for plausible scattering.
    """
    h, w = image.shape[:2]
    yy = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    vert = np.clip(yy + rng.uniform(-0.15, 0.15) * xx, 0.0, 1.0)
    small = _luma(image[::4, ::4])
    lum = ndimage.gaussian_filter(small, sigma=max(h, w) / 64.0, mode="reflect")
    lum = ndimage.zoom(lum, (h / small.shape[0], w / small.shape[1]), order=1)[:h, :w]
    lum = (lum - lum.min()) / (np.ptp(lum) + 1e-6)
    mix = rng.uniform(0.5, 0.8)
    d = mix * vert + (1.0 - mix) * lum
    d = (d - d.min()) / (np.ptp(d) + 1e-6)
    return (0.15 + 0.85 * d).astype(np.float32)


_HAZE_BETA = (0.45, 0.75, 1.1, 1.55, 2.1)


def haze(image, severity, rng):
    """Atmospheric scattering: I = J*t + A*(1-t), t = exp(-beta*d) with a depth proxy d."""
    x = _as_image(image)
    beta = _level(_HAZE_BETA, severity, rng)
    airlight = rng.uniform(0.8, 0.95) + rng.uniform(-0.03, 0.03, size=3).astype(np.float32)
    t = np.exp(-beta * depth_proxy(x, rng))[:, :, None]
    return _out(x * t + airlight.astype(np.float32) * (1.0 - t))


_RAIN_DENSITY = (0.006, 0.01, 0.015, 0.021, 0.03)       # streak seeds per pixel
_RAIN_LEN = (10.0, 14.0, 19.0, 25.0, 32.0)
_RAIN_GAIN = (0.8, 0.9, 1.0, 1.1, 1.2)


def rain(image, severity, rng):
    """Rain streaks: sparse bright seeds smeared by a long line PSF near vertical, screen-blended."""
    x = _as_image(image)
    h, w = x.shape[:2]
    density = _level(_RAIN_DENSITY, severity, rng)
    length = _level(_RAIN_LEN, severity, rng)
    gain = _level(_RAIN_GAIN, severity, rng)
    angle = 90.0 + rng.uniform(-20.0, 20.0)
    seeds = (rng.random((h, w), dtype=np.float32) < density) * rng.uniform(
        0.5, 1.0, size=(h, w)).astype(np.float32)
    seeds = ndimage.gaussian_filter(seeds, sigma=0.6)
    streak = signal.fftconvolve(seeds, line_kernel(length, angle), mode="same")
    streak = np.clip(streak * (gain * length / 3.0), 0.0, 1.0)[:, :, None]
    return _out(1.0 - (1.0 - x) * (1.0 - streak))


_DARK_GAIN = (0.6, 0.45, 0.32, 0.22, 0.14)
_DARK_GAMMA = (1.2, 1.35, 1.5, 1.7, 1.9)


def low_light(image, severity, rng):
    """Under-exposure: gamma (crushed shadows), gain (less light) and weak shot/read noise."""
    x = _as_image(image)
    gain = _level(_DARK_GAIN, severity, rng)
    gamma = _level(_DARK_GAMMA, severity, rng, jitter=0.05)
    y = gain * np.power(x, gamma, dtype=np.float32)
    peak = 1500.0 * gain                                    # fewer photons when darker
    return _out(_shot_read(y, peak, 0.003, rng))


_JPEG_Q = (55, 38, 25, 15, 8)


def jpeg(image, severity, rng):
    """JPEG compression (Pillow, 4:2:0 chroma subsampling): blocking and ringing."""
    x = _as_image(image)
    q = int(round(_level(_JPEG_Q, severity, rng, jitter=0.1)))
    u8 = (x * 255.0 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=max(q, 2), subsampling=2)
    buf.seek(0)
    return _out(np.asarray(Image.open(buf).convert("RGB"), np.float32) / 255.0)


_LOWRES_FACTOR = (1.5, 2.0, 3.0, 4.0, 6.0)


def low_resolution(image, severity, rng):
    """Loss of resolution: antialiased bicubic downscale by a factor, then bicubic upscale."""
    x = _as_image(image)
    h, w = x.shape[:2]
    f = _level(_LOWRES_FACTOR, severity, rng, jitter=0.05)
    small = (max(1, int(round(w / f))), max(1, int(round(h / f))))
    down = _resize(x, small, Image.Resampling.BICUBIC)
    return _out(_resize(down, (w, h), Image.Resampling.BICUBIC))


_SNOW_DENSITY = (0.0015, 0.003, 0.005, 0.008, 0.012)
_SNOW_VEIL = (0.04, 0.08, 0.12, 0.17, 0.23)


def snow(image, severity, rng):
    """Falling snow: two layers of soft flakes (small/far, large/near) and a whitening veil."""
    x = _as_image(image)
    h, w = x.shape[:2]
    density = _level(_SNOW_DENSITY, severity, rng)
    veil = _level(_SNOW_VEIL, severity, rng)
    angle = 90.0 + rng.uniform(-30.0, 30.0)
    flakes = np.zeros((h, w), np.float32)
    for size, share, smear in ((0.7, 0.7, 3.0), (1.6, 0.3, 6.0)):
        seeds = (rng.random((h, w), dtype=np.float32) < density * share).astype(np.float32)
        seeds *= rng.uniform(0.6, 1.0, size=(h, w)).astype(np.float32)
        layer = ndimage.gaussian_filter(seeds, sigma=size) * (2.0 * np.pi * size * size)
        layer = signal.fftconvolve(layer, line_kernel(smear, angle), mode="same")
        flakes = np.maximum(flakes, np.clip(layer * 1.5, 0.0, 1.0))
    y = x * (1.0 - veil) + 0.9 * veil
    f = flakes[:, :, None]
    return _out(1.0 - (1.0 - y) * (1.0 - 0.95 * f))


# ---------------------------------------------------------------------------------------------
# Registry.

@dataclass(frozen=True)
class Degradation:
    """One labelled degradation: canonical label, LQA answer, physical stage, and the op."""

    name: str
    answer: str
    stage: str           # "scene" | "camera" | "processing"
    fn: Fn = field(repr=False)

    def __call__(self, image, severity: int, rng) -> np.ndarray:
        return self.fn(image, int(severity), _rng(rng))


# Order matters: it *is* the physical order used for composites.
DEGRADATIONS: dict[str, Degradation] = {d.name: d for d in (
    Degradation("haze", "Haze", "scene", haze),
    Degradation("rain", "Rain", "scene", rain),
    Degradation("snow", "Snow", "scene", snow),
    Degradation("dark", "Low light", "camera", low_light),
    Degradation("defocus", "Defocus blur", "camera", defocus_blur),
    Degradation("motion", "Motion blur", "camera", motion_blur),
    Degradation("noise", "Noise", "camera", noise),
    Degradation("lowres", "Low resolution", "processing", low_resolution),
    Degradation("jpeg", "JPEG compression", "processing", jpeg),
)}
LABELS: tuple[str, ...] = tuple(DEGRADATIONS)
PHYSICAL_ORDER = LABELS
ANSWERS: dict[str, str] = {k: d.answer for k, d in DEGRADATIONS.items()}
SEVERITY_WORDS = {1: "very mild", 2: "mild", 3: "moderate", 4: "severe", 5: "very severe"}

# MiO100 composite protocol (AgenticIR), combos listed as in the paper; apply() sorts them.
GROUPS: dict[str, list[tuple[str, ...]]] = {
    "A": [("rain", "haze"), ("motion", "lowres"), ("dark", "noise"), ("defocus", "jpeg"),
          ("noise", "jpeg"), ("rain", "lowres"), ("motion", "dark"), ("defocus", "haze")],
    "B": [("motion", "jpeg"), ("haze", "noise"), ("defocus", "lowres"), ("rain", "dark")],
    "C": [("haze", "motion", "lowres"), ("rain", "noise", "lowres"), ("dark", "defocus", "jpeg"),
          ("motion", "defocus", "noise")],
}

# Pairs that make no physical sense together; random composites avoid them.
INCOMPATIBLE = (frozenset({"rain", "snow"}), frozenset({"haze", "dark"}))

# Severity odds: singles cover the full range; composites lean milder so the stack stays
# restorable (three severe ops leave nothing to recover).
SINGLE_P = (0.2, 0.2, 0.2, 0.2, 0.2)
COMPOSITE_P = (0.25, 0.3, 0.25, 0.15, 0.05)


def physical_sort(names: Sequence[str]) -> list[str]:
    """Names in the order the physics applies them; unknown or repeated names raise."""
    unknown = [n for n in names if n not in DEGRADATIONS]
    if unknown:
        raise KeyError(f"unknown degradation(s) {unknown}; known: {list(LABELS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"repeated degradation in {list(names)}")
    return sorted(names, key=LABELS.index)


def group_of(names: Sequence[str]) -> str | None:
    """MiO100 group ("A"/"B"/"C") that contains this combination, else None."""
    key = set(names)
    for g, combos in GROUPS.items():
        if any(set(c) == key for c in combos):
            return g
    return None


def answer_text(labels: Sequence[str]) -> str:
    """LQA answer for a label list, e.g. ["haze", "lowres"] -> "Haze, Low resolution"."""
    return ", ".join(ANSWERS[n] for n in labels) if labels else "No degradation"


@dataclass
class Sample:
    """A degraded image and everything the LQA/UIR stages need to know about it."""

    image: np.ndarray
    labels: list[str]
    severities: list[int]

    @property
    def answer(self) -> str:
        return answer_text(self.labels)

    @property
    def answers(self) -> list[str]:
        return [ANSWERS[n] for n in self.labels]

    @property
    def group(self) -> str | None:
        return group_of(self.labels) if len(self.labels) > 1 else None


def degrade(image: np.ndarray, names: Sequence[str], severities: int | Sequence[int],
            rng) -> Sample:
    """Apply `names` in physical order (whatever order they are given in) and label the result."""
    x = _as_image(image)
    rng = _rng(rng)
    names = list(names)
    sev = [int(severities)] * len(names) if np.isscalar(severities) else [int(s) for s in severities]
    if len(sev) != len(names):
        raise ValueError(f"{len(names)} degradations but {len(sev)} severities")
    by_name = dict(zip(names, sev))
    order = physical_sort(names)
    for n in order:
        x = DEGRADATIONS[n](x, by_name[n], rng)
    return Sample(x, order, [by_name[n] for n in order])


def apply(image: np.ndarray, names: Sequence[str], severities: int | Sequence[int],
          rng) -> tuple[np.ndarray, list[str]]:
    """Degrade and return ``(image, labels)``; labels come back in physical order."""
    s = degrade(image, names, severities, rng)
    return s.image, s.labels


def _severity(rng: np.random.Generator, p: Sequence[float]) -> int:
    return int(rng.choice(SEVERITIES, p=p))


def random_single(image: np.ndarray, rng, severity: int | None = None,
                  names: Sequence[str] = LABELS) -> Sample:
    """One random degradation (uniform over `names`) at a random or given severity."""
    rng = _rng(rng)
    name = str(rng.choice(list(names)))
    sev = severity if severity is not None else _severity(rng, SINGLE_P)
    return degrade(image, [name], [sev], rng)


def random_composite(image: np.ndarray, rng, k: int | None = None,
                     severities: Sequence[int] | None = None, names: Sequence[str] = LABELS) -> Sample:
    """k (2 or 3, random if None) distinct, physically compatible degradations of `names`, in
    physical order."""
    rng = _rng(rng)
    k = int(rng.integers(2, 4)) if k is None else int(k)
    if not 1 <= k <= len(names):
        raise ValueError(f"k must be in 1..{len(names)}, got {k}")
    while True:
        chosen = [str(n) for n in rng.choice(list(names), size=k, replace=False)]
        if not any(bad <= set(chosen) for bad in INCOMPATIBLE):
            break
    sev = list(severities) if severities is not None else [
        _severity(rng, COMPOSITE_P) for _ in chosen]
    return degrade(image, chosen, sev, rng)


def random_group(image: np.ndarray, rng, group: str | None = None,
                 severities: Sequence[int] | None = None) -> Sample:
    """A combination from the MiO100 protocol (``group`` "A"/"B"/"C", or any if None)."""
    rng = _rng(rng)
    combos = GROUPS[group] if group is not None else [c for g in GROUPS.values() for c in g]
    combo = combos[int(rng.integers(len(combos)))]
    sev = list(severities) if severities is not None else [
        _severity(rng, COMPOSITE_P) for _ in combo]
    return degrade(image, combo, sev, rng)
