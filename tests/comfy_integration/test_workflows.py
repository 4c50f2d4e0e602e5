"""Every runnable example workflow (API twin) runs in a real ComfyUI on CPU."""
import json

import numpy as np
import pytest
from PIL import Image

from comfy_client import TINY_MODEL, error_of, load_twin, messages, node_of, prepare, text

W, H = 72, 52  # not a multiple of the model's 16-px grid: padded, restored, cropped back
RUNNABLE = ["rar_1_restore_image", "rar_2_stage_graph_loop", "rar_3_stage_graph_iterate", "rar_4_assess_report"]


@pytest.fixture(scope="module")
def model_name(comfy):
    """The built-in compact model when its weights are packaged, else the tiny test model.
    (The shipped workflows run with it; the heavier loop tests below use the tiny model.)"""
    options = comfy.get_json("/object_info/RARModelLoader")["RARModelLoader"]["input"]["required"]["model_name"][1]
    builtin = [o for o in options["options"] if "built-in" in o]
    return builtin[0] if builtin else TINY_MODEL


@pytest.fixture(scope="module")
def image_name(comfy):
    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((H, W, 3)) * 255).astype("uint8"))
    return comfy.upload_image(img, "rar_test.png")


def saved(comfy, api, entry):
    ref = entry["outputs"][node_of(api, "SaveImage")]["images"]
    return [comfy.view(r) for r in ref]


@pytest.mark.parametrize("name", RUNNABLE)
def test_workflow_runs(comfy, model_name, image_name, name):
    api = prepare(load_twin(name), image_name, model_name)
    entry = comfy.run(api)
    assert entry["status"]["status_str"] == "success", error_of(entry)
    if any(n["class_type"] == "SaveImage" for n in api.values()):
        images = saved(comfy, api, entry)
        assert [im.size for im in images] == [(W, H)]
    loop = [k for k, v in api.items() if v["class_type"] in ("RARLoop", "RARIterate", "RARRestoreImage")]
    if loop:
        preview = next(k for k, v in api.items() if v["class_type"] == "PreviewAny"
                       and v["inputs"]["source"][0] == loop[0])
        trace = json.loads(text(entry, preview))
        assert len(trace) == 1 and trace[0]["trace"] and trace[0]["trace"][0]["round"] == 1
    else:
        answer = text(entry, node_of(api, "PreviewAny"))
        assert answer.strip()


def test_diffusion_workflow_only_lacks_the_checkpoint(comfy, model_name, image_name):
    """rar_5 needs an SD3.5 checkpoint; with none installed, that must be its only validation error."""
    api = prepare(load_twin("rar_5_with_diffusion"), image_name, model_name)
    status, body = comfy.queue(api)
    bad = {nid: e["class_type"] for nid, e in body["node_errors"].items()}
    assert set(bad.values()) == {"CheckpointLoaderSimple"}, body["node_errors"]
    if status == 200:  # the RAR half (restore + trace preview) is valid on its own and runs
        entry = comfy.wait(body["prompt_id"])
        assert entry["status"]["status_str"] == "success", error_of(entry)


@pytest.mark.parametrize("mode", ["fixed", "once", "adaptive"])
def test_loop_and_iterate_agree(comfy, image_name, mode):
    """RAR Iterate (graph expansion) gives the same latent and trace as RAR Loop (one node)."""
    results = []
    for name in ("rar_2_stage_graph_loop", "rar_3_stage_graph_iterate"):
        api = prepare(load_twin(name), image_name, TINY_MODEL, max_rounds=3, mode=mode)
        entry = comfy.run(api)
        assert entry["status"]["status_str"] == "success", error_of(entry)
        trace = json.loads(text(entry, "9"))
        for item in trace:
            for r in item["trace"]:
                r.pop("seconds", None)
        results.append((np.asarray(saved(comfy, api, entry)[0]).astype(int), trace))
    (img_loop, trace_loop), (img_iter, trace_iter) = results
    assert trace_loop == trace_iter
    assert np.abs(img_loop - img_iter).max() <= 1
    if mode == "fixed":
        assert trace_loop[0]["rounds"] == 3


def test_batch_restores_every_item(comfy, image_name):
    api = prepare(load_twin("rar_1_restore_image"), image_name, TINY_MODEL, mode="fixed", max_rounds=2)
    api["20"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}}
    api["3"]["inputs"]["image"] = ["20", 0]
    entry = comfy.run(api)
    assert entry["status"]["status_str"] == "success", error_of(entry)
    assert [im.size for im in saved(comfy, api, entry)] == [(W, H)] * 3
    trace = json.loads(text(entry, "5"))
    assert [t["rounds"] for t in trace] == [2, 2, 2]


def test_requeue_hits_the_cache(comfy, image_name):
    api = prepare(load_twin("rar_2_stage_graph_loop"), image_name, TINY_MODEL)
    api["8"]["inputs"]["filename_prefix"] = "RAR/cache_test"
    first = comfy.run(api)
    assert first["status"]["status_str"] == "success", error_of(first)
    second = comfy.run(api)
    assert second["status"]["status_str"] == "success", error_of(second)
    cached = set(messages(second, "execution_cached")[0]["nodes"])
    assert cached == set(api), f"not cached: {set(api) - cached}"
