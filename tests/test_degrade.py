"""Tests for rar_core.degrade: labels, determinism, ranges, severity and the MiO100 protocol."""

import numpy as np
import pytest

from rar_core import degrade as D


def _photo(h=96, w=112, seed=0):
    """A smooth, textured synthetic photo (gradients + blobs + edges), float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h, 0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 9.0)], axis=2)
    img[h // 3: h // 2, w // 4: w // 2] = (0.9, 0.2, 0.1)            # a sharp-edged patch
    img += 0.05 * rng.standard_normal((h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.clip(img, 0.05, 0.95).astype(np.float32)


IMG = _photo()


def _mse(a, b):
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def test_canonical_labels_and_answers():
    assert set(D.LABELS) == {"noise", "defocus", "motion", "haze", "rain", "dark", "jpeg",
                             "lowres", "snow"}
    assert "blur" not in D.LABELS
    assert D.ANSWERS == {
        "noise": "Noise", "defocus": "Defocus blur", "motion": "Motion blur", "haze": "Haze",
        "rain": "Rain", "dark": "Low light", "jpeg": "JPEG compression",
        "lowres": "Low resolution", "snow": "Snow"}
    for name, deg in D.DEGRADATIONS.items():
        assert deg.name == name and deg.stage in ("scene", "camera", "processing")


@pytest.mark.parametrize("name", D.LABELS)
def test_each_op_changes_image_keeps_range_and_dtype(name):
    for sev in D.SEVERITIES:
        out = D.DEGRADATIONS[name](IMG, sev, np.random.default_rng(1))
        assert out.dtype == np.float32 and out.shape == IMG.shape
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
        assert _mse(out, IMG) > 1e-5, f"{name} at severity {sev} left the image unchanged"
    # input untouched
    assert np.array_equal(IMG, _photo())


@pytest.mark.parametrize("name", D.LABELS)
def test_severity_increases_error(name):
    errs = []
    for sev in D.SEVERITIES:
        errs.append(np.mean([_mse(D.DEGRADATIONS[name](IMG, sev, np.random.default_rng(s)), IMG)
                             for s in range(3)]))
    assert all(a < b for a, b in zip(errs, errs[1:])), f"{name}: {errs}"


@pytest.mark.parametrize("name", D.LABELS)
def test_deterministic_with_seed(name):
    a = D.DEGRADATIONS[name](IMG, 3, np.random.default_rng(123))
    b = D.DEGRADATIONS[name](IMG, 3, np.random.default_rng(123))
    c = D.DEGRADATIONS[name](IMG, 3, np.random.default_rng(124))
    assert np.array_equal(a, b)
    if name != "jpeg":  # JPEG at a fixed quality band is (nearly) deterministic by design
        assert not np.array_equal(a, c)


def test_random_single_and_composite_deterministic():
    for fn in (D.random_single, D.random_composite, D.random_group):
        s1, s2 = fn(IMG, np.random.default_rng(7)), fn(IMG, np.random.default_rng(7))
        assert s1.labels == s2.labels and s1.severities == s2.severities
        assert np.array_equal(s1.image, s2.image)


def test_apply_returns_labels_in_physical_order():
    img, labels = D.apply(IMG, ["jpeg", "noise", "haze"], [2, 3, 4], np.random.default_rng(0))
    assert labels == ["haze", "noise", "jpeg"]
    assert img.dtype == np.float32 and img.shape == IMG.shape
    s = D.degrade(IMG, ["jpeg", "noise", "haze"], [2, 3, 4], np.random.default_rng(0))
    assert s.severities == [4, 3, 2]               # severities follow their op when sorted
    assert np.array_equal(s.image, img)
    assert s.answer == "Haze, Noise, JPEG compression"
    assert s.answers == ["Haze", "Noise", "JPEG compression"]


def test_composite_order_is_physical():
    """haze -> jpeg must equal the manual chain; the reverse chain must differ."""
    rng_seed = 5
    out, _ = D.apply(IMG, ["jpeg", "haze"], [3, 3], np.random.default_rng(rng_seed))
    rng = np.random.default_rng(rng_seed)
    manual = D.jpeg(D.haze(IMG, 3, rng), 3, rng)
    assert np.array_equal(out, manual)
    rng = np.random.default_rng(rng_seed)
    reverse = D.haze(D.jpeg(IMG, 3, rng), 3, rng)
    assert not np.array_equal(out, reverse)
    stages = {"scene": 0, "camera": 1, "processing": 2}
    ranks = [stages[D.DEGRADATIONS[n].stage] for n in D.PHYSICAL_ORDER]
    assert ranks == sorted(ranks)
    order = list(D.PHYSICAL_ORDER)
    assert order.index("dark") < order.index("defocus") < order.index("noise")
    assert order.index("motion") < order.index("noise") < order.index("lowres") < order.index("jpeg")


def test_random_composite_labels():
    rng = np.random.default_rng(0)
    seen_k = set()
    for _ in range(30):
        s = D.random_composite(IMG, rng)
        seen_k.add(len(s.labels))
        assert 2 <= len(s.labels) <= 3 and len(set(s.labels)) == len(s.labels)
        assert s.labels == D.physical_sort(s.labels)
        assert all(sev in D.SEVERITIES for sev in s.severities)
        assert not any(bad <= set(s.labels) for bad in D.INCOMPATIBLE)
    assert seen_k == {2, 3}
    assert len(D.random_composite(IMG, rng, k=3).labels) == 3


def test_random_single_labels():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(60):
        s = D.random_single(IMG, rng)
        assert len(s.labels) == 1 and s.labels[0] in D.LABELS and s.answer == D.ANSWERS[s.labels[0]]
        seen.add(s.labels[0])
    assert seen == set(D.LABELS)
    assert D.random_single(IMG, rng, severity=4).severities == [4]


def test_groups_match_mio100_protocol():
    expected = {
        "A": [{"rain", "haze"}, {"motion", "lowres"}, {"dark", "noise"}, {"defocus", "jpeg"},
              {"noise", "jpeg"}, {"rain", "lowres"}, {"motion", "dark"}, {"defocus", "haze"}],
        "B": [{"motion", "jpeg"}, {"haze", "noise"}, {"defocus", "lowres"}, {"rain", "dark"}],
        "C": [{"haze", "motion", "lowres"}, {"rain", "noise", "lowres"},
              {"dark", "defocus", "jpeg"}, {"motion", "defocus", "noise"}],
    }
    assert {g: [set(c) for c in combos] for g, combos in D.GROUPS.items()} == expected
    for g, combos in D.GROUPS.items():
        for combo in combos:
            assert D.group_of(combo) == g
            s = D.random_group(IMG, np.random.default_rng(0), group=g)
            assert s.group == g and D.group_of(s.labels) == g
    assert D.group_of(["snow", "noise"]) is None


def test_input_validation():
    with pytest.raises(ValueError):
        D.apply(IMG[:, :, 0], ["noise"], 1, np.random.default_rng(0))
    with pytest.raises(ValueError):
        D.apply((IMG * 255).astype(np.uint8), ["noise"], 1, np.random.default_rng(0))
    with pytest.raises(KeyError):
        D.apply(IMG, ["blur"], 1, np.random.default_rng(0))
    with pytest.raises(ValueError):
        D.apply(IMG, ["noise"], 6, np.random.default_rng(0))
    with pytest.raises(ValueError):
        D.apply(IMG, ["noise", "noise"], 1, np.random.default_rng(0))
    with pytest.raises(ValueError):
        D.apply(IMG, ["noise", "haze"], [1], np.random.default_rng(0))
    out, labels = D.apply(IMG.astype(np.float64), ["haze"], 2, 0)   # int seed, float64 input
    assert out.dtype == np.float32 and labels == ["haze"]


def test_kernels_are_normalised():
    for r in (0.5, 1.7, 4.0):
        k = D.disk_kernel(r)
        assert abs(k.sum() - 1) < 1e-5 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    for length, angle in ((5, 0), (12, 33), (20, 90)):
        k = D.line_kernel(length, angle)
        assert abs(k.sum() - 1) < 1e-5
    horiz = D.line_kernel(9, 0)
    assert np.count_nonzero(horiz.sum(axis=1) > 1e-3) <= 2     # a horizontal line


def test_haze_brightens_towards_airlight_and_dark_darkens():
    hazy = D.haze(IMG, 4, np.random.default_rng(0))
    assert hazy.mean() > IMG.mean() and hazy.std() < IMG.std()
    dark = D.low_light(IMG, 3, np.random.default_rng(0))
    assert dark.mean() < 0.5 * IMG.mean()
