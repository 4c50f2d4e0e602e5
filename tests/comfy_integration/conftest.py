"""Start a real ComfyUI headless on CPU with this pack loaded, for end-to-end tests.

Skipped unless COMFYUI_PATH points at a ComfyUI checkout. COMFYUI_PYTHON picks the interpreter
that runs ComfyUI (default: the one running pytest). The pack is symlinked into a temp
custom_nodes folder under the name ``comfyui-rar`` and loaded through an extra_model_paths
yaml, so the ComfyUI checkout is never modified. A tiny random RAR model is written into a temp
models/rar folder; the workflows use it unless the packaged compact weights exist.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_client import CORRUPT_MODEL, PACK_NAME, REPO, TINY_MODEL, TINY_OFFICIAL, ComfyClient  # noqa: E402

STARTUP_TIMEOUT_S = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "180"))

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    custom_nodes = root / "custom_nodes"
    custom_nodes.mkdir()
    os.symlink(REPO, custom_nodes / PACK_NAME)
    for d in ("input", "output", "temp", "user"):
        (root / d).mkdir()
    _write_models(str(root / "models" / "rar"))
    yaml_path = root / "extra_model_paths.yaml"
    yaml_path.write_text(f"rar_test:\n  base_path: {root}\n  custom_nodes: custom_nodes\n  rar: models/rar\n")
    port = _free_port()
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--dont-print-server", "--disable-api-nodes",
           "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", str(yaml_path),
           "--input-directory", str(root / "input"), "--output-directory", str(root / "output"),
           "--temp-directory", str(root / "temp"), "--user-directory", str(root / "user"),
           "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME]
    log_path = root / "comfyui.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=COMFYUI_PATH, stdout=log, stderr=subprocess.STDOUT)
    client = ComfyClient(f"http://127.0.0.1:{port}", str(log_path))
    client.root = root
    t0 = time.time()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {proc.returncode}:\n{client.log_text()[-4000:]}")
            try:
                client.get_json("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() - t0 > STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"ComfyUI did not start:\n{client.log_text()[-4000:]}")
                time.sleep(0.5)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
