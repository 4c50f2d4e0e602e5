#!/usr/bin/env python3
"""Fetch the clean photo pool for RAR from registry packages, pinned by version and sha256.

Why this exists: no registry ships a restoration data set, and the photos we can use are
GPL/LGPL/CC-BY-SA or non-commercial, so they are never committed.  This script rebuilds the
exact same pool on any machine with `apt-get` (Debian bookworm) and `pip`:

* train: photos from the Debian packages mate-backgrounds, plasma-workspace-wallpapers and
  opencv-doc (example images).  Near-duplicate families (aloeL/aloeR, leuvenA/B, ...) share
  a ``group`` id, so any later validation split must move whole groups.
* eval:  the broadened evaluation set of issue 24: every image carries a content class
  (EVAL_CLASSES: midtone, bright, dark, smooth, texture, people, text; >= 8 each).  Mid-tone
  photos: Kodak (pyiqa wheel), scikit-image and scikit-learn samples; the other classes come
  from ukui-wallpapers, gnome-backgrounds, mypaint-data-extras (paper scans), scikit-image's
  CC0 textures, face_recognition's test photos, and text/screenshots rendered with the pinned
  DejaVu fonts.  Never trained on: a package that feeds eval may not feed train, and the script
  refuses to write a train image that is a perceptual near-duplicate of an eval image.
  Reserved sources (RESERVED: lomiri-wallpapers, pyiqa's non-Kodak images, scipy's and
  matplotlib's samples, imgaug's quokka) are refused everywhere.
* extra: more training photos (kphotoalbum's people and places, tuxpaint-data's texture
  close-ups, plasma-workspace-data's object photos, lxqt-themes' photographs), added after the
  built-in model's earlier stages were trained on `train`; only pools that ask for them
  (train.PoolConfig.extra) draw them, so the recipes of earlier models still repeat.
* wide:  what the photos above lack: real screenshots with text (wireshark-doc, gnucash-docs,
  gimp-help-en, kdenlive-data, kicad-doc-en), night and dark photos (stellarium-data's nebulae,
  palapeli-data), people on stage and animals (gcompris-qt-data, inside Qt resource files);
  like extra, drawn only by pools that ask (train.PoolConfig.wide).  None is wider than 2.2:1,
  so the pool's 512 px thumbnail keeps a short side near a 256 px training crop's.
* real:  a few real-blur photos without ground truth, for qualitative checks only.

Every archive (.deb / .whl) and every extracted image is checked against a pinned sha256; a
rerun skips what is already present and verified.  Output: ``<out>/{train,extra,wide,eval,real}/<source>/``
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
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterable
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


# Splits a model may train on: "train" feeds every pool; "extra" and "wide", images added after the
# built-in model's earlier stages were trained, feed the pools that ask for them
# (train.PoolConfig.extra and .wide).
TRAIN_SPLITS = ("train", "extra", "wide")


@dataclass(frozen=True)
class Item:
    """One image inside an archive: member path, output name, pinned sha256, split."""

    member: str
    name: str
    sha256: str
    split: str = "train"
    cls: str = ""       # content class of an eval image (see EVAL_CLASSES)


@dataclass(frozen=True)
class Source:
    """A pinned registry archive and the images we take from it."""

    key: str            # short folder name under <out>/<split>/
    kind: str           # "deb", "deb-rcc" (Qt resource files in a .deb), "wheel", "sdist" or
                        # "render" (drawn with a pinned font .deb)
    package: str
    version: str
    archive_sha256: str
    items: tuple[Item, ...] = field(default_factory=tuple)
    wheel_file: str = ""  # exact wheel filename (platform-specific wheels are pinned too)
    licence: str = ""


# ---------------------------------------------------------------------------------------------
# Text and screenshots, rendered deterministically (no registry package ships such images with a
# licence we can use): PIL draws fixed, seeded content with the fonts of the pinned
# fonts-dejavu-core .deb.  The PNG bytes depend on Pillow's FreeType build, so the sha256 pins
# hold for the Pillow named in RENDER_PILLOW; another build fails the check with that hint.

RENDER_PILLOW = "13"  # major version the pins below were made with
_FONTS = "./usr/share/fonts/truetype/dejavu/"
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSerif.ttf")
RENDER_SIZE = (512, 384)
RENDER_PINS = {
    "doc_page": "ebe0fb9d32b124f3af8c51c017f3a09156096ae14fe055732574c963343d961c",
    "doc_dense": "749af632a5d3a5d05e7ecc10f7420c4c7d87ef447d4bd3c5224df6ca812f8311",
    "code_dark": "157df4bf8c5c0d06319a702d9ee411565bb08d168a7d3974e4d1b1bb321f9039",
    "code_light": "a7aa07c242f4a2a667b249cef3780329d0a525ef0dd8f8dc4714559c371339fb",
    "terminal": "23a00c85d7b45f5d25fa5c06c8d34a78491a1afcde07afb99c4ce65b7f887fe3",
    "dialog": "a4f46e64e5840ab24d00c1378544453e8418d29eb2b2f837b5a96519a05b47f7",
    "spreadsheet": "8d18faa2d9a0f44511bbaabc4794f8b116a6e2f60dc17c3f06783a57f67a8443",
    "web_page": "235978c9a0b21e443873b1d55a8965dfc590a19f786e042268b9b20d3f27bb7f",
    "poster": "ba1aa1892bbbd117acdb7c048568d962b58d8a3f10abffd287aba6ada31b8d61",
    "chart": "014da0bea3913912b1b20560b477a41113b2cc8dbd3d3e4d4b4af126884fb04b",
}
_WORDS = ("restore assess repeat latent image quality noise blur haze rain snow light dark "
          "model round gate verify clean photo pixel colour level signal filter codec flow "
          "step answer degradation window tile border report bench value table class").split()


def _sentence(rng, n: int) -> str:
    return " ".join(_WORDS[int(i)] for i in rng.integers(0, len(_WORDS), n)).capitalize() + "."


def render_text(name: str, font_dir: Path) -> bytes:
    """PNG bytes of the rendered text/screenshot image `name` (one of RENDER_PINS)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    def font(file: str, size: int):
        return ImageFont.truetype(str(font_dir / file), size)

    if name not in RENDER_PINS:
        raise FetchError(f"no renderer named {name!r}")
    sans, bold, mono, serif = FONT_FILES
    rng = np.random.default_rng(list(RENDER_PINS).index(name))
    W, H = RENDER_SIZE
    bg = {"code_dark": (30, 30, 36), "terminal": (12, 12, 12), "poster": (210, 60, 40)}.get(name, (255, 255, 255))
    im = Image.new("RGB", (W, H), bg)
    d = ImageDraw.Draw(im)
    if name in ("doc_page", "doc_dense"):
        size = 17 if name == "doc_page" else 12
        f, y = font(serif, size), 18
        d.text((24, y), _sentence(rng, 4).upper(), font=font(bold, size + 5), fill=(20, 20, 20))
        y += size + 20
        while y < H - size:
            line = _sentence(rng, int(rng.integers(5, 9)))
            d.text((24, y), line, font=f, fill=(25, 25, 25))
            y += int(size * 1.45)
    elif name in ("code_dark", "code_light", "terminal"):
        f = font(mono, 14)
        fg = {"code_dark": (220, 220, 210), "code_light": (30, 30, 30), "terminal": (90, 230, 90)}[name]
        kw = (200, 120, 220) if name == "code_dark" else (0, 0, 190)
        y = 8
        for i in range(H // 18):
            d.text((6, y), f"{i + 1:3d}", font=f, fill=(130, 130, 130))
            ind = "    " * int(rng.integers(0, 3))
            words = [_WORDS[int(j)] for j in rng.integers(0, len(_WORDS), int(rng.integers(2, 6)))]
            d.text((44, y), ind + "def" if i % 5 == 0 else ind, font=f, fill=kw)
            x = 44 + d.textlength(ind + ("def " if i % 5 == 0 else ""), font=f)
            d.text((x, y), "_".join(words) + ("(z, a):" if i % 5 == 0 else f" = {int(rng.integers(0, 999))}"),
                   font=f, fill=fg)
            y += 18
    elif name == "dialog":
        im.paste((236, 236, 236), (0, 0, W, H))
        d.rectangle((40, 40, W - 40, H - 40), fill=(250, 250, 250), outline=(150, 150, 150))
        d.rectangle((40, 40, W - 40, 72), fill=(60, 110, 200))
        d.text((52, 48), "Restore image", font=font(bold, 16), fill=(255, 255, 255))
        y = 90
        for _ in range(5):
            d.text((60, y), _sentence(rng, 5), font=font(sans, 13), fill=(30, 30, 30))
            d.rectangle((W - 150, y - 2, W - 60, y + 18), fill=(255, 255, 255), outline=(120, 120, 120))
            y += 34
        for k, label in enumerate(("Cancel", "OK")):
            x0 = W - 250 + k * 110
            d.rounded_rectangle((x0, H - 90, x0 + 90, H - 60), 6, fill=(60, 110, 200) if k else (220, 220, 220))
            d.text((x0 + 22, H - 84), label, font=font(sans, 14), fill=(255, 255, 255) if k else (20, 20, 20))
    elif name == "spreadsheet":
        f = font(sans, 12)
        for r in range(H // 22):
            for c in range(W // 84):
                x0, y0 = c * 84, r * 22
                d.rectangle((x0, y0, x0 + 84, y0 + 22), outline=(200, 200, 200),
                            fill=(230, 236, 245) if r == 0 or c == 0 else None)
                txt = (f"col {c}" if r == 0 else f"row {r}" if c == 0 else f"{rng.normal(50, 30):.2f}")
                d.text((x0 + 6, y0 + 4), txt, font=f, fill=(20, 20, 20))
    elif name == "web_page":
        d.rectangle((0, 0, W, 44), fill=(40, 44, 52))
        d.text((16, 12), "comfyui-rar", font=font(bold, 18), fill=(255, 255, 255))
        d.rectangle((0, 44, 130, H), fill=(245, 245, 248))
        for i in range(10):
            d.text((14, 60 + 26 * i), _WORDS[int(rng.integers(0, len(_WORDS)))].title(), font=font(sans, 13), fill=(40, 80, 160))
        y = 60
        while y < H - 20:
            d.text((146, y), _sentence(rng, 7), font=font(sans, 13), fill=(35, 35, 35))
            y += 22
    elif name == "poster":
        for i in range(3):
            d.text((30, 40 + 100 * i), _sentence(rng, 2).upper(), font=font(bold, 44 - 8 * i), fill=(255, 250, 235))
    elif name == "chart":
        d.line((50, 20, 50, H - 40), fill=(0, 0, 0), width=2)
        d.line((50, H - 40, W - 20, H - 40), fill=(0, 0, 0), width=2)
        for c, col in enumerate(((200, 50, 50), (50, 120, 200), (40, 160, 80))):
            ys = np.cumsum(rng.normal(0, 12, 20)) + 180
            pts = [(60 + i * 22, float(np.clip(y, 30, H - 50))) for i, y in enumerate(ys)]
            d.line(pts, fill=col, width=2)
            d.text((W - 140, 30 + 18 * c), f"series {c + 1}", font=font(sans, 13), fill=col)
        for i in range(6):
            d.text((14, H - 48 - 60 * i), f"{10 * i}", font=font(sans, 11), fill=(0, 0, 0))
            d.text((54 + 80 * i, H - 32), f"t{i}", font=font(sans, 11), fill=(0, 0, 0))
    else:
        raise FetchError(f"no renderer named {name!r}")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Pins (observed 2026-11-26, Debian bookworm main / PyPI).

_MATE = "./usr/share/backgrounds/mate/nature/"
_PLASMA = "./usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
_OCV = "./usr/share/doc/opencv-doc/examples/data/"
_UKUI = "./usr/share/backgrounds/"
_GNOME = "./usr/share/backgrounds/gnome/"
_MYPAINT = "./usr/share/mypaint/backgrounds/"
_GCOMPRIS = "./usr/share/gcompris-qt/rcc/{0}.rcc::/gcompris/src/activities/{0}/resource/"  # an activity's images


def _items(prefix: str, pairs: dict[str, str], split: str = "train", cls: str = "") -> tuple[Item, ...]:
    return tuple(Item(prefix + n, n.replace(" ", "_"), h, split, cls) for n, h in pairs.items())


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
        # People, bars, beaches, snow, pets: the photos a user brings that no other source has.
        "kphotoalbum", "deb", "kphotoalbum", "5.9.1-1",
        "00f8b26b5db1beb30a822d15f464b3c68ffa556d267870aa98a59aaaaf81ec43",
        _items("./usr/share/kphotoalbum/demo/", {
            "anne_helene.jpg": "75dea938bf86530e95c6b74dbcc7fb447947fd17d523121634e08f03e0e7304f",
            "bar55.jpg": "dd57f8a93ea84b46d817d3b10d496360b81588da9ea887887d057803cc39c52d",
            "bar55_2.jpg": "e2a3ebc63306abf0a3ae898edd69fbc0a5cef16f28450ceb1d32c67c6f7b662a",
            "blackie.jpg": "5a72fc60a65448e02e8022820ed5bc15d3e9ce4c92d55d51a7d760357cf704e7",
            "cold_water.jpg": "1c92d774263012891803360080a03999ffdb4fb643f320d9c106b5a3cbb21306",
            "donna.jpg": "c98f91990752bb6dff72bd8bb2820dc28317051c0e60ddf11822a39f076c31da",
            "donna_2.jpg": "b476b81f11db406767598266f81cb8623204c8207f297e4abcf2055366794b5f",
            "grand_canyon_1.jpg": "5d60136f1143918c30d5ddf8892216fc401ea126ed01afe1d8b9374cfae43669",
            "grand_canyon_2.jpg": "7814adbefb9665f506acf5123981c83bb5b22dde12b10ef57083d328a86cbdb6",
            "grand_canyon_3.jpg": "923ba3a8d16993388f19686d333d70988f7baf4885865af1729f80bbbd02ffe7",
            "jesper.jpg": "5b3b5a6cdf040c238c137fd50d3f4e3aa3f6877b6f031c93ad9b06c45225b7e6",
            "jesper_2.jpg": "e7c5112cad4076c0b16f7a822b0bf559859ad84077705442769afb91c81bcb1b",
            "new_wave_1.jpg": "dd422c963594e0441ab66c600a322a0b7259dc4b9db535c9a30010b66ce14200",
            "new_wave_2.jpg": "a262d1ec436c0f41495963cbaaf69cb618da0b56a27fa03c0c1e3206e841a261",
            "pool.jpg": "c6b1c79236388d3a7608ce1b8702a613f3d62105e36dfebc1fce4efe16e42560",
            "pool_2.jpg": "82f0e4ec1906a55bd25050bbbc91f4af9607c10d38535cc3dbd55522a00a132f",
            "qt-logo.jpg": "12f4d580dff54dab5a4b0c81f4f208cdb1d134782c7b23d2f8c8bab09a80d458",
            "skagen.jpg": "d7c724e47d68b9f9483b14a9a21235c2ba6c9b3bffd1be49a344391e4c189760",
            "skagen_2.jpg": "17ca43c9fb3b60ad27c63e3a418bff2090999e96bd7a9c7f2c46fb58de899a72",
            "snow.jpg": "7106574608681e7e3387bdc299663cbce521099e9fbff611decf227ee19e7780",
            "spiff.jpg": "4d222fe255566ab7249db968d28aeed2c1ef5508ea79da870d7a5c5cfa290f78",
            "spiff_2.jpg": "9bbab84f204329e1def8c39dda58706aaccb4a913ced00c2593b299a971d2a53",
            "sunset.jpg": "da4a44a03272bbaabc9aa384137f2531fe2a7c0075bc761be001c7b4d2eeb4ee",
            "wayne.jpg": "1e5e3880f65a857181ec98b9fb686e1ebfd03fc6808f002d83aefe758eacece1",
        }, split="extra"),
        licence="GPL-2+ (per debian/copyright)",
    ),
    Source(
        # Close-ups of bark, moss, rock and foliage: dense texture.
        "tuxpaint", "deb", "tuxpaint-data", "1:0.9.28-sdl2-1",
        "f5d0de8f9a70d2efc1241d19f26168cb8bf279f1b77abd3631e7a1a55c40e5e5",
        _items("./usr/share/tuxpaint/templates/", {
            "burnt_bark.jpg": "14f3d6ad3fa5dd2cc0a2a996ed95d09e07f858269a0c90564d8f6f09d679f3b8",
            "cliff.jpg": "ff8da5b7a4eb5f5558a9768764871330ba245dc54ff55d5766129f47a45e7392",
            "corn_maze.jpg": "e3c5dfd777c38fbf79126795ba1165fee41e62402436196363a5e2d938a2d3be",
            "jellyfish.jpg": "340228d44027370689e43fe44e3a01a3793d79224a7fd20b3d52f824a65f787d",
            "lighthouse.jpg": "bf92c1139da97690208a3948c9d1051649deb44bb51baa288820f5c64f9e6365",
            "mossy_bark.jpg": "153b9d8eb33c6f0f6c4a8014039606ccbf1a89677209877de64ab3645324edbb",
            "mossy_log.jpg": "02ba4842fcf5f48f000d8325da89d85bedd8edc0d8cf551603dfdcfca12064e2",
            "mudstone.jpg": "ce1d13d3b66155bea3bc28db56694ade9ed27bd8814814672a0d58cd1b0d93f5",
            "ocean_splash.jpg": "a6c1697ed8dc06c72136041363b0808f5092625a466e8f9c5f7752375a398404",
            "ocean_waves.jpg": "b99c24c7148cb2935c7a9cfde12b81f368f8162e32349e554a8cb2dd44c5624e",
            "redwoods_above.jpg": "cda5f9d27e979e01e22bc16fce24e00b175f4cbfa99e12aa414f308c9aa00745",
            "rocks.jpg": "f3ddf517f26bc77a3f6a98010fc0bfa0ccac431869388755e0032a4f7bb6d748",
            "sheep.jpg": "cb408f8b3fc324798d012f71595a148f9fa360c17d1bde91371bd7c01e9cf881",
            "spiders_web.jpg": "a105461c86ff3c61aa46a6bc75747da570cd836d5c5a465b8faefb564f55ed30",
            "sun_behind_clouds.jpg": "a76583449fb6cf58ca3fd88deac57932f5e0623df8f6ca733258a2ceab3abf91",
            "sun_behind_leaves.jpg": "a6373334dc5af701d9e5f0efa0e1e4671202897a8e49db4b97d7e826b4590ff8",
            "trees_above.jpg": "d75bcb1c0c9cd3f9d9568b09f008e469c1e07ecc0fb84fe2aa858717228310c1",
            "trees_at_dusk.jpg": "9499116f8e8f494bd776b12b9cb4782a118662801ddff98c4127c866cf255720",
            "wool_mill_machine.jpg": "e66d36c482d32cc5bfd001923e584cf6398ef95039d92e9d2e65f64c33274a18",
        }, split="extra"),
        licence="GPL-2+ (per debian/copyright)",
    ),
    Source(
        # Lossless 512 px photos of objects, food and animals, indoors and out.
        "avatars", "deb", "plasma-workspace-data", "4:5.27.5-2+deb12u2",
        "057cda470bd0baf616b3e873bcaf993018d96c8ad30b09535c487f88554e6ea2",
        _items("./usr/share/plasma/avatars/photos/", {
            "Air Balloon.png": "7f7fa070a74066b7702dbd4bff0fb66d733cda60abefbc2bf6c7dc74614af05c",
            "Astronaut.png": "2684f214319779d4112fc8973722f47d61b7aaf5a33820a1c7e0a6945e3a158a",
            "Books.png": "521fb2edf667de1ffb8abc771b3b7b2b53b82b0927fa10a01295400dbd9e8f0d",
            "Brushes.png": "ccefd51a25a2e05eb2def5964ce576a3a2b467ba857faaac7a01b08892669f9d",
            "Bulb.png": "131656bca6d456e1bb8a2bd6fa814c1f58c0deac3c3f7a15b834c15f9b2f205d",
            "Car.png": "6092913504d4b51c540bb00082775e2d667c08090e1c15639d2395914cbc8905",
            "Cat.png": "77b346036fa387c9e9fcb6a38b359fc8a675662f64363ebc5b4b4ab1283cec8a",
            "Chameleon.png": "619e1672599486f9a333ca78877229093f7448b1ea247683df029a6207893f28",
            "Cocktail.png": "08c60a9b2deef1cb57000ec2d54e437f43067f5b593fe7d3b9eeb7016c0f6058",
            "Dog.png": "ff0d1599c4021be70d751ed3b3d0937618be6f898b1e84849e0b14f6c33762f4",
            "Fish.png": "096631b6dce557445d2683059c5b328b36e70c866ed9b318aea790ab282612b9",
            "Gamepad.png": "45ec0d319176f433cdebf1fb97f0eec0c74bf8fc0fc38790cde39eef0e67eb27",
            "Owl.png": "3dd131f7b44479fd934abc1098a0e779663c392382f176bb1aa49022fde4c3f3",
            "Pancakes.png": "eacbed2084e0017a65beedd969f3da26c932d8bf1ed13cc0a03fa720f1f526ee",
            "Parrot.png": "dab45ab561fe50bfb2711b71970b1ab52a6c3a0297f51a1be16af752beda1fdf",
            "Pencils.png": "abfaf6141e6677e404fe2600375c18864837a19b56899746a6d1a0a96d95ce89",
            "Shuttle.png": "faec89b07a09ac0785c972554eaa5a6f877af6221697327bf19db32d3ed99fca",
            "Soccer.png": "735540e11340a968f36d3b700215b2cd3273b4f2b127f4b55872d3c0337a827f",
            "Sunflower.png": "9892108b138a3c623ab4cb81175b8e82de9103a93ae7e79a119ff9b965c36640",
            "Sushi.png": "b528c3376f69b53452f29bb0e7dcd8fc9fa2e302f9ddb8cb0e4183d6f6e04ae6",
        }, split="extra"),
        licence="CC0-1.0 (per the .license file beside each photo)",
    ),
    Source(
        # The photographs among the wallpapers: macro flowers, sky, fog.
        "lxqt", "deb", "lxqt-themes", "1.2.0-1",
        "d518df36b515b09d36cb00b12645dd8ce170bb82bb0966297741905ce3edc8e1",
        _items("./usr/share/lxqt/wallpapers/", {
            "Butterfly-Kenneth-Wimer.jpg": "c237c26f6f0b18db3afa62a0eff13cb8208b79a1ef35aaadcb745d8f9faef146",
            "Valendas.png": "f2d275c51d116942cea8e7d80d30c7d3c130349a0695caf2aa235f926ae15759",
            "after-the-rain.jpg": "e6cb8b3e09b904cc493ff17fddcd564d4e46a1761d05adf972c285a1fd878234",
            "appleflower.png": "bae8a8eb8274b29509f1cbbfe250081331c5704a1fea25d5052166a0451e67f3",
            "beam.png": "3d199194b048cb793c0ad558337cda3e16f14cd054168d1d813620e24a0a5659",
            "butterfly.png": "13175434d99075e075de7321942e66169e3c99ac9416024dcf4123bd3b38749c",
            "cloud.png": "522dbf79dfaff751cf8ef2f337c9d196a231fa096bc38806a76ce048b8c7b5a2",
            "drop.png": "3b726aea9a6f8af36431c6f1974f982f7f4c5a4443499500bda31be27e4ffde8",
            "flowers.png": "3a935d8be4d6c9784f9079ff2814acd2de2c8406e9fe584be03e90264f37c371",
            "fog.jpg": "a8235344ee6b5ab1b6de3ccef731bcc0e6509cf33ce832db87eae1eb75987083",
            "this-is-not-windows.jpg": "2d885e0438c0ab244f818d33d8f745a1cc486558462faf9bf3948675c68ac227",
        }, split="extra"),
        licence="LGPL-2.1+ (per debian/copyright)",
    ),
    Source(
        # Wireshark's user guide: packet lists and dialogs, light and dark mode.
        "wireshark", "deb", "wireshark-doc", "4.0.17-0+deb12u3",
        "fb7c5ba555b287cc39b2535e56b0fa0dd5f5edfe50e178e71df0f0f08baa01d5",
        _items("./usr/share/doc/wireshark/wsug_html_chunked/images/", {
            "ws-dns.png": "e108ac67a55f18f9a68b3d07acdfea23daa654a7b37c5f1388da0145235f7bae",
            "ws-filter-macros.png": "7859f1eafa0612a450b7831fc6aba93e5ea1994d351cfaac1b506b256b7ec5dd",
            "ws-resolved-addr.png": "bcc68734ae9d5edf1a36cfeed413329964734c54aeb560a6c831236d21ff2198",
            "ws-sctp.png": "b1cba263ef104c471e0714a038f7d843d62ab5ffc6562beedcd2d3514bb8662f",
            "ws-tls-session-keys.png": "533b6696c3d6cb7619e21e813a2ae4491e4ebd72b6b7543bbd0387c05f668257",
            "ws-udp-multicast-stream.png": "b9d95437bc23c1a1d37eb6ddc78f4d004c8f4779a1e7ec25fe23f37bc2f7820f",
            "ws-packet-selected.png": "a6f23938a3705b6406b822c7282453a626fcad15aa1dfad55429e66008004b62",
            "ws-expert-information.png": "bb88f1578b2cea2b8f6b5f67bef5326408c05011ae986c6cb68662ced5bedefb",
            "ws-follow-stream.png": "f97f942831c6230d48eea41acf98e8c4bc27e238cadc21568080676c7b819965",
            "ws-gui-preferences.png": "8d1e66741afbafe8759dfe6d09733a923db7eadc10aab2a49d415573869124f3",
            "ws-flow-graph.png": "efadeab37f3be707278350954990f46283930415c9e0ea6aaf81056f88da9053",
        }, split="wide"),
        licence="GPL-2+ (per debian/copyright)",
    ),
    Source(
        # GnuCash's manuals: registers, reports and dialogs (the English copies only).
        "gnucash", "deb", "gnucash-docs", "4.13-1",
        "09979baf0ff8ddc1f9c39320c2c38ff606d6f4656e04742ff2dc51f2d562996f",
        _items("./usr/share/help/C/gnucash-help/figures/", {
            "AccountReg_Screen.png": "2a5d6c4b3f7fbcf6e64bf1a9334c36ac0405d6ce8e9d9b0eed7ff5a2f72b0845",
            "Report_Screen.png": "c20eb5faaa09bac2e996817856d66b0af44cd2e0dd562575ba17acab736435b0",
            "CSV_Import_transactions_Preview.png": "ae14806ed658056d8bccdf7ad4c56fc1e553bab266b094397f41195d47c78b35",
            "Import_Map_Editor.png": "62065865ba6ebda5ecbdd785ef41230c26c87288c7ba24b1fe8dc4d2adbfa64e",
            "Pref_General.png": "8de54d105c0e16f5b26c9fb72ee82fffb1c64afec9f238e01cb6ffc1dadbdfd5",
            "welcome.png": "5876a7fb7e5a1b7c325e4280e08b9930af7b61cae1f5f866c319abdb479742aa",
        }, split="wide")
        + _items("./usr/share/help/C/gnucash-guide/figures/", {
            "invest2Lots3RegAftScrubAcct.png": "1ea9f23736d1778fcae6e302c2495549db293a80dfd3f0249479e4c39da8da3f",
            "currency_main1.png": "b5960998aeff3f4fed85ce593dca778cdf02eacd2529377ea00b239e4acb2201",
            "txns_sxn_editor-3-frequency.png": "485e0e898c8c54d065bd2fcee9acd6e1a5970c754758fd34f9af5e888af6d912",
        }, split="wide"),
        licence="GFDL-1.1+ (per debian/copyright)",
    ),
    Source(
        # GIMP's help: dark-theme dialogs, and an underexposed photo.
        "gimp", "deb", "gimp-help-en", "2.10.34-2",
        "a2deec76763aaf2fcdd197bac0736cdcb0770ba993d48d233329e1c92b0bfe36",
        _items("./usr/share/gimp/2.0/help/en/images/preferences/", {
            "prefs-interface.png": "c6bbc45751bfc93f60c51a05390f70dfb0a87ceabb14ec637f866273bcbe5aa7",
            "prefs-color-management.png": "d04954dd81a8ef47da84d11d25f4f856f0dc26912382d46d291e7a9baaec540e",
            "prefs-system-resources.png": "0db098da1d65cf7adb9f1e366342ab4eda83db3111c43252955f71ce707ee85f",
            "prefs-toolbox.png": "2bacd30d5e21b405eb97a4e6db0b95d38a029b222432ed4326d5355fa3d03adf",
        }, split="wide")
        + _items("./usr/share/gimp/2.0/help/en/images/dialogs/", {
            "keyboard-shortcuts-dialog.png": "fccdf9cdf4d9fa4fdebd44bb56b6e43ef5a168ba777e8df19e5ecd10518de3d0",
        }, split="wide")
        + _items("./usr/share/gimp/2.0/help/en/images/menus/help/", {
            "search-actions.png": "415d206f436936db6613339b5d35d027ba0175f1cc632fcb9d0065d50ed82a36",
        }, split="wide")
        + _items("./usr/share/gimp/2.0/help/en/images/tutorials/tone-mapping/", {
            "apple-orchard-truck-from-camera.jpg": "4d456ec2069d1ef543489e0f503d2eaa6bb0b17654e2029928a0d8ffdb4341b3",
        }, split="wide"),
        licence="GFDL-1.2+ (per debian/copyright of gimp-help-common)",
    ),
    Source(
        # Kdenlive's handbook: a dark video editor.
        "kdenlive", "deb", "kdenlive-data", "22.12.3-2+deb12u2",
        "f4ab20ba8de7e7fb7857d671592a94495f51f4e86e64869f438ddba7428b4dad",
        _items("./usr/share/doc/HTML/en/kdenlive/", {
            "kdenlive_quickstart-mainwindow.png": "9ded492ea6ae1323d6725fa85648cff3ef271c82a5d988b965445bc866e28988",
            "kdenlive-quickstart-effectstack.png": "9e3ee2cb2e66c96d67c3fe376a48274f7a1c15865f5b8c91001a1a9e9d53a8de",
            "kdenlive_quickstart-new-project.png": "d27107eb87799f52d7cbd9990ad30e317763853d3a50dd37537025828375741a",
        }, split="wide"),
        licence="GPL-2+ (per debian/copyright)",
    ),
    Source(
        # KiCad's manuals: circuit boards on dark canvases, schematics, dialogs.
        "kicad", "deb", "kicad-doc-en", "6.0.11+dfsg-1",
        "20dbe9acb2e6f38d49bd742d4b71bee2dc3e7dbd8c54a7a45ad05a742e5ae834",
        _items("./usr/share/doc/kicad/help/en/images/", {
            "routing-complete.png": "244ea3bedb28049e4c3cc704c78b61c9dda68b4191c8110704917a90d96b057a",
            "Pcbnew_example_library.png": "c0e909b10f931cde3ab73bf800d2d3b9e9bbed5fd10c9d5d41ad2c328b03012d",
            "board-with-switch-routed.png": "0014eb62edaed71ad51f3bff09e3a99d47505f57c8516565f8be1d719133da97",
            "gerbview_main_screen.png": "407be563967785c6ec0ccc0d03f4295bb168511ba26a92983d7bb28c746f5a9a",
            "pcbnew_user_interface.png": "ecde9718d5a7e0bca4f100c8be0a892baf9fea3dcb81bba10c62ca15b4562f1a",
            "eeschema_symbol_properties_footprint.png": "d78a7eb96bdbde095fa901a20db94a7f653d2b616d1f0e34db38ef8dd759fcda",
        }, split="wide")
        + _items("./usr/share/doc/kicad/help/en/images/en/", {
            "commands_overview.png": "154fd4e012032664fe01df5f2472a55e8abc9c11487b6fcf39e7522d8072a28b",
        }, split="wide"),
        licence="GPL-3+ or CC-BY-3.0+ (per debian/copyright)",
    ),
    Source(
        # The night sky: telescope photos of nebulae and galaxies; two photos of printed signs.
        "stellarium", "deb", "stellarium-data", "0.22.2-1",
        "45aaebf39a814acbd6dcccea058c2f5651bcb5635599da03a215feeb51f4d5a5",
        _items("./usr/share/stellarium/scenery3d/Sterngarten/Sterngarten_Wien_innerArea/", {
            "Tafel_Sterngarten.jpg": "dd075fb484120200f47849d13422fa17d6744312770f1df9e7b747ae5aa40cb3",
            "Tafel_Wienplan.jpg": "7c0a97ceba522a657799d604e16c33abf98a50cc41a08087c54d846786566a3b",
        }, split="wide")
        + _items("./usr/share/stellarium/nebulae/default/", {
            "n7000.png": "04f39cd9db508562d2bb19b2fe5ece2bd16dc490e04c9b5e8258230ee79f380d",
            "rcw32.png": "d784d8548ae16d611c5a7d591941283f58782d872614dec46f7b3fcd5fac31c1",
            "darkshark-vasey.png": "fd0b183f5db62e3f1abcb649906c7854c97a6a9571761132827e1682682bd9aa",
            "m31.png": "8b301ddd1667e58980c13d288797799827f50711224b46692421de6f7f7634c4",
            "m51-vasey.png": "aabcb06e58258b2313bb9006acd008efd902dc1470b1709c4e1bd712c1e4069a",
            "ic405-vasey.png": "2ddda364334dbf7241868720f960a707a6367f8e70574e2283ffaebf05c05122",
        }, split="wide"),
        licence="GPL-2+; the nebula photos free to use or CC-BY-3.0, credited in debian/copyright",
    ),
    Source(
        # Puzzle photos: a bridge at night, a castle, a bee, a chameleon.
        "palapeli", "deb", "palapeli-data", "4:22.12.3-1",
        "69a15dce2ac25ed8708ac518cd0cee5f4eb0c70ed15da2fdb8899a19ac0ee058",
        _items("./usr/share/palapeli/collection/", {
            "cincinnati-bridge.jpg": "09772d09318b34a5c5edd58ee86ff462bcd2907006f31cc8e0704310f8e9ab60",
            "castle-maintenon.jpg": "f4a6bf48b97d97715413f9ebd2d8744bd46df0e492bc8326e2513d51084f2612",
            "european-honey-bee.jpg": "9d54ae706bddd899c91b2b801d9ca4556a5a9a399b4043f9d539df62a8cb7f27",
            "panther-chameleon-female.jpg": "adb9e2834a8a3db40ca3817452b956ada527085e5aa2bd604c465651a3834ae4",
        }, split="wide"),
        licence="public domain or GFDL (per each photo's .desktop file)",
    ),
    Source(
        # Photos in GCompris' Qt resource files (read_rcc): musicians on dark stages, animals, monuments.
        "gcompris", "deb-rcc", "gcompris-qt-data", "3.1-2",
        "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f",
        _items(_GCOMPRIS.format("explore_world_music") + "music/", {
            "japan.webp": "0f0aa2d3116e01acdc693b626b1b60699124145670e624121289a7ced5020679",
            "italy.webp": "b30a023e5d36bb053a4ee8e57bd0b4fa2042e3d0a5ab8e663a341ba6e35672ad",
            "orchestra.webp": "b4a6d85a40cefbd33cc6801ffcbb3ad7026d8d79be134c753b4f12b0b862cedf",
            "mexico.webp": "cd1286e5d7649bc446a47297f0127a38295e5a5f39a641b528e0c5063675c9d1",
            "australia.webp": "b7e0bc6da6f9fd8b2ae453f9a4a7021e5439bbd8944d4566b938134c0fa24951",
        }, split="wide")
        + _items(_GCOMPRIS.format("erase"), {
            "swans.webp": "5fe69699bf37d702c3ca9b2b76c727aff717494ba368272952e05ac233028eda",
            "dolphin.webp": "2847f84c4c9698a9b55124145dd679868da1239b0f174db8f2c83e173cbb9d8c",
            "gorilla.webp": "5ce6131ce966f585b263e2f04cbd504dd7366f99885ca3cbef12aa25d559b5d4",
            "macaque.webp": "3a97a3c854c6d93cc67cc608e569ed0e6157f22cd5dd7e118fb0a42641eeada8",
            "kitten.webp": "c6f3a52585a3d6179c78e15375a9d9b11f37bfd0ac33b477f3b67cda06c59727",
        }, split="wide")
        + _items(_GCOMPRIS.format("explore_farm_animals") + "animals/", {
            "duck.webp": "fa4572f2022a3aded4b627b9234fb8abf1658d125b267dc8d28cb1a8213c3b60",
        }, split="wide")
        + _items(_GCOMPRIS.format("clickgame"), {
            "sea5.webp": "08c6d1ae0ea47c5136137148c817472da329ca1e67063b0fb3e60190e5c55b00",
        }, split="wide")
        + _items(_GCOMPRIS.format("explore_monuments") + "india/", {
            "gatewayofIndia.webp": "8d1053776a85a9703f819ae6a82f981cbfa9a8961712404afee235afd87a0e48",
        }, split="wide")
        + _items(_GCOMPRIS.format("explore_monuments") + "france/", {
            "reimsCathedral.webp": "720ddce0a3124d68e306008c152fb19ec2a2917b3609ba8a31607cffaf52c2d2",
        }, split="wide"),
        licence="GPL-3+ (per debian/copyright)",
    ),
    Source(
        "kodak", "wheel", "pyiqa", "0.1.16",
        "42bbcf1c274a8b53f040a3ec5ec304a15b7725afb5a85b81050e9cc7e6d09ed4",
        _items("ResultsCalibra/ref_dir/", {
            "I03.bmp": "28441215ca5b6358e6267717250a02eeec4fa5ef73ae454870b8426320f980a8",
            "I06.bmp": "445c2c0fcb47898e9cd8e6de640f2545621d27cbb248c69ef2c84d8204723061",
            "I08.bmp": "b5d6738ece811f45f43c5bce425ad5d18d5c78466989001fe1129fcdd08efdab",
            "I19.bmp": "b8a2ede827d8db21c45f9ca1fb1c043bcec571b5a7243b4ea1aab3fb4feb7e0b",
        }, split="eval", cls="midtone") + _items("ResultsCalibra/ref_dir/", {
            "I04.bmp": "c8500941a30397bc9e613a297e1286bdb955f49926148f58e7963d6e82b03c9f",
        }, split="eval", cls="people"),
        wheel_file="pyiqa-0.1.16-py3-none-any.whl",
        licence="Kodak images (unrestricted use), TID2013 references",
    ),
    Source(
        "skimage", "wheel", "scikit-image", "0.26.0",
        "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        _items("skimage/data/", {
            "chelsea.png": "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
            "coffee.png": "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
            "rocket.jpg": "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c",
            "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
        }, split="eval", cls="midtone") + _items("skimage/data/", {
            "astronaut.png": "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
        }, split="eval", cls="people") + _items("skimage/data/", {
            # CC0Textures (per skimage.data docstrings): gravel, grass, brick.
            "brick.png": "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
            "grass.png": "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
            "gravel.png": "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
            "ihc.png": "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
        }, split="eval", cls="texture") + _items("skimage/data/", {
            "hubble_deep_field.jpg": "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
        }, split="eval", cls="dark") + _items("skimage/data/", {
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
        }, split="eval", cls="midtone"),
        wheel_file="scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
        licence="CC-BY-2.0",
    ),
    # ---- broadened evaluation set (issue 24): content classes the photo pool lacks. ----------
    # Packages used by no train source, so nothing here can be trained on; fetch() also refuses
    # a train image that is a near-duplicate of any of these.
    Source(
        "ukui", "deb", "ukui-wallpapers", "20.04.3-1.1",
        "6d49be70152e6d603163458e177e501deb0be8f2916389ccbfcf59b0d7fc0262",
        _items(_UKUI, {
            "2004default.jpg": "3a9ce649f4cc97bec5f53eba56b73d4186efa86de0708bf1d85236eeeb875ca8",
            "calla.png": "26fc5b5461f37132d913c9b03a48392e59a58f66e665cc5dfc2d997bda4190d4",
            "city.png": "7d7d048f935a7ca9de2808bc0523507a2fe36eda7e9b2fdfc1e3ebd7f4f2169d",
            "desert.png": "e4247a65a08bdf23b42b318583ca9d2c796728466d30a2afdcf3a135c6a14a34",
            "firstgeneration.jpg": "177f1f8cf97dce50abd06c60f274547114b71519f3484e744beecaffa4fd6faa",
            "fluent-color.png": "d8c185c623cdacf36133a3030ac86d73ef2b54e9aad1c8fab1ccb4d91f297511",
            "goldfish.png": "a01ef5d91bfe63fd77e91107ebb83fe203b39ad09cfb40488c56d21f50dffe0f",
            "rhythm.jpg": "7ed93d313b3a699b0f97af153aa3af6dcfdedb8dd35b4fba090f16fb82087de0",
            "rollpaper.png": "6928e4ae7483a4df1fa5d3cdd89ef94fa236fe560f97c99f399f0163120e9669",
            "string.jpg": "73fd26471a45955d256e9318fb24e7ec3a6a922fdc12ec3080c75d2a8da8ab3d",
        }, split="eval", cls="smooth") + _items(_UKUI, {
            "focal-ubuntukylin.png": "3590397864dfceb16f14fc7646c5465a691082fd33a5fc8702c31d954fd9ef0a",
            "the-mouse.jpg": "e4717d5cb7dd3ed12cf0883567b7f2ca38dd83a073a12fc666e8c3b87c3abf79",
        }, split="eval", cls="dark"),
        licence="CC-BY-SA-3.0",
    ),
    Source(
        "gnome", "deb", "gnome-backgrounds", "43.1-1",
        "a670dea21572652127d6e55f9cdb3a226d0037854fdbfd037003c7d00ee0dc4e",
        _items(_GNOME, {
            "adwaita-d.webp": "c4b3fed40deae59f4d296b8f12b0ece7c178c4cfabe9442a260126af5a67819c",
            "grid-d.webp": "efd264c2cc8e83cda4b13b6cf3d6b69f3ffa2d7d8e177fdb4e517effb561d64f",
            "licorice-d.webp": "e51a584d75ec33b58cd33c662948bef359d49a77cb142eebcd11a104b2c9ad4c",
            "pixels-d.webp": "e6b7266b222136ec5f2ad0e166174a027327d5679963f7f9d5f083f8ef340198",
        }, split="eval", cls="dark") + _items(_GNOME, {
            "grid-l.webp": "5c4cb676405e7eb0d89757feb0e4ddb1f1003450066206c5ee928771f5e475af",
            "licorice-l.webp": "728c5dbcb399902570deb83fa10f5c142a87ed22c05140d6b41a1894c1fd4bb9",
            "truchet-d.webp": "1ea4da549d93dd4a7fadf08705883435f8158159d9c57e72f7cb56a758ccef15",
            # wood-d/-l and truchet-l are left out: their vignettes hash within NEAR_DUP_BITS of
            # the train photo plasma/DarkestHour, so fetch() would (rightly) refuse them.
        }, split="eval", cls="texture") + _items(_GNOME, {
            "adwaita-l.webp": "e2a2f6b559e574b76f302e2e854321ee0acbbd8e1891fce95269781e248aa045",
        }, split="eval", cls="smooth"),
        licence="CC-BY-SA-3.0 (per debian/copyright)",
    ),
    Source(
        "mypaint", "deb", "mypaint-data-extras", "2.0.1-9",
        "9d5971baa5eb411309940ea2cfe11aa7f6ec2c39e7f9ecd2bbef81fc6404b1d1",
        _items(_MYPAINT, {
            # Paper and canvas scans: bright, nearly white backgrounds.
            "mrmamurk/mamurk_a_1.png": "01dc26395fd4d1e5a9abd0e793f56c016ad0826c0f2942fe5b4277ff6afc15f9",
            "mrmamurk/mamurk_c_3.png": "702de8987bc0ea42ef4a8be91eedc85c3ea0b47d7a1aae30ca6e1dc1578bdaa5",
            "mrmamurk/mamurk_e_2.png": "db4755f0e30568179ded1282fc82c1ee03a4cab23dc90b0135bdfcbcfce2a255",
            "mrmamurk/mamurk_f_1.png": "a2b9a02cff3cb74074fc0a86a60a41ca2b3d4bbf24689f98a98c149fca3e5866",
            "ramon/HR_Canvas 01.png": "3bbe8fc626a26ef7d491d4dc63497bf11f4f35a734043d97aa3dbb90d7c08592",
            "ramon/HR_Canvas 02.png": "a0571ca5af729d23f1846eca09ca881fe921f610331283b07d3e4d1d1d704f47",
            "ramon/HR_DecoPaper.png": "da86b40e4e65918ebae75e79e63a8a4cede4f3c2b3c0240a643d62517f2f2abd",
            "ramon/HR_PastelPaper 01.png": "169b0bd33744086d03d50610a55e669941c14fadfe8b3d21a1afe6717e9b7260",
            "ramon/HR_RoughPaper.png": "7834a032996bcce2c59f582611d86564756ead94e27ee4d2c0cf29b5eede4dbd",
            "ramon/HR_WaterColor.png": "b438cbdede1361b322ec623e77e3e84f073a8abb637e322c176fbd9996025855",
        }, split="eval", cls="bright") + _items(_MYPAINT, {
            "mrmamurk/mamurk_b_1.png": "b2ff84c1f9649d2a171db4aff25d0f4c0fbd62ca7d6f9bcf46bb288a8488cd6c",
        }, split="eval", cls="dark") + _items(_MYPAINT, {
            "ramon/HR_Cork.png": "abb1c9d5ae5ef55b5f0a3927e50c671e334c7ed9edd08d1f323b1de79566573e",
        }, split="eval", cls="texture"),
        licence="CC0-1.0 (backgrounds/mrmamurk, backgrounds/ramon per debian/copyright)",
    ),
    Source(
        "facerec", "sdist", "face_recognition", "1.3.0",
        "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec",
        _items("face_recognition-1.3.0/tests/test_images/", {
            "biden.jpg": "3c17508bb91554c637a2eabddfae790e5bb1caba93130814fc2ac50be9760c4c",
            "obama.jpg": "0930e3aa8cae5920329c0c8cbc6a2ab70f47b0e67b432875beaa95cbf7e741f6",
            "obama2.jpg": "a7efcc907375274796f39646510704aa86672d59f6d5469d69af3c85590976a6",
            "obama3.jpg": "76ac6bf97c36dc2da0ad16a537d6a5ac1b10f48d49aac29a0cca9a17cdbc3ca3",
            "obama_partial_face.jpg": "c2d1f09e7ef3042352b41e41286e6eb0522f64f88308be13886991b95db52117",
            "obama_partial_face2.jpg": "9a812347f97633542b8cd9992de22def11b74f79d82056bc3ee830f13878e028",
        }, split="eval", cls="people"),
        wheel_file="face_recognition-1.3.0.tar.gz",
        licence="MIT (package); official White House photographs (US Government work, public domain)",
    ),
    Source(
        # Text and screenshots rendered here with the pinned DejaVu fonts (see render_text).
        "render", "render", "fonts-dejavu-core", "2.37-6",
        "8892669e51aab4dc56682c8e39d8ddb7d70fad83c369344e1e240bf3ca22bb76",
        tuple(Item(n, n + ".png", h, "eval", "text") for n, h in RENDER_PINS.items()),
        licence="fonts: Bitstream Vera / DejaVu licence (free); rendered text: this project",
    ),
)

