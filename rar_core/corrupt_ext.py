"""A second, independent degradation source for `rar bench`: albumentations (MIT, PyPI).

Why: a model tuned on rar_core.degrade can learn that generator's fingerprints; the bench also
reports rows made by a maintained third-party corruption library, so a gain that holds only on
our own synthetic degradations shows up.  albumentations needs no torchvision and runs on
NumPy 2 offline (its update check is switched off below).  The severities are fixed,
moderate settings, one corruption per image (image i -> CORRUPTIONS[i % len]).

Optional: `available()` is False when the package is not installed; the bench then says so.
"""

from __future__ import annotations

import os

import numpy as np

# name -> (albumentations class, keyword arguments); every range collapsed to one value so a
# row's severity does not depend on the draw, only its random pattern does (seeded).
CORRUPTIONS: dict[str, tuple[str, dict]] = {
    "gauss_noise": ("GaussNoise", {"std_range": (0.08, 0.08)}),
    "iso_noise": ("ISONoise", {"color_shift": (0.03, 0.03), "intensity": (0.6, 0.6)}),
    "motion_blur": ("MotionBlur", {"blur_limit": (9, 9)}),
    "defocus": ("Defocus", {"radius": (4, 4), "alias_blur": (0.1, 0.1)}),
    "jpeg": ("ImageCompression", {"quality_range": (20, 20)}),
    "fog": ("RandomFog", {"fog_coef_range": (0.4, 0.4), "alpha_coef": 0.1}),
    "rain": ("RandomRain", {"brightness_coefficient": 0.8, "drop_width": 1, "blur_value": 3}),
    "snow": ("RandomSnow", {"snow_point_range": (0.1, 0.1), "brightness_coeff": 1.5}),
    "low_light": ("RandomGamma", {"gamma_limit": (220, 220)}),
    "downscale": ("Downscale", {"scale_range": (0.35, 0.35)}),
}


def available() -> tuple[bool, str]:
    """(importable, version or the import error)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # never reach the network
    try:
        import albumentations as A  # type: ignore
    except Exception as e:  # noqa: BLE001 - any failure means "not available here"
        return False, f"{type(e).__name__}: {e}"
    return True, A.__version__


def corrupt(clean: np.ndarray, name: str, seed: int) -> np.ndarray:
    """Apply corruption `name` to a float HxWx3 image in [0,1]; float32 result, same shape."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A  # type: ignore

    cls, kwargs = CORRUPTIONS[name]
    t = A.Compose([getattr(A, cls)(p=1.0, **kwargs)], seed=int(seed))
    u8 = (np.clip(clean, 0, 1) * 255 + 0.5).astype(np.uint8)
    out = t(image=u8)["image"]
    return out.astype(np.float32) / 255.0
