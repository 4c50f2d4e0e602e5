"""The pack as ComfyUI sees it: registered nodes, model folder, template browser."""
import json
import os
import urllib.parse
import urllib.request

import workflow_tools as wt
from comfy_client import CORRUPT_MODEL, PACK_NAME, RAR_NODES, TINY_MODEL

EXPECTED_INPUTS = {
    "RARModelLoader": ["model_name", "dtype"],
    "RARLatentEncode": ["rar_model", "image", "vae"],
    "RARAssess": ["rar_model", "latent"],
    "RARRestore": ["rar_model", "latent", "assessment", "steps"],
    "RARVerifyGate": ["rar_model", "previous", "candidate", "assessment"],
    "RARLoop": ["rar_model", "latent", "max_rounds", "steps", "mode", "protocol"],
    "RARIterate": ["rar_model", "latent", "max_rounds", "steps", "mode"],
    "RARLatentDecode": ["rar_model", "latent"],
    "RARRestoreImage": ["rar_model", "image", "max_rounds", "steps", "mode", "vae", "protocol"],
}


def test_pack_imports_cleanly(comfy):
    log = comfy.log_text()
    assert f"{PACK_NAME}" in log
    assert "IMPORT FAILED" not in "\n".join(l for l in log.splitlines() if PACK_NAME in l)


def test_object_info_lists_every_node_and_input(comfy):
    info = comfy.get_json("/object_info")
    for node_id in RAR_NODES:
        assert node_id in info, f"{node_id} missing from /object_info"
        spec = info[node_id]
        assert spec["category"] == "RAR"
        assert spec["display_name"].startswith("RAR ")
        assert spec["description"]
        order = spec["input_order"].get("required", []) + spec["input_order"].get("optional", [])
        assert order == EXPECTED_INPUTS[node_id]
    assert info["RARVerifyGate"]["input"]["required"]["candidate"][1].get("lazy") is True
    assert info["RARIterate"]["input"]["required"]["max_rounds"][1]["max"] == 32
    assert TINY_MODEL in info["RARModelLoader"]["input"]["required"]["model_name"][1]["options"]


def test_model_folder_keeps_extension_filter(comfy):
    assert "rar" in comfy.get_json("/models")
    files = comfy.get_json("/models/rar")
    assert TINY_MODEL in files and CORRUPT_MODEL in files
    assert "README.txt" not in files


def test_template_browser_lists_the_workflows(comfy):
    templates = comfy.get_json("/workflow_templates")
    names = sorted(n[:-5] for n in os.listdir(wt.WORKFLOWS) if n.endswith(".json"))
    assert sorted(templates.get(PACK_NAME, [])) == names
    for name in names:
        served = comfy.get_json(f"/api/workflow_templates/{PACK_NAME}/{urllib.parse.quote(name)}.json")
        assert "nodes" in served and "links" in served  # UI format, not the API twin
        with urllib.request.urlopen(f"{comfy.base}/api/workflow_templates/{PACK_NAME}/"
                                    f"{urllib.parse.quote(name)}.jpg", timeout=60) as r:
            assert r.headers["Content-Type"] == "image/jpeg"  # the browser's thumbnail request


def test_example_image_is_in_the_input_folder(comfy):
    """The templates' LoadImage names it; the pack copied it there on start."""
    assert wt.EXAMPLE_IMAGE in comfy.get_json("/object_info/LoadImage")["LoadImage"]["input"]["required"]["image"][0]


def test_every_input_and_output_has_a_tooltip(comfy):
    info = comfy.get_json("/object_info")
    for node_id in RAR_NODES:
        spec = info[node_id]
        for group in ("required", "optional"):
            for name, s in spec["input"].get(group, {}).items():
                assert len(s) > 1 and len(s[1].get("tooltip", "")) > 20, f"{node_id}.{name} has no tooltip"
        tips = spec.get("output_tooltips", [])
        assert len(tips) == len(spec["output"]) and all(t and len(t) > 20 for t in tips), node_id


def test_ui_only_widget_values_table_matches_object_info(comfy):
    """workflow_tools.UI_EXTRA_AFTER must name exactly the widgets the frontend adds a value after."""
    info = comfy.get_json("/object_info")
    used = set()
    for path in wt.api_twins().values():
        with open(path) as f:
            for node in json.load(f).values():
                spec = info[node["class_type"]]["input"]
                for name, s in {**spec.get("required", {}), **spec.get("optional", {})}.items():
                    opts = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
                    if opts.get("control_after_generate") or opts.get("image_upload"):
                        used.add((node["class_type"], name))
    assert used <= wt.UI_EXTRA_AFTER