# Content classes of the evaluation set (issue 24): every eval image carries one.
EVAL_CLASSES = ("midtone", "bright", "dark", "smooth", "texture", "people", "text")
MIN_PER_CLASS = 8
MIN_EVAL = 60

# Reserved for independent checks: never in train, eval or the bench (data-sources.md).
# (package, member regex): a None regex reserves the whole package; a member regex reserves the
# matching members; KEEP lists the only members of a package with reserved images that may be used.
RESERVED = (
    (r"lomiri-wallpapers.*", None),
    (r"scipy", r".*(face|ascent)\.dat$"),
    (r"matplotlib|python-matplotlib-data|python3-matplotlib", r".*sample_data/.*"),
    (r"imgaug", r".*quokka.*"),
    (r"pyiqa", r".*"),
)
RESERVED_KEEP = {"pyiqa": {f"ResultsCalibra/ref_dir/I{n:02d}.bmp" for n in (3, 4, 6, 8, 19)}}


def reserved_reason(package: str, member: str) -> str | None:
    """Why (package, member) may not be used, or None when it may."""
    if member in RESERVED_KEEP.get(package, ()):
        return None
    for pkg_re, member_re in RESERVED:
        if re.fullmatch(pkg_re, package) and (member_re is None or re.fullmatch(member_re, member)):
            what = package if member_re is None else f"{package}:{member}"
            return f"{what} is reserved for independent checks (see data-sources.md); use another source"
    return None


