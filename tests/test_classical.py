"""Tests for the classical baseline: diagnosis on clear cases and that repairs actually help."""
import numpy as np

from rar_core import classical as C
from rar_core import degrade as D


def _photo(h=128, w=128):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.2 + 0.6 * xx / w, 0.2 + 0.6 * yy / h,
                    0.5 + 0.3 * np.sin(xx / 5.0) * np.cos(yy / 6.0)], axis=2)
    img[40:80, 30:70] = (0.85, 0.25, 0.15)
    img[10:20, :] = 0.05                                  # a dark band: haze lifts it
    return np.clip(img, 0.0, 1.0).astype(np.float32)


IMG = _photo()


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2))


def test_noise_sigma_estimate():
    rng = np.random.default_rng(0)
    noisy = IMG + rng.standard_normal(IMG.shape).astype(np.float32) * 0.05
    assert abs(C.noise_sigma(noisy) - 0.05) < 0.01
    assert C.noise_sigma(IMG) < 0.01


def test_diagnose_clear_cases():
    assert C.diagnose(IMG) == []
    rng = np.random.default_rng(0)
    assert "noise" in C.diagnose(D.gaussian_noise(IMG, 4, rng))
    assert "dark" in C.diagnose(D.low_light(IMG, 4, rng))
    assert "haze" in C.diagnose(D.haze(IMG, 4, rng))
    assert "defocus" in C.diagnose(D.defocus_blur(IMG, 4, rng))


def test_restore_improves_psnr_with_known_labels():
    rng = np.random.default_rng(1)
    for name in ("noise", "dark", "haze"):
        x = D.DEGRADATIONS[name](IMG, 4, rng)
        y, used = C.restore(x, [name])
        assert used == [name]
        assert y.dtype == np.float32 and y.shape == IMG.shape and 0 <= y.min() and y.max() <= 1
        assert _psnr(y, IMG) > _psnr(x, IMG) + 1.0, name


def test_restore_auto_leaves_clean_alone_and_orders_repairs():
    y, used = C.restore(IMG)
    assert used == [] and np.allclose(y, IMG)
    _, used = C.restore(IMG, ["haze", "jpeg", "noise"])
    assert used == ["jpeg", "noise", "haze"]              # reverse physical order
