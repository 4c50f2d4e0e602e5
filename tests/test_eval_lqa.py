"""scripts/eval_lqa.py: every (seed, degradation, photo) is asked once, and the summary counts right."""

from __future__ import annotations

import numpy as np

from rar_core import degrade as D


def test_evaluate_asks_every_pair(tiny_model, load_script):
    E = load_script("eval_lqa")
    rng = np.random.default_rng(0)
    cleans = [rng.random((64, 64, 3), dtype=np.float32) for _ in range(2)]
    res = E.evaluate(tiny_model.eval(), cleans, seeds=2)
    assert len(res["rows"]) == 2 * len(D.LABELS) * 2
    assert len(res["clean_answers"]) == 2
    labels = set(tiny_model.config.labels)
    assert all(r["answer"] in labels and r["expected"] in labels for r in res["rows"])
    s = E.summary(res)
    assert s["n"] == len(res["rows"])
    assert set(s["per_label"]) == {r["expected"] for r in res["rows"]}
    for key in ("identification", "clean_named_clean", "verification", "clean_as_a", "clean_as_b_rejected"):
        assert 0.0 <= s[key] <= 1.0


def test_summary_arithmetic(load_script):
    E = load_script("eval_lqa")
    rows = [
        {"expected": "Noise", "answer": "Noise", "clean_as_a": True, "clean_as_b_rejected": True},
        {"expected": "Noise", "answer": "Haze", "clean_as_a": False, "clean_as_b_rejected": True},
        {"expected": "Noise", "answer": "Noise", "clean_as_a": True, "clean_as_b_rejected": True},
        {"expected": "Haze", "answer": "Haze", "clean_as_a": True, "clean_as_b_rejected": False},
        {"expected": "Haze", "answer": "Haze", "clean_as_a": True, "clean_as_b_rejected": True},
    ]
    s = E.summary({"rows": rows, "clean_answers": ["Clean", "Noise"]})
    assert s["identification"] == 0.8
    assert s["per_label"] == {"Noise": 2 / 3, "Haze": 1.0}
    assert s["most_said"] == {"Noise": "Noise", "Haze": "Haze"}
    assert s["clean_named_clean"] == 0.5
    assert s["clean_as_a"] == 0.8 and s["clean_as_b_rejected"] == 0.8
    assert s["verification"] == 0.8
