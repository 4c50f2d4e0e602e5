"""Interrupting RAR Loop mid-run, and the RAR Iterate round cap."""
import time

import numpy as np
import pytest
from PIL import Image

from comfy_client import TINY_MODEL, load_twin, messages, prepare


def test_interrupt_mid_loop(comfy):
    name = comfy.upload_image(Image.fromarray(np.full((192, 192, 3), 90, "uint8")), "rar_long.png")
    # One short run first, so the loader and encoder are cached and the long run starts in RAR Loop.
    t0 = time.time()
    comfy.run(prepare(load_twin("rar_2_stage_graph_loop"), name, TINY_MODEL, mode="fixed", max_rounds=1, steps=20))
    one_round = time.time() - t0  # an upper bound: it also loaded the model and encoded
    api = prepare(load_twin("rar_2_stage_graph_loop"), name, TINY_MODEL, mode="fixed", max_rounds=100, steps=20)
    status, body = comfy.queue(api)
    assert status == 200, body
    pid = body["prompt_id"]
    t0 = time.time()
    while not comfy.get_json("/queue")["queue_running"] and time.time() - t0 < 60:
        time.sleep(0.1)
    time.sleep(min(10.0, 3 * one_round))  # well inside 100 rounds
    if not comfy.get_json("/queue")["queue_running"]:
        entry = comfy.wait(pid)
        pytest.fail(f"the loop ended before it could be interrupted: {entry['status']}")
    t_int = time.time()
    comfy.post_json("/interrupt", {})
    entry = comfy.wait(pid, timeout=600)
    assert time.time() - t_int < 10 + 3 * one_round, "interrupt took effect only after the loop"
    interrupted = messages(entry, "execution_interrupted")
    assert interrupted and interrupted[0]["node_type"] == "RARLoop"
    assert "8" not in entry["outputs"]  # SaveImage never ran
    assert comfy.get_json("/system_stats")


def test_iterate_is_capped_at_32_rounds(comfy):
    api = prepare(load_twin("rar_3_stage_graph_iterate"), "rar_long.png", TINY_MODEL, max_rounds=33)
    status, body = comfy.queue(api)
    # Outputs that do not depend on RAR Iterate (the initial assessment) may still be queued.
    assert body["node_errors"]["6"]["errors"][0]["type"] == "value_bigger_than_max"
    if status == 200:
        comfy.wait(body["prompt_id"])