def check_sources(sources=None) -> None:
    """Refuse reserved images, eval items without a class, and classes below MIN_PER_CLASS."""
    sources = SOURCES if sources is None else sources
    counts: dict[str, int] = {}
    eval_pkgs = {s.package for s in sources if any(it.split == "eval" for it in s.items)}
    for src in sources:
        if src.package in eval_pkgs and any(it.split in TRAIN_SPLITS for it in src.items):
            raise FetchError(f"{src.package} feeds the eval set, so it may not feed train too; take "
                             f"training images from another package")
        for it in src.items:
            why = reserved_reason(src.package, it.member)
            if why:
                raise FetchError(why)
            if it.split == "eval":
                if it.cls not in EVAL_CLASSES:
                    raise FetchError(f"eval image {src.key}/{it.name} has class {it.cls!r}, not one of {EVAL_CLASSES}")
                counts[it.cls] = counts.get(it.cls, 0) + 1
    if counts:
        low = {c: counts.get(c, 0) for c in EVAL_CLASSES if counts.get(c, 0) < MIN_PER_CLASS}
        if low or sum(counts.values()) < MIN_EVAL:
            raise FetchError(f"eval set too small: {counts} (need >= {MIN_PER_CLASS} per class, {MIN_EVAL} in all)")


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


