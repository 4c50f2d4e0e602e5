"""Tests for the network-free parts of scripts/fetch_data.py: pins, sha checks, groups, manifest."""
import importlib.util
import io
import json
import struct
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_PATH = Path(__file__).resolve().parent.parent / "scripts" / "fetch_data.py"
_spec = importlib.util.spec_from_file_location("fetch_data", _PATH)
fd = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("fetch_data", fd)  # dataclasses look their module up
_spec.loader.exec_module(fd)


def test_pins_are_complete_and_disjoint():
    seen = set()
    for src in fd.SOURCES:
        assert src.kind in ("deb", "deb-rcc", "wheel", "sdist", "render") and len(src.archive_sha256) == 64
        assert int(src.archive_sha256, 16) >= 0 and src.version and src.package and src.licence
        if src.kind == "wheel":
            assert src.wheel_file.endswith(".whl") and src.version in src.wheel_file
        if src.kind == "sdist":
            assert src.wheel_file == f"{src.package}-{src.version}.tar.gz"
        for it in src.items:
            assert len(it.sha256) == 64 and int(it.sha256, 16) >= 0
            assert it.split in ("train", "extra", "wide", "eval", "real")
            assert (fd.RCC_SEP in it.member) == (src.kind == "deb-rcc")
            rel = fd.rel_path(src, it)
            assert rel not in seen
            seen.add(rel)
    splits = {it.split: src.key for src in fd.SOURCES for it in src.items}
    assert splits
    # No package feeds both eval and train: eval images are never trained on.
    eval_pkgs = {src.package for src in fd.SOURCES if any(it.split == "eval" for it in src.items)}
    train_pkgs = {src.package for src in fd.SOURCES if any(it.split in fd.TRAIN_SPLITS for it in src.items)}
    assert eval_pkgs and train_pkgs and not eval_pkgs & train_pkgs
    counts = {s: sum(it.split == s for src in fd.SOURCES for it in src.items)
              for s in ("train", "extra", "wide", "eval", "real")}
    assert counts["train"] >= 40 and counts["extra"] >= 70 and counts["wide"] >= 60 and counts["eval"] >= fd.MIN_EVAL == 60
    fd.check_sources()  # the pinned set passes its own checks


def test_eval_classes_are_labelled_and_large_enough():
    per = {}
    for src in fd.SOURCES:
        for it in src.items:
            if it.split == "eval":
                assert it.cls in fd.EVAL_CLASSES, (src.key, it.name)
                per[it.cls] = per.get(it.cls, 0) + 1
            else:
                assert it.cls == ""
    assert set(per) == set(fd.EVAL_CLASSES) and len(fd.EVAL_CLASSES) >= 7
    assert min(per.values()) >= 8 and sum(per.values()) >= 60
    # The mid-tone photos of the original bench stay a class.
    kodak = next(s for s in fd.SOURCES if s.key == "kodak")
    assert sum(it.cls == "midtone" for it in kodak.items) == 4


def _src(package, member, split="eval", cls="midtone"):
    return fd.Source("k", "wheel", package, "1", "0" * 64, (fd.Item(member, "x.png", "0" * 64, split, cls),),
                     wheel_file=f"{package}-1-py3-none-any.whl", licence="x")


