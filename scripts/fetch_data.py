#!/usr/bin/env python3
"""Fetch the clean photo pool for RAR from registry packages, pinned by version and sha256.

Why this exists: no registry ships a restoration data set, and the photos we can use are
GPL/LGPL/CC-BY-SA or non-commercial, so they are never committed.  This script rebuilds the
exact same pool on any machine with `apt-get` (Debian bookworm) and `pip`:

* train: photos from the Debian packages mate-backgrounds, plasma-workspace-wallpapers and
  opencv-doc (example images).  Near-duplicate families (aloeL/aloeR, leuvenA/B, ...) share
  a ``group`` id, so any later validation split must move whole groups.
* eval:  the five Kodak images in the pyiqa wheel plus the scikit-image and scikit-learn sample
  photos.  Never trained on; the script refuses to write a train image that is a perceptual
  near-duplicate of an eval image.
* real:  a few real-blur photos without ground truth, for qualitative checks only.

Every archive (.deb / .whl) and every extracted image is checked against a pinned sha256; a
rerun skips what is already present and verified.  Output: ``<out>/{train,eval,real}/<source>/``
and ``<out>/manifest.json``.  Only the standard library, numpy and Pillow are used.

Usage:  python scripts/fetch_data.py [--out data] [--keep-archives] [--verify-only]
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "data"
MANIFEST_NAME = "manifest.json"
# dHash side (16 -> 256 bits) and the Hamming distance at or below which two images count as
# near-duplicates.  On this pool, recompressed/shifted copies score ~10 and unrelated photos >= 70;
# stereo or viewpoint pairs (aloeL/R) score > 100 and are caught by the basename family instead.
DHASH_SIZE = 16
NEAR_DUP_BITS = 40


class FetchError(RuntimeError):
    """A fetch step failed; the message says what to do about it."""


@dataclass(frozen=True)
class Item:
    """One image inside an archive: member path, output name, pinned sha256, split."""

    member: str
    name: str
    sha256: str
    split: str = "train"


@dataclass(frozen=True)
class Source:
    """A pinned registry archive and the images we take from it."""

    key: str            # short folder name under <out>/<split>/
    kind: str           # "deb" or "wheel"
    package: str
    version: str
    archive_sha256: str
    items: tuple[Item, ...] = field(default_factory=tuple)
    wheel_file: str = ""  # exact wheel filename (platform-specific wheels are pinned too)
    licence: str = ""


# ---------------------------------------------------------------------------------------------
# Pins (observed 2026-11-26, Debian bookworm main / PyPI).

_MATE = "./usr/share/backgrounds/mate/nature/"
_PLASMA = "./usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
_OCV = "./usr/share/doc/opencv-doc/examples/data/"


def _items(prefix: str, pairs: dict[str, str], split: str = "train") -> tuple[Item, ...]:
    return tuple(Item(prefix + n, n, h, split) for n, h in pairs.items())


SOURCES: tuple[Source, ...] = (
    Source(
        "mate", "deb", "mate-backgrounds", "1.26.0-1",
        "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04",
        _items(_MATE, {
            "Aqua.jpg": "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce",
            "Blinds.jpg": "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600",
            "Dune.jpg": "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91",
            "FreshFlower.jpg": "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e",
            "Garden.jpg": "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78",
            "GreenMeadow.jpg": "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832",
            "LadyBird.jpg": "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d",
            "RainDrops.jpg": "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16",
            "Storm.jpg": "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957",
            "TwoWings.jpg": "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb",
            "Wood.jpg": "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07",
            "YellowFlower.jpg": "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306",
        }),
        licence="GPL-2+",
    ),
    Source(
        "plasma", "deb", "plasma-workspace-wallpapers", "4:5.27.5-2",
        "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b",
        tuple(Item(_PLASMA.format(n), n + ".jpg", h) for n, h in {
            # Only the photographs; the other wallpapers are renders or paintings.
            "BytheWater": "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f",
            "ColdRipple": "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f",
            "ColorfulCups": "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d",
            "DarkestHour": "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce",
            "EveningGlow": "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a",
            "FallenLeaf": "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de",
            "Grey": "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed",
            "Kite": "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8",
            "OneStandsOut": "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd",
            "Path": "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8",
            "summer_1am": "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8",
        }.items()),
        licence="LGPL-3 / CC-BY-SA-4.0 (per wallpaper metadata.json)",
    ),
    Source(
        "opencv", "deb", "opencv-doc", "4.6.0+dfsg-12",
        "4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
        _items(_OCV, {
            # Colour photographs only (no charts, logos, renders or grey stereo sets).
            "aero1.jpg": "d9a69191f6e3642ea361bc3c62e677b2f40fe6534b78da540f4155e0734b59ef",
            "aero3.jpg": "1c407146f8762b3b14a7953ff9bc4c01ed64c467d7277122e769bf7e816017a4",
            "aloeL.jpg": "cce5736808efe80d9f04b118dbb978c344d4345672b332718c3e039a3eeb8eee",
            "aloeR.jpg": "9b23100df31a846bc6e6a6545563b2b4120b948c9835c7d36cde00af77f4503e",
            "apple.jpg": "e86879de3d9a807dedc742a8f464f39e6b74bbb531a1fba3583155d94997d1cd",
            "baboon.jpg": "1a1dd18d78eec44420af3b0b7f08ee3d41c982916cae3ce203d7ff35d754cc0f",
            "board.jpg": "4c9a24ba67138ad5486d550f586cc5dd1161be112f1c1bea336d6c550cdf255f",
            "building.jpg": "742a1baad62ac82e91e718e77eedf7e85c2eddc4badfb8c87c6cbc86c45a8b07",
            "butterfly.jpg": "34a99716b78ded10eae87b4880de739d3e68cc7dd1a96812bb28f469d5eeaea8",
            "chicky_512.png": "4d2cf040de084fd3f34d5e3f96f1251faaa4787c1ac3b548fec5809a0d01854e",
            "ela_original.jpg": "b55798b35e2dcb24675f0865a2442d0e4887eeb6aff322ecb1968d936cc23e7f",
            "fruits.jpg": "9c031d80a1c52da5eca790db896baffec6a7e52bf786cdb7bbfca5c7f880e6a1",
            "graf1.png": "1504b769303c7bde00fa578eeaad3c68e02aceabeb1242e556f1f8d19e4bdea5",
            "graf3.png": "492e0e96f21748d093e1a29f4dbfd46528bd75966937e85ce7c8abc0f361fc15",
            "home.jpg": "23b8cf46a1965d0ec33459b875aed43187802834db49e0daa9fa2cc842e9d8d2",
            "left.jpg": "fb314330c3eb0a81651c682803e73b348898157267fbc37c4c2c07d1b3a8e321",
            "right.jpg": "20972954be263a99194d1373d9a5cd8d2dc92acf69b55470b6951f3b3475017f",
            "leuvenA.jpg": "b2977cdbd9fb3f94dadd6f76cf586d145676deb8a22b5f0f42149d21c058c09f",
            "leuvenB.jpg": "5bb41a60038a2baa5d8ea0eaba55e6e3050d721b254cf79d8d8998d7e49d664a",
            "messi5.jpg": "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9",
            "orange.jpg": "152c20d2f380ac985de25e474e1a5f06ed34b932191342099b8272a63a15a079",
            "rubberwhale1.png": "eb312435369dac9efcc92f7e098edbd9ed8d7e6dfede8b3b4d8e3702cd80b796",
            "rubberwhale2.png": "ee309a00d47b837b322ea5d9128775e0c46869b8014376286ba316a073d293ac",
            "smarties.png": "ad3f751c053fdcf432687c1bc0e56a61a9119d2bb2ae29365f8aa6534fc77417",
            "squirrel_cls.jpg": "20bb6e8ae96918a36c9886b6d48e54eedeb3948591e1485c206bc1dc60c8dc8b",
            "stuff.jpg": "21cd00afbdd0727f445dd91c0a09633e6345ed5b05a3d2355453a1f3c314c6c5",
        }) + _items(_OCV, {
            # Real blur without ground truth: qualitative only.
            "licenseplate_motion.jpg": "ea6fa9cea75df91bec656d1d3b903111a9c0708c6a3b88f405a5156de38ff9d6",
            "text_motion.jpg": "85b43c44379fc4906c8feb0ba4ca701edce862c9aa6eb171d513929fbab19807",
            "text_defocus.jpg": "ffea13e23e2bdce60e50e43e5950d76d542a61a820c03c28fbb8f11b26edfdb6",
        }, split="real"),
        licence="Apache-2.0 AND BSD-3-Clause",
    ),
    Source(
        "kodak", "wheel", "pyiqa", "0.1.16",
        "42bbcf1c274a8b53f040a3ec5ec304a15b7725afb5a85b81050e9cc7e6d09ed4",
        _items("ResultsCalibra/ref_dir/", {
            "I03.bmp": "28441215ca5b6358e6267717250a02eeec4fa5ef73ae454870b8426320f980a8",
            "I04.bmp": "c8500941a30397bc9e613a297e1286bdb955f49926148f58e7963d6e82b03c9f",
            "I06.bmp": "445c2c0fcb47898e9cd8e6de640f2545621d27cbb248c69ef2c84d8204723061",
            "I08.bmp": "b5d6738ece811f45f43c5bce425ad5d18d5c78466989001fe1129fcdd08efdab",
            "I19.bmp": "b8a2ede827d8db21c45f9ca1fb1c043bcec571b5a7243b4ea1aab3fb4feb7e0b",
        }, split="eval"),
        wheel_file="pyiqa-0.1.16-py3-none-any.whl",
        licence="Kodak images (unrestricted use), TID2013 references",
    ),
    Source(
        "skimage", "wheel", "scikit-image", "0.26.0",
        "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        _items("skimage/data/", {
            "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
            "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
            "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
            "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
            "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
        }, split="eval") + _items("skimage/data/", {
            "clock_motion.png": "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955",
        }, split="real"),
        wheel_file="scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        licence="CC0 / public domain (per skimage.data docstrings)",
    ),
    Source(
        "sklearn", "wheel", "scikit-learn", "1.9.1",
        "52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df",
        _items("sklearn/datasets/images/", {
            "china.jpg": "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
            "flower.jpg": "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
        }, split="eval"),
        wheel_file="scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        licence="CC-BY-2.0",
    ),
)

# Families that the name rule below cannot see (stereo pair with different words).
EXTRA_FAMILIES = {"left": "left_right", "right": "left_right"}


# ---------------------------------------------------------------------------------------------
# Pure helpers (no network; unit-tested).

def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(path: Path, expected: str, what: str = "") -> None:
    """Raise FetchError with both hashes if `path` does not hash to `expected`."""
    got = sha256_file(path)
    if got != expected:
        raise FetchError(
            f"sha256 mismatch for {what or path.name}: expected {expected}, got {got} "
            f"({path}). The registry copy changed or the download is corrupt; delete the file "
            f"and rerun, and if it persists, re-pin the version in scripts/fetch_data.py after "
            f"checking the new file."
        )


def family_key(name: str) -> str:
    """Basename family: strip extension and a trailing pair marker (1/3, L/R, A/B, _left)."""
    stem = Path(name).stem
    if stem in EXTRA_FAMILIES:
        return EXTRA_FAMILIES[stem]
    stem = re.sub(r"_(left|right)$", "", stem)
    stem = re.sub(r"(?<=[a-z])([0-9]+|[LRAB])$", "", stem)
    return stem.lower()


def dhash(image, size: int = DHASH_SIZE) -> int:
    """size*size-bit difference hash of a PIL image: robust to rescale/recompress, cheap to compare."""
    import numpy as np
    from PIL import Image

    g = image.convert("L").resize((size + 1, size), Image.Resampling.LANCZOS)
    a = np.asarray(g, dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def assign_groups(entries: list[dict], max_bits: int = NEAR_DUP_BITS) -> None:
    """Give each entry a ``group`` id: same basename family or near-equal dHash -> same group.

    Union-find over all entries (all splits), so a caller can check that no group spans splits.
    """
    parent = list(range(len(entries)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    by_family: dict[tuple[str, str], int] = {}
    for i, e in enumerate(entries):
        key = (e["source"], family_key(e["file"]))
        if key in by_family:
            union(i, by_family[key])
        else:
            by_family[key] = i
    for i in range(len(entries)):
        for j in range(i + 1, len(entries)):
            hi, hj = entries[i].get("dhash"), entries[j].get("dhash")
            if hi is not None and hj is not None and hamming(int(hi, 16), int(hj, 16)) <= max_bits:
                union(i, j)
    roots: dict[int, str] = {}
    for i, e in enumerate(entries):
        r = find(i)
        if r not in roots:
            roots[r] = f"{entries[r]['source']}/{family_key(entries[r]['file'])}"
        e["group"] = roots[r]


def split_conflicts(entries: list[dict]) -> list[str]:
    """Groups that have members in more than one split (must be empty: eval never leaks)."""
    splits: dict[str, set[str]] = {}
    for e in entries:
        splits.setdefault(e["group"], set()).add(e["split"])
    return sorted(g for g, s in splits.items() if len(s) > 1)


def build_manifest(entries: list[dict]) -> dict:
    """Stable JSON manifest: list of {file, split, source, package, version, sha256, ...}."""
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["split"]] = counts.get(e["split"], 0) + 1
    return {
        "version": 1,
        "description": "RAR clean photo pool; file paths are relative to this manifest.",
        "counts": dict(sorted(counts.items())),
        "images": sorted(entries, key=lambda e: (e["split"], e["file"])),
    }


def write_manifest(out: Path, manifest: dict) -> Path:
    path = out / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def load_manifest(out: Path) -> dict:
    path = Path(out) / MANIFEST_NAME
    if not path.exists():
        raise FetchError(f"no manifest at {path}; run `python scripts/fetch_data.py --out {out}`")
    return json.loads(path.read_text())


def rel_path(src: Source, item: Item) -> str:
    return f"{item.split}/{src.key}/{item.name}"


# ---------------------------------------------------------------------------------------------
# Archive handling.

def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise FetchError(f"`{cmd[0]}` not found; this step needs it on PATH") from e
    except subprocess.CalledProcessError as e:
        raise FetchError(f"`{' '.join(cmd)}` failed ({e.returncode}):\n{e.stderr.strip()}") from e


def _find_verified(dirs: list[Path], pattern: str, sha: str) -> Path | None:
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.glob(pattern)):
                if sha256_file(p) == sha:
                    return p
    return None


def get_deb(src: Source, cache: Path) -> Path:
    """A verified .deb: from our cache, the apt cache, or `apt-get download pkg=version`."""
    pattern = f"{src.package}_*.deb"
    found = _find_verified([cache, Path("/var/cache/apt/archives")], pattern, src.archive_sha256)
    if found:
        return found
    cache.mkdir(parents=True, exist_ok=True)
    try:
        _run(["apt-get", "download", f"{src.package}={src.version}"], cwd=cache)
    except FetchError as e:
        raise FetchError(
            f"could not download {src.package}={src.version} with apt-get ({e}). Run "
            f"`apt-get update` first (Debian bookworm main must be in sources). If the version "
            f"left the mirror, put the .deb with sha256 {src.archive_sha256} into {cache}."
        ) from e
    debs = sorted(cache.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not debs:
        raise FetchError(f"apt-get download {src.package} produced no .deb in {cache}")
    check_sha256(debs[-1], src.archive_sha256, f"{src.package} {src.version} .deb")
    return debs[-1]


def get_wheel(src: Source, cache: Path) -> Path:
    """A verified wheel: from our cache, else `pip download --no-deps` of the pinned file."""
    target = cache / src.wheel_file
    if target.exists() and sha256_file(target) == src.archive_sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(cache), f"{src.package}=={src.version}"]
    m = re.match(r".+?-.+?-(cp\d+)-(cp\d+|abi3|none)-(.+)\.whl$", src.wheel_file)
    if m:  # platform wheel: ask for exactly that file whatever Python runs this script
        platforms = m.group(3).split(".")
        cmd += ["--only-binary=:all:", "--python-version", m.group(1)[2:], "--implementation", "cp",
                "--abi", m.group(2)] + [a for p in platforms for a in ("--platform", p)]
    _run(cmd)
    if not target.exists():
        raise FetchError(f"pip download {src.package}=={src.version} did not produce {target.name}")
    check_sha256(target, src.archive_sha256, f"{src.package} {src.version} wheel")
    return target


def _deb_data_tar(deb: Path):
    """Stream of the data tarball inside a .deb: dpkg-deb if present, else a tiny ar reader."""
    if shutil.which("dpkg-deb"):
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
        return proc, tarfile.open(fileobj=proc.stdout, mode="r|")
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise FetchError(f"{deb} is not a Debian archive")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    raise FetchError(f"{deb}: zstd data needs dpkg-deb; install dpkg")
                return None, tarfile.open(fileobj=io.BytesIO(f.read(size)), mode="r:*")
            f.seek(size + (size & 1), 1)
    raise FetchError(f"{deb} has no data.tar member")


def extract_deb(deb: Path, wanted: dict[str, Path]) -> None:
    """Extract only the `wanted` members (archive path -> destination) from a .deb."""
    proc, tar = _deb_data_tar(deb)
    left = dict(wanted)
    try:
        for m in tar:
            if m.name in left and m.isfile():
                _write_atomic(left.pop(m.name), tar.extractfile(m).read())
                if not left:
                    break
    finally:
        tar.close()
        if proc is not None:
            proc.stdout.close()
            proc.kill()  # we may stop reading early; dpkg-deb must not block on a full pipe
            proc.wait()
    if left:
        raise FetchError(f"{deb.name} lacks {sorted(left)}; the pinned member list is wrong")


def extract_wheel(whl: Path, wanted: dict[str, Path]) -> None:
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        missing = sorted(set(wanted) - names)
        if missing:
            raise FetchError(f"{whl.name} lacks {missing}; the pinned member list is wrong")
        for member, dest in wanted.items():
            _write_atomic(dest, z.read(member))


def _write_atomic(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)


# ---------------------------------------------------------------------------------------------
# Main flow.

def fetch(out: Path, keep_archives: bool = True, verify_only: bool = False, log=print) -> dict:
    """Make `out` hold every pinned image (verified) and a fresh manifest; return the manifest."""
    out = Path(out)
    cache = out / ".archives"
    entries: list[dict] = []
    for src in SOURCES:
        todo = {}
        for it in src.items:
            dest = out / rel_path(src, it)
            if not (dest.exists() and sha256_file(dest) == it.sha256):
                todo[it.member] = dest
        if todo and verify_only:
            raise FetchError(f"{src.package}: {len(todo)} image(s) missing or corrupt under {out}")
        if todo:
            t0 = time.time()
            if src.kind == "deb":
                archive = get_deb(src, cache)
                extract_deb(archive, todo)
            else:
                archive = get_wheel(src, cache)
                extract_wheel(archive, todo)
            log(f"  {src.package} {src.version}: extracted {len(todo)} image(s) "
                f"in {time.time() - t0:.1f}s")
        else:
            log(f"  {src.package} {src.version}: {len(src.items)} image(s) already verified")
        for it in src.items:
            dest = out / rel_path(src, it)
            check_sha256(dest, it.sha256, f"{src.package}:{it.member}")
            entries.append({
                "file": rel_path(src, it), "split": it.split, "source": src.key,
                "package": src.package, "version": src.version, "member": it.member,
                "sha256": it.sha256, "licence": src.licence,
            })
    _add_image_info(out, entries)
    assign_groups(entries)
    leaks = split_conflicts(entries)
    if leaks:
        raise FetchError(f"near-duplicate groups span splits (eval would leak into train): {leaks}")
    manifest = build_manifest(entries)
    write_manifest(out, manifest)
    if not keep_archives and cache.exists():
        shutil.rmtree(cache)
    return manifest


def _add_image_info(out: Path, entries: list[dict]) -> None:
    from PIL import Image

    for e in entries:
        with Image.open(out / e["file"]) as im:
            e["width"], e["height"], e["mode"] = im.width, im.height, im.mode
            e["dhash"] = f"{dhash(im):0{DHASH_SIZE * DHASH_SIZE // 4}x}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="data folder (git-ignored)")
    ap.add_argument("--drop-archives", action="store_true",
                    help="delete downloaded .deb/.whl files afterwards (about 270 MB)")
    ap.add_argument("--verify-only", action="store_true",
                    help="download nothing; fail if an image is missing or corrupt")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        m = fetch(args.out, keep_archives=not args.drop_archives, verify_only=args.verify_only)
    except FetchError as e:
        print(f"fetch_data: error: {e}", file=sys.stderr)
        return 1
    groups = len({e["group"] for e in m["images"]})
    print(f"fetch_data: {m['counts']} in {groups} groups -> {args.out / MANIFEST_NAME} "
          f"({time.time() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
