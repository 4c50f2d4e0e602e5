"""The pack as a user meets it: ComfyUI's own frontend in headless Chromium.

Opens every template from the template browser, checks that nothing is missing and nothing is
red, runs the runnable ones from the Run button, and waits for their results on the nodes.
Screenshots go to the pytest temp folder (`browser/` beside comfyui.log; the workflows/*.jpg
thumbnails are made from them by tests/comfy_integration/make_thumbnails.py).

Skipped unless COMFYUI_PATH is set, the `playwright` package is importable and a Chromium is
installed (Debian's `chromium`, or CHROMIUM=/path/to/chrome). Nothing is downloaded: playwright
drives the system browser through executable_path, so never run `playwright install`.
"""
import json
import os
import shutil
import tempfile

import pytest

import workflow_tools as wt
from comfy_client import PACK_NAME

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip("no Chromium found (apt-get install chromium, or set CHROMIUM)", allow_module_level=True)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1600, "height": 1000}
RUNNABLE = ["rar_1_restore_image", "rar_2_stage_graph_loop", "rar_3_stage_graph_iterate", "rar_4_assess_report"]
RUN_TIMEOUT_MS = 600_000  # the compact model on a busy 2-core machine
SUMMARY_NODES = ("RARRestoreImage", "RARLoop", "RARIterate")
MISSING_NODES = "the following node types were not found"  # frontend 1.27's dialog texts
MISSING_MODELS = "the following models were not found"

# Node boxes as the frontend draws them (getBounding includes the title bar), and node errors.
GRAPH_STATE = """() => app.graph.nodes.map(n => ({
    id: n.id, type: n.type, box: Array.from(n.getBounding()), has_errors: !!n.has_errors,
    registered: n.type in LiteGraph.registered_node_types,
    summary: (n.widgets || []).find(w => w.name === "rar_summary")?.value ?? null,
    images: (n.imgs || []).length}))"""


def overlaps(nodes):
    """Pairs of node ids whose drawn boxes intersect."""
    out = []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["box"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                out.append((a["id"], b["id"]))
    return out


@pytest.fixture(scope="module")
def page(comfy):
    shots = os.path.join(comfy.root, "browser")
    os.makedirs(shots, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="rar_chromium_")
    with playwright_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True,
                                                   viewport=VIEWPORT)
        pg = ctx.pages[0] if ctx.pages else ctx.new_page()
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(f"{e}\n{e.stack}"))
        pg.goto(comfy.base)
        pg.wait_for_function("window.app && window.app.graph && window.app.extensionManager", timeout=180_000)
        # frontend 1.27.10 itself throws once while it sets up (GraphView: CORE_SETTINGS.forEach reads the
        # id of an undefined entry); keep start-up errors only where an extension's code is involved
        pg.errors[:] = [e for e in pg.errors if "/extensions/" in e]
        # record the server's execution messages the way the frontend receives them
        pg.evaluate("""() => { window.rarEvents = [];
            for (const kind of ["executed", "execution_success", "execution_error"])
                window.comfyAPI.api.api.addEventListener(kind, e => window.rarEvents.push([kind, e.detail])); }""")
        pg.shots = shots
        yield pg
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def open_template(page, title):
    """Templates sidebar button -> this pack's category -> the template's card."""
    content = page.locator('[data-testid="template-workflows-content"]')
    page.wait_for_timeout(1000)  # the first visit may open the browser by itself
    if not content.is_visible():
        page.locator("button.templates-tab-button").click()
    content.wait_for(timeout=60_000)
    page.get_by_role("option", name=PACK_NAME).click()
    cards = page.locator('[data-testid^="template-workflow-"]')
    cards.first.wait_for(timeout=60_000)
    order = cards.evaluate_all("els => els.map(e => e.dataset.testid.replace('template-workflow-', ''))")
    page.locator(f'[data-testid="template-workflow-{title}"]').click()
    content.wait_for(state="hidden", timeout=60_000)
    page.wait_for_function("t => app.graph.nodes.length > 0 && document.title.includes(t)", arg=title,
                           timeout=60_000)
    page.wait_for_timeout(1500)  # image preview and DOM widgets settle
    return order


def dialog_texts(page):
    return page.locator(".p-dialog").all_inner_texts()


def close_dialogs(page):
    for _ in range(3):
        if not page.locator(".p-dialog").count():
            return
        page.keyboard.press("Escape")
        page.wait_for_timeout(300)


@pytest.mark.parametrize("name", sorted(wt.TITLES))
def test_template_opens_complete(page, name):
    title = wt.TITLES[name]
    order = open_template(page, title)
    assert order == [wt.TITLES[n] for n in sorted(wt.TITLES)], "templates not in their numbered order"
    dialogs = " ".join(dialog_texts(page))
    assert MISSING_NODES not in dialogs and "Some Nodes Are Missing" not in dialogs, dialogs
    if name == "rar_5_with_diffusion":  # the frontend offers the checkpoint the workflow declares
        with open(wt.ui_files()[name]) as f:
            ckpt = json.load(f)["models"][0]["name"]
        assert MISSING_MODELS in dialogs and f"checkpoints / {ckpt}" in dialogs, dialogs
    else:
        assert not dialogs.strip(), dialogs
    close_dialogs(page)
    page.screenshot(path=os.path.join(page.shots, f"{name}.png"))
    nodes = page.evaluate(GRAPH_STATE)
    assert all(n["registered"] for n in nodes), [n["type"] for n in nodes if not n["registered"]]
    assert not [n["id"] for n in nodes if n["has_errors"]]
    assert not overlaps(nodes), overlaps(nodes)
    load_image = next(n for n in nodes if n["type"] == "LoadImage")
    assert load_image["images"] == 1  # the example image was found in the input folder and shows
    assert not page.errors, page.errors


@pytest.mark.parametrize("name", RUNNABLE)
def test_template_runs_from_the_run_button(comfy, page, name):
    open_template(page, wt.TITLES[name])
    close_dialogs(page)
    # a fresh run, not one served from the cache of the template before: cached nodes that are not
    # output nodes (RAR Assess) send no UI message, so their text would not show
    comfy.post_json("/free", {"free_memory": True})
    page.evaluate("() => { window.rarEvents.length = 0; }")
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_function("() => rarEvents.some(([k]) => k === 'execution_success' || k === 'execution_error')",
                           timeout=RUN_TIMEOUT_MS)
    page.wait_for_timeout(1500)  # previews drawn
    page.screenshot(path=os.path.join(page.shots, f"{name}_after_run.png"))
    events = page.evaluate("() => rarEvents")
    assert not [d for k, d in events if k == "execution_error"], events
    nodes = page.evaluate(GRAPH_STATE)
    by_type = {n["type"]: n for n in nodes}
    if "SaveImage" in by_type:
        assert by_type["SaveImage"]["images"] == 1, "no output image on Save Image"
    for kind in SUMMARY_NODES:
        if kind in by_type:
            assert "image 0:" in (by_type[kind]["summary"] or ""), f"{kind} shows no round summary"
    if "RARAssess" in by_type:
        assert by_type["RARAssess"]["summary"], f"RAR Assess shows no answer: {events}"
    assert not overlaps(nodes), f"previews overlap after the run: {overlaps(nodes)}"
    assert not page.errors, page.errors