def get_sdist(src: Source, cache: Path) -> Path:
    """A verified source archive (.tar.gz): cache, else `pip download --no-binary` of the pin."""
    target = cache / src.wheel_file
    if target.exists() and sha256_file(target) == src.archive_sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
          "--no-binary", ":all:", "--no-build-isolation", "-d", str(cache), f"{src.package}=={src.version}"])
    if not target.exists():
        raise FetchError(f"pip download {src.package}=={src.version} did not produce {target.name}")
    check_sha256(target, src.archive_sha256, f"{src.package} {src.version} sdist")
    return target


def extract_sdist(archive: Path, wanted: dict[str, Path]) -> None:
    left = dict(wanted)
    with tarfile.open(archive, "r:*") as tar:
        for m in tar:
            if m.name in left and m.isfile():
                _write_atomic(left.pop(m.name), tar.extractfile(m).read())
    if left:
        raise FetchError(f"{archive.name} lacks {sorted(left)}; the pinned member list is wrong")


def render_items(src: Source, cache: Path, wanted: dict[str, Path]) -> None:
    """Extract the pinned fonts from the font .deb, then render each wanted image."""
    import PIL

    deb = get_deb(src, cache)
    font_dir = cache / f"{src.package}_{src.version}"
    fonts = {_FONTS + f: font_dir / f for f in FONT_FILES}
    if not all(p.exists() for p in fonts.values()):
        extract_deb(deb, {m: p for m, p in fonts.items() if not p.exists()})
    for name, dest in wanted.items():
        _write_atomic(dest, render_text(name, font_dir))
    if PIL.__version__.split(".")[0] != RENDER_PILLOW:
        print(f"fetch_data: note: rendered images were pinned with Pillow {RENDER_PILLOW}.x, this is "
              f"{PIL.__version__}; a sha256 mismatch below means the renderer differs", file=sys.stderr)


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


