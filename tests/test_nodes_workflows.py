"""The shipped example workflows, checked without ComfyUI (runs in CI).

Every UI workflow in workflows/ has an API twin in workflows/api/ that it converts to exactly,
and uses only core nodes plus this pack's nodes (no missing-node surprises for users).
"""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "comfy_integration"))
import workflow_tools as wt  # noqa: E402

UI = sorted(f[:-5] for f in os.listdir(wt.WORKFLOWS) if f.endswith(".json"))
CORE_NODES = {"LoadImage", "SaveImage", "PreviewAny", "CheckpointLoaderSimple", "CLIPTextEncode", "VAEEncode",
              "KSampler", "VAEDecode"}


def load(path):
    with open(path) as f:
        return json.load(f)


def test_every_ui_workflow_has_a_twin_and_vice_versa():
    assert UI and UI == sorted(wt.api_twins())


@pytest.mark.parametrize("name", UI)
def test_ui_and_api_twin_agree(name):
    ui = load(os.path.join(wt.WORKFLOWS, name + ".json"))
    assert wt.ui_to_api(ui) == load(wt.api_twins()[name])


@pytest.mark.parametrize("name", UI)
def test_workflow_uses_only_core_and_rar_nodes(name):
    ui = load(os.path.join(wt.WORKFLOWS, name + ".json"))
    types = {n["type"] for n in ui["nodes"]}
    assert types <= CORE_NODES | {t for t in types if t.startswith("RAR")}
    assert any(t.startswith("RAR") for t in types)


@pytest.mark.parametrize("name", UI)
def test_ui_links_are_consistent(name):
    ui = load(os.path.join(wt.WORKFLOWS, name + ".json"))
    nodes = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == kind
    assert ui["last_link_id"] == len(ui["links"]) and ui["last_node_id"] == max(nodes)
