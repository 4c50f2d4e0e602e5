"""HTTP client for a running ComfyUI (urllib only) and helpers shared by the integration tests."""
import contextlib
import copy
import io
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_NAME = "comfyui-rar"  # folder name under custom_nodes = template browser category
TINY_MODEL = "tiny_rar.safetensors"
TINY_OFFICIAL = "tiny_rar_official.safetensors"  # official-tier layout: SD3 latents, no codec of its own
CORRUPT_MODEL = "corrupt_rar.safetensors"
STARTUP_TIMEOUT_S = float(os.environ.get("COMFYUI_STARTUP_TIMEOUT", "180"))
RAR_NODES = ["RARModelLoader", "RARLatentEncode", "RARAssess", "RARRestore", "RARVerifyGate", "RARLoop",
             "RARIterate", "RARLatentDecode", "RARRestoreImage"]


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


def load_twin(name):
    with open(os.path.join(REPO, "workflows", "api", name + ".json")) as f:
        return json.load(f)


def prepare(api, image_name, model_name, **loop_inputs):
    """A copy of an API workflow using the test image, the given RAR model and loop settings."""
    api = copy.deepcopy(api)
    for node in api.values():
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = image_name
        elif node["class_type"] == "RARModelLoader":
            node["inputs"]["model_name"] = model_name
        elif node["class_type"] in ("RARLoop", "RARIterate", "RARRestoreImage"):
            node["inputs"].update(loop_inputs)
    return api


def node_of(api, class_type):
    """Id of the (first) node of a class in an API workflow."""
    return next(k for k, v in api.items() if v["class_type"] == class_type)


def text(entry, node_id):
    """The text a PreviewAny node showed."""
    return entry["outputs"][node_id]["text"][0]


def error_of(entry):
    errors = messages(entry, "execution_error")
    return errors[0] if errors else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def start_server(root, comfyui_path, python, extra_args=()):
    """Run ComfyUI headless on CPU with only this pack loaded (symlinked as custom_nodes/comfyui-rar
    through an extra_model_paths yaml) and folders under `root`; yields a ComfyClient with .proc."""
    root = str(root)
    for d in ("custom_nodes", "input", "output", "temp", "user", os.path.join("models", "rar")):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    link = os.path.join(root, "custom_nodes", PACK_NAME)
    if not os.path.lexists(link):
        os.symlink(REPO, link)
    yaml_path = os.path.join(root, "extra_model_paths.yaml")
    with open(yaml_path, "w") as f:
        f.write(f"rar_test:\n  base_path: {root}\n  custom_nodes: custom_nodes\n  rar: models/rar\n")
    port = _free_port()
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--disable-auto-launch", "--dont-print-server", "--disable-api-nodes",
           "--database-url", "sqlite:///:memory:", "--extra-model-paths-config", yaml_path,
           "--input-directory", os.path.join(root, "input"), "--output-directory", os.path.join(root, "output"),
           "--temp-directory", os.path.join(root, "temp"), "--user-directory", os.path.join(root, "user"),
           "--disable-all-custom-nodes", "--whitelist-custom-nodes", PACK_NAME, *extra_args]
    log_path = os.path.join(root, "comfyui.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=comfyui_path, stdout=log, stderr=subprocess.STDOUT)
        client = ComfyClient(f"http://127.0.0.1:{port}", log_path)
        client.proc, client.root = proc, root
        try:
            t0 = time.time()
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
