"""Benchmarks of the node pack inside a real ComfyUI (CPU), for BENCHMARKS.md. Not a test.

    COMFYUI_PATH=/path/to/ComfyUI python tests/comfy_integration/bench_comfy.py \
        [--python /path/to/comfy-venv/bin/python] [--size 256 512] [--rounds 2] [--out bench.json] \
        [--report BENCHMARKS.md] [--large 3000x2000]

1. overhead: RAR Restore Image / the RAR Loop stage graph in ComfyUI vs what `rar restore` does
   per image (load, rar_core.restore_image, save) on the same images and settings, same
   interpreter, model loaded; ComfyUI time is the whole prompt (execution_start ->
   execution_success), so it includes LoadImage and SaveImage.
2. memory: ComfyUI's RSS during 100 rounds of RAR Loop, and after each of 20 queued prompts.
3. iterate: RAR Iterate's extra time per round over RAR Loop, at 4..32 rounds.
4. large: the shipped degraded sample enlarged to 3000x2000 through RAR Restore Image with the
   built-in model (adaptive, 4 rounds): seconds and the server's peak RSS, beside `rar restore`
   on the same file.
Models 1-3 have random weights (the compact architecture for 1, the tiny test model for 2 and 3),
run in fixed mode so every round does the same work.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from comfy_client import REPO, load_twin, prepare, start_server  # noqa: E402
from tiny_model import write_tiny_model  # noqa: E402

COMPACT, TINY = "compact_random.safetensors", "tiny_rar.safetensors"


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def prompt_seconds(entry):
    ts = {name: data.get("timestamp") for name, data in entry["status"]["messages"]}
    return (ts["execution_success"] - ts["execution_start"]) / 1000


def images(client, root, n, size, tag):
    rng = np.random.default_rng(abs(hash(tag)) % 2**32)
    names = []
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 255).astype("uint8")
        Image.fromarray(arr).save(os.path.join(root, f"{tag}_{i}.png"))
        names.append(client.upload_image(Image.fromarray(arr), f"{tag}_{i}.png"))
    return names


def direct_seconds(python, model_path, paths, rounds, steps):
    """What `rar restore` does per image (load, restore_image, save), timed in a fresh process of
    the same interpreter with the model loaded once; ComfyUI's prompts likewise load and save."""
    code = f"""
import os, sys, tempfile, time, json, torch
sys.path.insert(0, {REPO!r})
from rar_core.checkpoint import load_rar
from rar_core.image import load_image, save_image
from rar_core.loop import restore_image
m = load_rar({model_path!r})
out, tmp = [], tempfile.mkdtemp()
for i, p in enumerate({paths!r}):
    t = time.perf_counter()
    x, alpha = load_image(p)
    res = restore_image(m, x, {rounds}, {steps}, "fixed")
    save_image(res.image, os.path.join(tmp, f"{{i}}.png"), alpha)
    out.append(time.perf_counter() - t)
print(json.dumps(out))
"""
    res = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_overhead(client, python, root, size, rounds, steps, n=4, reps=3):
    """The three paths in `reps` interleaved blocks of n images each: on a shared machine the speed
    drifts by tens of percent over minutes, and blocks spread that drift over every path."""
    names = images(client, root, n + 1, size, f"ovh{size}_")
    paths = [os.path.join(root, f"ovh{size}__{i}.png") for i in range(n + 1)]
    model = os.path.join(root, "models", "rar", COMPACT)
    results = {"restore_image_node": [], "loop_stage_graph": [], "rar_restore_cli_work": []}
    apis = {}
    for label, twin in (("restore_image_node", "rar_1_restore_image"), ("loop_stage_graph", "rar_2_stage_graph_loop")):
        api = prepare(load_twin(twin), names[0], COMPACT, max_rounds=rounds, steps=steps, mode="fixed")
        apis[label] = {k: v for k, v in api.items() if v["class_type"] not in ("PreviewAny", "RARAssess")}
        client.run(apis[label])  # warm-up: loads the model, which then stays cached
    for _ in range(reps):
        for label, api in apis.items():
            for name in names[1:]:
                api["1"]["inputs"]["image"] = name
                results[label].append(prompt_seconds(client.run(api)))
        results["rar_restore_cli_work"] += direct_seconds(python, model, paths, rounds, steps)[1:]
    base = float(np.median(results["rar_restore_cli_work"]))
    return {"size": size, "rounds": rounds, "steps": steps, "seconds": results,
            "overhead_pct": {k: 100 * (float(np.median(v)) / base - 1) for k, v in results.items()}}


