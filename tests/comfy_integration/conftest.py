"""Start a real ComfyUI headless on CPU with this pack loaded, for end-to-end tests.

Skipped unless COMFYUI_PATH points at a ComfyUI checkout. COMFYUI_PYTHON picks the interpreter
that runs ComfyUI (default: the one running pytest). The pack is symlinked into a temp
custom_nodes folder under the name ``comfyui-rar`` and loaded through an extra_model_paths
yaml, so the ComfyUI checkout is never modified. A tiny random RAR model is written into a temp
models/rar folder; the workflows use it unless the packaged compact weights exist.
"""
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_NAME = "comfyui-rar"
TINY_MODEL = "tiny_rar.safetensors"
CORRUPT_MODEL = "corrupt_rar.safetensors"
STARTUP_TIMEOUT_S = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "180"))

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyClient:
    """Minimal HTTP client (urllib only) for /prompt, /history, /interrupt and files."""

    def __init__(self, base_url, log_path):
        self.base = base_url
        self.log_path = log_path
        self.client_id = str(uuid.uuid4())

    def get_json(self, path):
        with urllib.request.urlopen(self.base + path, timeout=60) as r:
            return json.loads(r.read())

    def post_json(self, path, payload):
        req = urllib.request.Request(self.base + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return r.status, (json.loads(body) if body else None)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def queue(self, prompt):
        """POST a prompt; returns (status, body). 400 bodies carry node_errors."""
        return self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})

    def wait(self, prompt_id, timeout=600):
        """Poll /history until the prompt finished; returns its history entry."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            hist = self.get_json(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s; see {self.log_path}")

    def run(self, prompt, timeout=600):
        status, body = self.queue(prompt)
        assert status == 200, f"/prompt refused the graph: {json.dumps(body, indent=1)[:3000]}"
        return self.wait(body["prompt_id"], timeout)

    def upload_image(self, pil_image, name):
        buf = io.BytesIO()
        pil_image.save(buf, format="PNG")
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + buf.getvalue() + (
                f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue"
                f"\r\n--{boundary}--\r\n").encode()
        req = urllib.request.Request(self.base + "/upload/image", data=body,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["name"]

    def view(self, image_ref):
        from PIL import Image
        q = urllib.parse.urlencode({"filename": image_ref["filename"], "subfolder": image_ref["subfolder"],
                                    "type": image_ref["type"]})
        with urllib.request.urlopen(f"{self.base}/view?{q}", timeout=60) as r:
            return Image.open(io.BytesIO(r.read()))

    def log_text(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()


def messages(entry, kind):
    """The status messages of one kind from a history entry."""
    return [data for name, data in entry["status"].get("messages", []) if name == kind]


def _write_models(models_dir):
    """A tiny random model for the workflows and a corrupt file for the error tests."""
    os.makedirs(models_dir, exist_ok=True)
    write_tiny_model(os.path.join(models_dir, TINY_MODEL))
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
