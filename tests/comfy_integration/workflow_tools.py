"""API-format <-> UI-format (litegraph) conversion, limited to what the shipped workflows use.

ComfyUI has no server-side UI->API converter (the frontend's graphToPrompt does it), so the pack
keeps both forms of every example: workflows/*.json (UI, listed by the template browser) and
workflows/api/*.json (API, run by the integration tests). `ui_to_api` checks that they agree;
`api_to_ui` regenerates the UI files from the API twins and ComfyUI's /object_info:

    COMFYUI_URL=http://127.0.0.1:8188 python tests/comfy_integration/workflow_tools.py

(run against a ComfyUI that has this pack loaded). No primitives, reroutes or subgraphs.
Regenerating keeps what only the UI file has: node positions and sizes, Note nodes, `models`.

The template browser (frontend 1.27) titles a pack's template by its file name and lists them in
the server's directory order, so the UI files carry readable, numbered names (TITLES) while the
API twins keep short ids.
"""
from __future__ import annotations

import json
import os
import sys

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Widgets followed by a UI-only value in widgets_values: control_after_generate ("fixed",
# "randomize", ...) and the image upload button. The integration test checks this table
# against /object_info.
UI_EXTRA_AFTER = {("KSampler", "seed"), ("LoadImage", "image")}
SKIP_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# API twin id -> UI file name (= the title the template browser shows)
TITLES = {
    "rar_1_restore_image": "RAR 1 - Restore an image",
    "rar_2_stage_graph_loop": "RAR 2 - Stage nodes with RAR Loop",
    "rar_3_stage_graph_iterate": "RAR 3 - Stage nodes with RAR Iterate",
    "rar_4_assess_report": "RAR 4 - Assess only",
    "rar_5_with_diffusion": "RAR 5 - Restore then SD3.5 img2img",
}
EXAMPLE_IMAGE = "rar_example_degraded.png"  # the pack's __init__ copies it into ComfyUI/input
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKFLOWS = os.path.join(REPO, "workflows")


def ui_to_api(ui: dict) -> dict:
    """The API prompt the frontend would send for this UI workflow (bypassed/muted nodes dropped)."""
    links = {l[0]: l for l in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in SKIP_TYPES or node.get("mode", 0) in (2, 4):
            continue
        values = list(node.get("widgets_values", []))
        inputs = {}
        for slot in node.get("inputs", []):
            value = None
            if "widget" in slot:
                value = values.pop(0)
                if (node["type"], slot["name"]) in UI_EXTRA_AFTER:
                    values.pop(0)
            if slot.get("link") is not None:
                link = links[slot["link"]]
                value = [str(link[1]), link[2]]
            if value is not None:
                inputs[slot["name"]] = value
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def _is_widget(spec) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def api_to_ui(api: dict, object_info: dict, previous: dict | None = None) -> dict:
    """A loadable UI workflow for an API prompt, laid out in columns by graph depth, or as in
    `previous` (the current UI file) for nodes it has; its Note nodes and `models` are kept."""
    depth = {}

    def node_depth(nid):
        if nid not in depth:
            ups = [v[0] for v in api[nid]["inputs"].values() if isinstance(v, list) and len(v) == 2]
            depth[nid] = 1 + max((node_depth(u) for u in ups), default=-1)
        return depth[nid]

    for nid in api:
        node_depth(nid)
    nodes, links, rows = [], [], {}
    out_links = {}
    for order, nid in enumerate(sorted(api, key=lambda n: (depth[n], int(n)))):
        entry = api[nid]
        info = object_info[entry["class_type"]]
        spec = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        names = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        inputs, values = [], []
        for name in names:
            value = entry["inputs"].get(name)
            kind = spec[name][0]
            slot = {"name": name, "type": "COMBO" if isinstance(kind, list) else kind, "link": None}
            if _is_widget(spec[name]):
                slot["widget"] = {"name": name}
                opts = spec[name][1] if len(spec[name]) > 1 else {}
                values.append(value if not isinstance(value, list) else opts.get("default"))
                if (entry["class_type"], name) in UI_EXTRA_AFTER:
                    values.append("fixed" if opts.get("control_after_generate") else "image")
            elif value is None:
                continue  # an unconnected optional socket is simply not listed
            if isinstance(value, list):
                link_id = len(links) + 1
                src_type = object_info[api[value[0]]["class_type"]]["output"][value[1]]
                links.append([link_id, int(value[0]), value[1], int(nid), len(inputs), src_type])
                slot["link"] = link_id
                out_links.setdefault((value[0], value[1]), []).append(link_id)
            inputs.append(slot)
        col = depth[nid]
        y = rows.get(col, 80)
        height = 60 + 26 * len(inputs)
        rows[col] = y + height + 60
        nodes.append({
            "id": int(nid), "type": entry["class_type"], "pos": [60 + 360 * col, y], "size": [300, height],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs,
            "outputs": [{"name": n, "type": t, "links": []} for n, t in zip(info["output_name"], info["output"])],
            "properties": {"Node name for S&R": entry["class_type"]}, "widgets_values": values,
        })
    by_id = {str(n["id"]): n for n in nodes}
    for (src, slot), ids in out_links.items():
        by_id[src]["outputs"][slot]["links"] = ids
    ui = {"id": "00000000-0000-4000-8000-0000000000" + str(len(nodes)).zfill(2), "revision": 0,
          "last_node_id": max(int(n) for n in api), "last_link_id": len(links),
          "nodes": sorted(nodes, key=lambda n: n["id"]), "links": links, "groups": [], "config": {},
          "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}
    if previous:
        keep_layout(ui, previous)
    return ui


def keep_layout(ui: dict, previous: dict) -> None:
    """Carry over from `previous` what the API form cannot hold: layout, Notes, models, view."""
    old = {n["id"]: n for n in previous["nodes"]}
    for node in ui["nodes"]:
        if node["id"] in old and old[node["id"]]["type"] == node["type"]:
            for key in ("pos", "size", "properties"):
                node[key] = old[node["id"]][key]
    notes = [n for n in previous["nodes"] if n["type"] in SKIP_TYPES]
    ui["nodes"] = sorted(ui["nodes"] + notes, key=lambda n: n["id"])
    ui["last_node_id"] = max(n["id"] for n in ui["nodes"])
    for key in ("models", "extra"):
        if key in previous:
            ui[key] = previous[key]


def ui_files() -> dict[str, str]:
    """API twin id -> path of its UI workflow (named by its title)."""
    return {name: os.path.join(WORKFLOWS, TITLES[name] + ".json") for name in TITLES}


def api_twins() -> dict[str, str]:
    """name -> path of every API twin shipped in workflows/api."""
    folder = os.path.join(WORKFLOWS, "api")
    return {f[:-5]: os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".json")}


def main():
    import urllib.request
    url = os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188")
    with urllib.request.urlopen(url + "/object_info") as r:
        object_info = json.loads(r.read())
    for name, path in api_twins().items():
        ui_path = os.path.join(WORKFLOWS, TITLES[name] + ".json")
        previous = None
        if os.path.exists(ui_path):
            with open(ui_path) as f:
                previous = json.load(f)
        with open(path) as f:
            ui = api_to_ui(json.load(f), object_info, previous)
        with open(ui_path, "w") as f:
            json.dump(ui, f, indent=1)
            f.write("\n")
        print("wrote", ui_path)


if __name__ == "__main__":
    sys.exit(main())