def read_deb(deb: Path, members: Iterable[str]) -> dict[str, bytes]:
    """The bytes of the given members of a .deb."""
    proc, tar = _deb_data_tar(deb)
    left, out = set(members), {}
    try:
        for m in tar:
            if m.name in left and m.isfile():
                out[m.name] = tar.extractfile(m).read()
                left.discard(m.name)
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
    return out


def extract_deb(deb: Path, wanted: dict[str, Path]) -> None:
    """Extract only the `wanted` members (archive path -> destination) from a .deb."""
    for member, data in read_deb(deb, wanted).items():
        _write_atomic(wanted[member], data)


RCC_SEP = "::"  # a deb-rcc item's member: "<the .rcc file in the .deb>::<the resource path in it>"


def read_rcc(buf: bytes) -> dict[str, bytes | None]:
    """Every file of a Qt resource file (.rcc, format 1-3) by its resource path; None for the
    zstd-compressed ones. Hand-written: nothing on PyPI reads .rcc without Qt itself."""
    magic, version, tree, data, names = struct.unpack_from(">4sIIII", buf)
    if magic != b"qres" or version not in (1, 2, 3):
        raise FetchError("not a Qt resource file of format 1-3; the pinned member is wrong")
    node = 14 if version == 1 else 22  # format 2 added an 8-byte modification time per node

    def name(off: int) -> str:
        n = struct.unpack_from(">H", buf, names + off)[0]  # then a 4-byte hash, then UTF-16 text
        return buf[names + off + 6 : names + off + 6 + 2 * n].decode("utf-16-be")

    out: dict[str, bytes | None] = {}
    stack = [(0, "")]
    while stack:
        i, parent = stack.pop()
        name_off, flags = struct.unpack_from(">IH", buf, tree + i * node)
        path = f"{parent}/{name(name_off)}" if i else ""
        if flags & 2:  # a directory: its children's count and first index
            count, first = struct.unpack_from(">II", buf, tree + i * node + 6)
            stack.extend((c, path) for c in range(first, first + count))
            continue
        off = struct.unpack_from(">I", buf, tree + i * node + 10)[0]  # after country and language
        size = struct.unpack_from(">I", buf, data + off)[0]
        blob = buf[data + off + 4 : data + off + 4 + size]
        out[path] = zlib.decompress(blob[4:]) if flags & 1 else None if flags & 4 else blob  # qCompress: length, zlib
    return out


def extract_deb_rcc(deb: Path, wanted: dict[str, Path]) -> None:
    """Extract resources (".rcc member::resource path" -> destination) from Qt resource files in a .deb."""
    by_rcc: dict[str, dict[str, Path]] = {}
    for member, dest in wanted.items():
        rcc, _, path = member.partition(RCC_SEP)
        by_rcc.setdefault(rcc, {})[path] = dest
    for rcc, data in read_deb(deb, by_rcc).items():
        files = read_rcc(data)
        for path, dest in by_rcc[rcc].items():
            if files.get(path) is None:
                raise FetchError(f"{deb.name}:{rcc} has no uncompressed or zlib resource {path}; "
                                 "the pinned member list is wrong")
            _write_atomic(dest, files[path])


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
    check_sources()
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
            elif src.kind == "deb-rcc":
                extract_deb_rcc(get_deb(src, cache), todo)
            elif src.kind == "sdist":
                extract_sdist(get_sdist(src, cache), todo)
            elif src.kind == "render":
                render_items(src, cache, todo)
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
            } | ({"class": it.cls} if it.cls else {}))
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
                    help="delete downloaded .deb/.whl files afterwards (about 770 MB)")
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