def bench_memory(client, root, size=128):
    pid = client.proc.pid
    name = images(client, root, 1, size, "mem")[0]
    api = prepare(load_twin("rar_2_stage_graph_loop"), name, TINY, max_rounds=100, mode="fixed")
    status, body = client.queue(api)
    samples = []
    while True:
        entry = client.get_json(f"/history/{body['prompt_id']}").get(body["prompt_id"])
        samples.append(rss_mb(pid))
        if entry and entry["status"].get("completed"):
            break
        time.sleep(0.1)
    loop = {"rss_mb_first_10pct": float(np.max(samples[: max(1, len(samples) // 10)])),
            "rss_mb_max": float(np.max(samples)), "rss_mb_end": samples[-1], "samples": len(samples)}
    names = images(client, root, 20, size, "queue")
    after = []
    for n in names:
        a = prepare(load_twin("rar_2_stage_graph_loop"), n, TINY, max_rounds=4, mode="fixed")
        client.run(a)
        after.append(rss_mb(pid))
    growth = lambda first, last: 100 * (last / first - 1)  # noqa: E731
    return {"loop_100_rounds": {**loop, "growth_pct": growth(loop["rss_mb_first_10pct"], loop["rss_mb_max"])},
            "queued_20_prompts": {"rss_mb": after, "growth_pct": growth(after[0], after[-1])}}


def bench_iterate(client, root, size=64):
    out = []
    for n in (4, 8, 16, 32):
        row = {"rounds": n}
        for label, twin in (("loop", "rar_2_stage_graph_loop"), ("iterate", "rar_3_stage_graph_iterate")):
            ts = []
            for name in images(client, root, 3, size, f"it{n}{label}"):
                api = prepare(load_twin(twin), name, TINY, max_rounds=n, mode="fixed")
                ts.append(prompt_seconds(client.run(api)))
            row[label] = float(np.median(ts))
        row["overhead_per_round_ms"] = 1000 * (row["iterate"] - row["loop"]) / n
        out.append(row)
    return out


def bench_large(client, python, root, size, rounds=4):
    """RAR Restore Image on one large image with the built-in model, against `rar restore` on the
    same file in a fresh process of the same interpreter (its whole run: load, restore, save).
    The image is the shipped degraded sample (haze + defocus) enlarged to `size` (Lanczos)."""
    with Image.open(os.path.join(REPO, "rar_core", "assets", "sample_degraded.png")) as im:
        large = im.convert("RGB").resize(size, Image.LANCZOS)
    image_path = os.path.join(root, "large.png")
    large.save(image_path)
    name = client.upload_image(large, "large.png")
    api = prepare(load_twin("rar_1_restore_image"), name, "rar-compact (built-in)", max_rounds=rounds, mode="adaptive")
    api = {k: v for k, v in api.items() if v["class_type"] != "PreviewAny"}
    pid = client.proc.pid
    status, body = client.queue(api)
    peak = 0.0
    while True:
        entry = client.get_json(f"/history/{body['prompt_id']}").get(body["prompt_id"])
        peak = max(peak, rss_mb(pid))
        if entry and entry["status"].get("completed"):
            break
        time.sleep(0.2)
    comfy_s = prompt_seconds(entry)
    out = os.path.join(root, "large_cli.png")
    t = time.perf_counter()
    cli = subprocess.run([python, "-m", "rar_core.cli", "restore", str(image_path), "-o", out, "--max-rounds",
                          str(rounds), "--overwrite", "-q"], capture_output=True, text=True, cwd=REPO)
    cli_s = time.perf_counter() - t
    if cli.returncode:
        raise RuntimeError(f"rar restore failed: {cli.stderr}")
    return {"size": list(size), "rounds": rounds, "comfy_seconds": comfy_s, "comfy_peak_rss_mb": peak,
            "cli_seconds": cli_s}


START, END = "<!-- comfy bench -->", "<!-- /comfy bench -->"
START_LARGE, END_LARGE = "<!-- comfy bench large -->", "<!-- /comfy bench large -->"
TARGET_OVERHEAD_PCT, TARGET_GROWTH_PCT = 10.0, 5.0


def verdict(ok: bool) -> str:
    return "pass" if ok else "**MISS**"


def markdown(report: dict, comfyui: str, rev: str | None = None) -> str:
    """The BENCHMARKS.md section: issue 4's targets, then the numbers behind them."""
    import platform

    import torch

    rev = rev or subprocess.run(["git", "-C", comfyui, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["## Inside ComfyUI (`tests/comfy_integration/bench_comfy.py`)", "",
             f"ComfyUI {rev or '(unknown revision)'} headless with `--cpu`, this pack as its only custom node pack; "
             f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}. "
             "ComfyUI times are whole prompts (execution_start to execution_success, LoadImage and SaveImage "
             "included); models have seeded random weights and run in fixed mode, so every round does the same work.", "",
             "| target (issue 4) | goal | measured | |", "|---|---:|---:|---|"]
    for o in report.get("overhead", []):
        pct = o["overhead_pct"]["loop_stage_graph"]
        lines.append(f"| RAR Loop stage graph vs `rar restore` ({o['size']} px, {o['rounds']} rounds x {o['steps']} steps) "
                     f"| <= +{TARGET_OVERHEAD_PCT:.0f} % | {pct:+.1f} % | {verdict(pct <= TARGET_OVERHEAD_PCT)} |")
    m = report.get("memory")
    if m:
        for key, label in (("loop_100_rounds", "process RSS over 100 rounds of RAR Loop"),
                           ("queued_20_prompts", "process RSS over 20 queued prompts")):
            g = m[key]["growth_pct"]
            lines.append(f"| {label} | within {TARGET_GROWTH_PCT:.0f} % | {g:+.1f} % | {verdict(abs(g) <= TARGET_GROWTH_PCT)} |")
    if report.get("overhead"):
        count = len(report["overhead"][0]["seconds"]["loop_stage_graph"])
        lines += ["", f"Median seconds per image over {count} prompts per path, run in interleaved blocks (the same "
                  "images and settings for every path):", "",
                  "| size | path | median s | vs `rar restore` (load + restore + save) |", "|---:|---|---:|---:|"]
        for o in report["overhead"]:
            for k, v in o["seconds"].items():
                lines.append(f"| {o['size']} | {k} | {float(np.median(v)):.3f} | {o['overhead_pct'][k]:+.1f} % |")
    if m:
        q = m["queued_20_prompts"]["rss_mb"]
        lo = m["loop_100_rounds"]
        lines += ["", f"RSS during the 100-round prompt: {lo['rss_mb_first_10pct']:.0f} MB in its first tenth, "
                  f"{lo['rss_mb_max']:.0f} MB at most, {lo['rss_mb_end']:.0f} MB at the end ({lo['samples']} samples). "
                  f"After each of 20 queued prompts: {q[0]:.0f} MB first, {max(q):.0f} MB at most, {q[-1]:.0f} MB last."]
    it = report.get("iterate")
    if it:
        lines += ["", "RAR Iterate (graph expansion) against RAR Loop, 64 px, tiny model, median of 3 prompts. RAR Loop "
                  "renders a preview image per round for the progress bar and Iterate does not, so a negative "
                  "overhead means expansion costs less than that preview:", "",
                  "| rounds | RAR Loop s | RAR Iterate s | Iterate overhead per round |", "|---:|---:|---:|---:|"]
        for r in it:
            lines.append(f"| {r['rounds']} | {r['loop']:.3f} | {r['iterate']:.3f} | {r['overhead_per_round_ms']:.1f} ms |")
    return "\n".join(lines) + "\n"


def markdown_large(lg: dict) -> str:
    """The large-image section (its own markers, so `--only large` leaves the other numbers)."""
    w, h = lg["size"]
    return "\n".join([
        f"### A {w}x{h} image in ComfyUI and on the command line", "",
        f"RAR Restore Image with the built-in model (adaptive, at most {lg['rounds']} rounds) on the shipped sample "
        f"enlarged to {w}x{h} (`--large {w}x{h}`); "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}. Issue 27 asks for at most 2 minutes on 2 cores.", "",
        "| path | seconds | peak RSS |", "|---|---:|---:|",
        f"| RAR Restore Image in ComfyUI (whole prompt) | {lg['comfy_seconds']:.1f} | "
        f"{lg['comfy_peak_rss_mb']:.0f} MB (server process) |",
        f"| `rar restore` (fresh process: load, restore, save) | {lg['cli_seconds']:.1f} | |"]) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON") or sys.executable)
    ap.add_argument("--size", type=int, nargs="+", default=[256, 512], help="image sides of the overhead runs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--only", choices=["overhead", "memory", "iterate", "large"])
    ap.add_argument("--large", metavar="WxH", help="also time an image of this size (e.g. 3000x2000); left out: no row")
    ap.add_argument("--out")
    ap.add_argument("--report", help="markdown file whose ComfyUI section is rewritten (e.g. BENCHMARKS.md)")
    ap.add_argument("--comfyui-rev", help="ComfyUI revision for the report (default: git rev-parse in COMFYUI_PATH)")
    args = ap.parse_args()
    comfyui = os.environ["COMFYUI_PATH"]
    root = tempfile.mkdtemp(prefix="rar_bench_")
    os.makedirs(os.path.join(root, "models", "rar"))
    write_tiny_model(os.path.join(root, "models", "rar", TINY))
    sys.path.append(REPO)
    from rar_core.checkpoint import build_model, save_rar
    from rar_core.config import RARConfig
    save_rar(build_model(RARConfig.preset("compact"), seed=0), os.path.join(root, "models", "rar", COMPACT))
    report = {}
    with start_server(root, comfyui, args.python) as client:
        if args.only in (None, "overhead"):
            report["overhead"] = [bench_overhead(client, args.python, root, size, args.rounds, args.steps) for size in args.size]
            print(json.dumps([o["overhead_pct"] for o in report["overhead"]]), flush=True)
        if args.only in (None, "iterate"):
            report["iterate"] = bench_iterate(client, root)
            print(json.dumps(report["iterate"]), flush=True)
        if args.only in (None, "large") and args.large:
            size = tuple(int(n) for n in args.large.lower().split("x"))
            report["large"] = bench_large(client, args.python, root, size)
            print(json.dumps(report["large"]), flush=True)
        if args.only in (None, "memory"):
            report["memory"] = bench_memory(client, root)
            print(json.dumps({k: v["growth_pct"] for k, v in report["memory"].items()}), flush=True)
    text = json.dumps(report, indent=1)
    if args.report:
        from rar_core.report import replace_section

        if args.only != "large":
            replace_section(Path(args.report), START, END, markdown(report, comfyui, args.comfyui_rev))
        if "large" in report:
            replace_section(Path(args.report), START_LARGE, END_LARGE, markdown_large(report["large"]))
        print(f"wrote {args.report}")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