@pytest.mark.parametrize("package, member", [
    ("lomiri-wallpapers", "./usr/share/wallpapers/warty-final-ubuntu.png"),
    ("lomiri-wallpapers-20.04", "./usr/share/backgrounds/anything.jpg"),
    ("pyiqa", "tests/test_efficiency_img_dir/example.jpg"),
    ("pyiqa", "ResultsCalibra/dist_dir/I03.bmp"),
    ("scipy", "scipy/misc/face.dat"),
    ("scipy", "scipy/misc/ascent.dat"),
    ("matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    ("python-matplotlib-data", "./usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg"),
    ("imgaug", "imgaug/quokka.jpg"),
])
@pytest.mark.parametrize("split", ["eval", "train"])
def test_reserved_sources_are_refused(package, member, split):
    assert fd.reserved_reason(package, member)
    with pytest.raises(fd.FetchError, match="reserved"):
        fd.check_sources((_src(package, member, split, "midtone" if split == "eval" else ""),))


def test_allowed_sources_pass_the_reserved_check():
    for n in (3, 4, 6, 8, 19):  # the five Kodak references are the only pyiqa images allowed
        assert fd.reserved_reason("pyiqa", f"ResultsCalibra/ref_dir/I{n:02d}.bmp") is None
    assert fd.reserved_reason("scikit-image", "skimage/data/astronaut.png") is None
    assert fd.reserved_reason("ukui-wallpapers", "./usr/share/backgrounds/calla.png") is None
    for src in fd.SOURCES:
        for it in src.items:
            assert fd.reserved_reason(src.package, it.member) is None


def test_check_sources_refuses_small_or_unlabelled_sets():
    with pytest.raises(fd.FetchError, match="class"):
        fd.check_sources((_src("some-pkg", "a.png", "eval", ""),))
    with pytest.raises(fd.FetchError, match="too small"):
        fd.check_sources((_src("some-pkg", "a.png", "eval", "midtone"),))
    for split in fd.TRAIN_SPLITS:
        both = (_src("p", "a.png", "eval"), _src("p", "b.png", split, ""))
        with pytest.raises(fd.FetchError, match="may not feed train"):
            fd.check_sources(both)


def test_render_text_is_deterministic_and_pinned(tmp_path):
    """The renderer draws the same bytes twice; with the pinned Pillow major and system DejaVu
    fonts identical to the pinned .deb's, it reproduces the pinned sha256 (no network)."""
    import hashlib

    import PIL

    font_dir = Path("/usr/share/fonts/truetype/dejavu")
    if not all((font_dir / f).is_file() for f in fd.FONT_FILES):
        pytest.skip("DejaVu fonts not installed (fonts-dejavu-core)")
    for name in fd.RENDER_PINS:
        a, b = fd.render_text(name, font_dir), fd.render_text(name, font_dir)
        assert a == b
        im = Image.open(io.BytesIO(a))
        assert im.size == fd.RENDER_SIZE and im.mode == "RGB"
        arr = np.asarray(im)
        assert arr.std() > 10  # text was drawn, not an empty page
    if PIL.__version__.split(".")[0] == fd.RENDER_PILLOW:
        got = {n: hashlib.sha256(fd.render_text(n, font_dir)).hexdigest() for n in fd.RENDER_PINS}
        if any(got[n] != h for n, h in fd.RENDER_PINS.items()):
            # The system fonts may be another DejaVu build than the pinned .deb; say so, don't pass.
            pytest.skip("system DejaVu fonts differ from fonts-dejavu-core 2.37-6")
    with pytest.raises(fd.FetchError, match="no renderer"):
        fd.render_text("nothing", font_dir)


def test_extract_sdist(tmp_path):
    arc = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(arc, "w:gz") as t:
        info = tarfile.TarInfo("pkg-1.0/tests/a.jpg")
        info.size = 3
        t.addfile(info, io.BytesIO(b"JPG"))
    fd.extract_sdist(arc, {"pkg-1.0/tests/a.jpg": tmp_path / "o" / "a.jpg"})
    assert (tmp_path / "o" / "a.jpg").read_bytes() == b"JPG"
    with pytest.raises(fd.FetchError, match="lacks"):
        fd.extract_sdist(arc, {"pkg-1.0/none.jpg": tmp_path / "o" / "n.jpg"})


def _rcc(version: int, files: dict[str, tuple[int, bytes]]) -> bytes:
    """A Qt resource file (format `version`) with `files` (name -> (flags, stored bytes)) in one
    directory "res", laid out as Qt's rcc tool writes it."""
    names, data, nodes = b"", b"", []

    def name(text: str) -> int:
        nonlocal names
        off = len(names)
        names += struct.pack(">HI", len(text), 0) + text.encode("utf-16-be")
        return off

    mtime = b"" if version == 1 else bytes(8)
    nodes.append(struct.pack(">IHII", 0, 2, 1, 1) + mtime)  # the root: one child, node 1
    nodes.append(struct.pack(">IHII", name("res"), 2, len(files), 2) + mtime)
    for n, (flags, stored) in files.items():
        nodes.append(struct.pack(">IHHHI", name(n), flags, 0, 0, len(data)) + mtime)
        data += struct.pack(">I", len(stored)) + stored
    head = 20 if version < 3 else 24
    tree = b"".join(nodes)
    header = struct.pack(">4sIIII", b"qres", version, head, head + len(tree), head + len(tree) + len(data))
    return header + bytes(head - 20) + tree + data + names


@pytest.mark.parametrize("version", [1, 2, 3])
def test_read_rcc_finds_stored_and_zlib_resources(version):
    text = b"resource " * 20
    buf = _rcc(version, {"a.webp": (0, b"RIFF-webp"), "b.txt": (1, struct.pack(">I", len(text)) + zlib.compress(text)),
                         "c.bin": (4, b"zstd-frame")})
    assert fd.read_rcc(buf) == {"/res/a.webp": b"RIFF-webp", "/res/b.txt": text, "/res/c.bin": None}
    with pytest.raises(fd.FetchError, match="Qt resource"):
        fd.read_rcc(b"PK\x03\x04" + buf[4:])


def test_sha_check_failure_is_clear(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"hello")
    good = fd.sha256_file(f)
    fd.check_sha256(f, good)                               # passes silently
    with pytest.raises(fd.FetchError) as e:
        fd.check_sha256(f, "0" * 64, "pkg 1.0 wheel")
    msg = str(e.value)
    assert "sha256 mismatch" in msg and "pkg 1.0 wheel" in msg and good in msg and "0" * 64 in msg


def test_family_key():
    assert fd.family_key("aloeL.jpg") == fd.family_key("aloeR.jpg") == "aloe"
    assert fd.family_key("leuvenA.jpg") == fd.family_key("leuvenB.jpg")
    assert fd.family_key("graf1.png") == fd.family_key("graf3.png") == "graf"
    assert fd.family_key("left.jpg") == fd.family_key("right.jpg")
    assert fd.family_key("motorcycle_left.png") == fd.family_key("motorcycle_right.png")
    assert fd.family_key("I03.bmp") != fd.family_key("I04.bmp")     # Kodak stays separate
    assert fd.family_key("Storm.jpg") == "storm"


def _img(seed, size=64):
    rng = np.random.default_rng(seed)
    a = rng.random((8, 8, 3)).repeat(size // 8, 0).repeat(size // 8, 1)
    return Image.fromarray((a * 255).astype(np.uint8))


def test_dhash_near_duplicates_and_groups():
    a, b = _img(0), _img(1)
    a_jpeg = Image.open(io.BytesIO(_jpeg_bytes(a)))
    assert fd.hamming(fd.dhash(a), fd.dhash(a_jpeg)) <= fd.NEAR_DUP_BITS
    assert fd.hamming(fd.dhash(a), fd.dhash(b)) > fd.NEAR_DUP_BITS
    hexlen = fd.DHASH_SIZE * fd.DHASH_SIZE // 4
    entries = [
        {"file": "train/x/aloeL.jpg", "source": "x", "split": "train"},
        {"file": "train/x/aloeR.jpg", "source": "x", "split": "train"},
        {"file": "train/x/other.jpg", "source": "x", "split": "train",
         "dhash": f"{fd.dhash(a):0{hexlen}x}"},
        {"file": "eval/y/copy.png", "source": "y", "split": "eval",
         "dhash": f"{fd.dhash(a_jpeg):0{hexlen}x}"},
        {"file": "eval/y/new.png", "source": "y", "split": "eval",
         "dhash": f"{fd.dhash(b):0{hexlen}x}"},
    ]
    fd.assign_groups(entries)
    g = [e["group"] for e in entries]
    assert g[0] == g[1] and g[2] == g[3] and len(set(g)) == 3
    assert fd.split_conflicts(entries) == [g[2]]            # the train/eval near-duplicate


def _jpeg_bytes(im):
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def test_manifest_roundtrip(tmp_path):
    entries = [{"file": "train/a/b.jpg", "split": "train", "source": "a", "sha256": "1" * 64},
               {"file": "eval/c/d.png", "split": "eval", "source": "c", "sha256": "2" * 64}]
    m = fd.build_manifest(entries)
    assert m["counts"] == {"eval": 1, "train": 1}
    assert [e["split"] for e in m["images"]] == ["eval", "train"]
    path = fd.write_manifest(tmp_path, m)
    assert path.name == fd.MANIFEST_NAME and fd.load_manifest(tmp_path) == json.loads(path.read_text())
    with pytest.raises(fd.FetchError, match="no manifest"):
        fd.load_manifest(tmp_path / "missing")


def test_extract_wheel_and_missing_member(tmp_path):
    whl = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("pkg/data/a.png", b"AAA")
    fd.extract_wheel(whl, {"pkg/data/a.png": tmp_path / "out" / "a.png"})
    assert (tmp_path / "out" / "a.png").read_bytes() == b"AAA"
    with pytest.raises(fd.FetchError, match="lacks"):
        fd.extract_wheel(whl, {"pkg/data/missing.png": tmp_path / "out" / "m.png"})


def _deb(path: Path, members: dict[str, bytes]) -> Path:
    """A .deb whose data.tar.xz holds `members` (name -> bytes)."""
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w:xz") as t:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            t.addfile(info, io.BytesIO(body))
    with open(path, "wb") as f:
        f.write(b"!<arch>\n")
        for name, body in ((b"debian-binary", b"2.0\n"), (b"data.tar.xz", payload.getvalue())):
            f.write(name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6)
                    + b"100644".ljust(8) + str(len(body)).encode().ljust(10) + b"`\n")
            f.write(body + (b"\n" if len(body) % 2 else b""))
    return path


def test_extract_deb_without_dpkg(tmp_path, monkeypatch):
    """The ar fallback reads data.tar.* directly, so extraction works off Debian too."""
    deb = _deb(tmp_path / "x_1.0_all.deb", {"./usr/share/x/img.jpg": b"JPG"})
    monkeypatch.setattr(fd.shutil, "which", lambda name: None)
    fd.extract_deb(deb, {"./usr/share/x/img.jpg": tmp_path / "img.jpg"})
    assert (tmp_path / "img.jpg").read_bytes() == b"JPG"
    with pytest.raises(fd.FetchError, match="lacks"):
        fd.extract_deb(deb, {"./usr/share/x/none.jpg": tmp_path / "none.jpg"})


def test_extract_deb_rcc_takes_resources_out_of_a_qt_resource_file(tmp_path, monkeypatch):
    rcc = _rcc(3, {"a.webp": (0, b"RIFF-webp"), "c.bin": (4, b"zstd-frame")})
    deb = _deb(tmp_path / "x_1.0_all.deb", {"./usr/share/x/game.rcc": rcc})
    monkeypatch.setattr(fd.shutil, "which", lambda name: None)  # dpkg-deb wants a control.tar too
    fd.extract_deb_rcc(deb, {"./usr/share/x/game.rcc::/res/a.webp": tmp_path / "out" / "a.webp"})
    assert (tmp_path / "out" / "a.webp").read_bytes() == b"RIFF-webp"
    for missing in ("/res/none.webp", "/res/c.bin"):  # absent, or compressed in a way we do not read
        with pytest.raises(fd.FetchError, match="pinned member list"):
            fd.extract_deb_rcc(deb, {f"./usr/share/x/game.rcc::{missing}": tmp_path / "out" / "x"})
    with pytest.raises(fd.FetchError, match="lacks"):
        fd.extract_deb_rcc(deb, {"./usr/share/x/other.rcc::/res/a.webp": tmp_path / "out" / "x"})


def test_verify_only_reports_missing(tmp_path):
    with pytest.raises(fd.FetchError, match="missing or corrupt"):
        fd.fetch(tmp_path, verify_only=True, log=lambda *_: None)
    assert fd.main(["--out", str(tmp_path), "--verify-only"]) == 1


def test_make_sample_writes_small_labelled_png(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_sample", _PATH.parent / "make_sample.py")
    ms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ms)
    data = tmp_path / "data"
    (data / "eval" / "kodak").mkdir(parents=True)
    yy, xx = np.mgrid[0:384, 0:512]
    photo = np.stack([xx / 2, yy / 1.5, 128 + 100 * np.sin(xx / 20.0)], 2).astype(np.uint8)
    Image.fromarray(photo).save(data / "eval" / "kodak" / "I08.bmp")
    out = tmp_path / "assets" / "sample.png"
    info = ms.make_sample(data, out)
    im = Image.open(out)
    assert im.size == (256, 256) and out.stat().st_size < ms.MAX_BYTES
    assert json.loads(im.text["rar:labels"]) == info["labels"] == ["haze", "defocus"]
    with pytest.raises(FileNotFoundError, match="fetch_data"):
        ms.make_sample(tmp_path / "nowhere", out)
