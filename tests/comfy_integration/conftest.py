"""Start a real ComfyUI headless on CPU with this pack loaded, for end-to-end tests.

Skipped unless COMFYUI_PATH points at a ComfyUI checkout. COMFYUI_PYTHON picks the interpreter
that runs ComfyUI (default: the one running pytest). The pack is symlinked into a temp
custom_nodes folder under the name ``comfyui-rar`` and loaded through an extra_model_paths
yaml, so the ComfyUI checkout is never modified. A tiny random RAR model is written into a temp
models/rar folder; the workflows use it unless the packaged compact weights exist.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_client import CORRUPT_MODEL, TINY_MODEL, TINY_OFFICIAL, start_server  # noqa: E402

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


def _write_models(models_dir):
    """A tiny random model for the workflows and a corrupt file for the error tests."""
    from tiny_model import write_tiny_model
    os.makedirs(models_dir, exist_ok=True)
    write_tiny_model(os.path.join(models_dir, TINY_MODEL))
    write_tiny_model(os.path.join(models_dir, TINY_OFFICIAL), official=True)
    with open(os.path.join(models_dir, CORRUPT_MODEL), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a safetensors header")
    with open(os.path.join(models_dir, "README.txt"), "w") as f:
        f.write("must not show in the model list (extension filter)\n")


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """One ComfyUI server per test session, with the pack whitelisted and temp folders."""
    if not COMFYUI_PATH or not os.path.isfile(os.path.join(COMFYUI_PATH, "main.py")):
        pytest.skip("COMFYUI_PATH is not set to a ComfyUI checkout")
    root = tmp_path_factory.mktemp("comfy")
    _write_models(str(root / "models" / "rar"))
    with start_server(root, COMFYUI_PATH, os.environ.get("COMFYUI_PYTHON") or sys.executable) as client:
        yield client
