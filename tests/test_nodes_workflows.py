"""The shipped example workflows, checked without ComfyUI (runs in CI).

Every UI workflow in workflows/ has an API twin in workflows/api/ that it converts to exactly,
uses only core nodes plus this pack's nodes (no missing-node surprises for users), opens with the
pack's degraded example image, explains itself in a Note, and has a thumbnail.
"""
import json
import os
import sys

import pytest
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "comfy_integration"))
import workflow_tools as wt  # noqa: E402

UI = sorted(wt.TITLES)
CORE_NODES = {"LoadImage", "SaveImage", "PreviewAny", "CheckpointLoaderSimple", "CLIPTextEncode", "VAEEncode",
              "KSampler", "VAEDecode", "Note"}
TITLE_H = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's title bar sits above its pos


def load(path):
    with open(path) as f:
        return json.load(f)


def test_every_ui_workflow_has_a_twin_and_vice_versa():
    assert UI == sorted(wt.api_twins())
    shipped = sorted(f[:-5] for f in os.listdir(wt.WORKFLOWS) if f.endswith(".json"))
    assert shipped == sorted(wt.TITLES.values())


@pytest.mark.parametrize("name", UI)
def test_ui_and_api_twin_agree(name):
    assert wt.ui_to_api(load(wt.ui_files()[name])) == load(wt.api_twins()[name])


@pytest.mark.parametrize("name", UI)
def test_workflow_uses_only_core_and_rar_nodes(name):
    ui = load(wt.ui_files()[name])
    types = {n["type"] for n in ui["nodes"]}
    assert types <= CORE_NODES | {t for t in types if t.startswith("RAR")}
    assert any(t.startswith("RAR") for t in types)


@pytest.mark.parametrize("name", UI)
def test_ui_links_are_consistent(name):
    ui = load(wt.ui_files()[name])
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == kind
    assert ui["last_link_id"] == len(ui["links"]) and ui["last_node_id"] == max(nodes)


@pytest.mark.parametrize("name", UI)
def test_template_opens_with_the_example_image_and_a_note(name):
    ui = load(wt.ui_files()[name])
    images = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "LoadImage"]
    assert images == [wt.EXAMPLE_IMAGE]
    asset = os.path.join(wt.REPO, "rar_core", "assets", "sample_degraded.png")
    assert os.path.isfile(asset)
    notes = [n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and wt.TITLES[name] in notes[0]
    assert "Settings that matter" in notes[0] or "Nothing to tune" in notes[0]


@pytest.mark.parametrize("name", UI)
def test_template_nodes_do_not_overlap(name):
    """As stored; the browser test also checks the sizes the frontend actually draws, before and after a run."""
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - TITLE_H, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in load(wt.ui_files()[name])["nodes"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2], f"nodes {a[0]} and {b[0]} overlap"


@pytest.mark.parametrize("name", UI)
def test_template_has_a_thumbnail(name):
    """The template browser requests <name>.jpg beside the json."""
    with Image.open(wt.ui_files()[name][:-5] + ".jpg") as im:
        assert im.format == "JPEG" and im.width >= 256 and im.height >= 192


def test_diffusion_template_declares_its_checkpoint():
    """The frontend offers the download for files in `models` that are missing from that folder."""
    ui = load(wt.ui_files()["rar_5_with_diffusion"])
    ckpt = next(n for n in ui["nodes"] if n["type"] == "CheckpointLoaderSimple")
    (model,) = ui["models"]
    assert model["name"] == ckpt["widgets_values"][0] and model["directory"] == "checkpoints"
    assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith(model["name"])
    assert ckpt["properties"]["models"] == ui["models"]
    note = next(n for n in ui["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert model["name"] in note and "models/checkpoints" in note
