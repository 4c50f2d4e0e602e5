"""Make the template browser's thumbnails (workflows/<title>.jpg) from test_browser.py's screenshots.

    COMFYUI_PATH=... python -m pytest tests/comfy_integration/test_browser.py --basetemp=/tmp/rar_bt
    python tests/comfy_integration/make_thumbnails.py /tmp/rar_bt/comfy0/browser

Each thumbnail is the canvas part of a real screenshot (after the template ran where it is
runnable), cropped to the card's 4:3 and scaled to 512x384.
"""
import os
import sys

from PIL import Image

import workflow_tools as wt

SIZE = (512, 384)
CANVAS_LEFT, CANVAS_TOP = 70, 85  # the sidebar and the tab/menu bars of the 1600x1000 screenshots


def thumbnail(shot: str, out: str) -> None:
    with Image.open(shot) as im:
        im = im.convert("RGB")
        height = im.height - CANVAS_TOP
        width = min(im.width - CANVAS_LEFT, height * SIZE[0] // SIZE[1])
        height = width * SIZE[1] // SIZE[0]
        box = (CANVAS_LEFT, CANVAS_TOP, CANVAS_LEFT + width, CANVAS_TOP + height)
        im.crop(box).resize(SIZE, Image.Resampling.LANCZOS).save(out, "JPEG", quality=85, optimize=True)


def main(folder: str) -> None:
    for name, ui_path in wt.ui_files().items():
        shot = os.path.join(folder, f"{name}_after_run.png")
        if not os.path.exists(shot):
            shot = os.path.join(folder, f"{name}.png")
        thumbnail(shot, ui_path[:-5] + ".jpg")
        print("wrote", ui_path[:-5] + ".jpg", "from", os.path.basename(shot))


if __name__ == "__main__":
    main(sys.argv[1])
