"""`rar bench --quick` end to end on a tiny random model and a fake data folder written here:
the JSON has every section and the expected rows, BENCHMARKS.md gets (and only rewrites) its
marked section, the plots exist, and the samples are deterministic and come from `eval` only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from rar_core import bench
from rar_core import degrade as D
from rar_core.checkpoint import save_rar
from rar_core.cli import main
from rar_core.config import COMPACT_LABELS

SIZE = 64  # the tiny model's LQA/MMDiT position tables are sized for small latents


def fake_data(root: Path) -> Path:
    """Two eval photos (different sizes, one landscape one portrait) and one train photo."""
    rng = np.random.default_rng(0)
    images = []
    for name, (w, h), split in (("eval/a.png", (96, 80), "eval"), ("eval/b.png", (70, 90), "eval"),
                                ("train/c.png", (80, 80), "train")):
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), (3 * xx + yy) % 256], axis=2)
        arr = np.clip(arr + rng.integers(-15, 15, arr.shape), 0, 255).astype(np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / name)
        images.append({"file": name, "split": split, "width": w, "height": h})
    (root / "manifest.json").write_text(json.dumps({"version": 1, "images": images}))
    return root


def test_samples_deterministic_and_eval_only(tmp_path):
    data = fake_data(tmp_path / "data")
    files = bench.eval_files(data)
    assert [f.name for f in files] == ["a.png", "b.png"]  # never the train image
    cleans = [bench.center_crop(f, SIZE) for f in files]
    assert all(c.shape == (SIZE, SIZE, 3) and c.dtype == np.float32 for c in cleans)
    s1 = bench.make_samples(cleans, seed=0)
    s2 = bench.make_samples(cleans, seed=0)
    assert [s.id for s in s1] == [s.id for s in s2]
    assert all(np.array_equal(a.degraded, b.degraded) for a, b in zip(s1, s2))
    groups = [s for s in s1 if s.kind != "single"]
    assert len(groups) == 3 * len(cleans)
    for s in groups:
        assert D.group_of(s.labels) == s.kind
        assert s.labels == D.physical_sort(s.labels)
        assert set(s.severities) <= {2, 3}
    singles = [s for s in s1 if s.kind == "single"]
    assert len(singles) == len(D.LABELS) * len(cleans)  # 4 per label, capped by the image count
    assert all(s.severities == [3] for s in singles)


def test_write_section_keeps_other_sections(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\n<!-- bench_gpu:start -->\nGPU\n<!-- bench_gpu:end -->\n")
    bench.write_section(report, "first\n")
    bench.write_section(report, "second\n")
    text = report.read_text()
    assert "GPU" in text and "second" in text and "first" not in text
    assert text.count(bench.MARK_START) == 1 and text.count(bench.MARK_END) == 1


def test_bench_quick_end_to_end(tmp_path, capsys, tiny_model):
    data = fake_data(tmp_path / "data")
    model_path = save_rar(tiny_model, tmp_path / "tiny.safetensors")
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Benchmarks\n\nintro\n\n<!-- bench_gpu:start -->\nGPU section\n<!-- bench_gpu:end -->\n")
    out = tmp_path / "bench_out"
    rc = main(["bench", "--model", str(model_path), "--data", str(data), "--out", str(out),
               "--report", str(report), "--quick", "--size", str(SIZE), "--threads", "1", "--quiet"])
    assert rc == 0

    res = json.loads((out / "results.json").read_text())
    assert {"meta", "methods", "samples", "summary", "speed", "no_reference", "plots", "targets"} <= set(res)
    assert res["meta"]["quick"] is True and res["meta"]["n_images"] == 2
    # 2 images x 3 groups + 1 single degradation x 2 images (+ 1 albumentations row per image)
    ext = res["ext_source"]["available"]
    assert len(res["samples"]) == 8 + (2 if ext else 0)
    assert {r["cls"] for r in res["samples"]} == {bench.UNLABELLED}  # the fake manifest has no classes
    for r in res["samples"]:
        assert set(r["methods"]) == set(bench.METHODS)
        for m in r["methods"].values():
            assert {"psnr", "ssim", "seconds"} <= set(m)
        assert 0 <= r["rounds"] <= bench.MAX_ROUNDS
        assert r["identify"] in COMPACT_LABELS
        assert len(r["gate"]) == r["attempts"]  # one gate record per round the adaptive loop tried
        for g in r["gate"]:
            assert g["accepted"] == (g["round"] <= r["rounds"])
    q = res["summary"]["quality"]
    assert set(q) == {"A", "B", "C", "single", "all"} | ({"ext"} if ext else set())
    assert q["all"]["n"] == 8  # `all` is degrade.py's rows; albumentations rows are their own kind
    assert len(res["clean_rows"]) == 2
    for c in res["clean_rows"]:
        assert 0 < c["psnr"] <= bench.PSNR_CAP and abs(c["level_shift"]) < 1
        assert c["psnr"] == bench.PSNR_CAP or c["rounds"] > 0  # no accepted round: the input comes back
    assert res["summary"]["clean"]["all"]["n"] == 2
    assert set(res["summary"]["by_class"]) == {bench.UNLABELLED}
    for k in q:
        assert set(bench.METHODS) <= set(q[k])
        assert q[k]["rar_adaptive"]["psnr"] > 0
    ident = res["summary"]["identification"]
    assert ident["singles_n"] == 2 and ident["clean_n"] == 2
    assert 0.0 <= ident["singles"] <= 1.0 and 0.0 <= ident["clean"] <= 1.0
    ver = res["summary"]["verification"]
    assert ver["pairs"] == 8 and 0.0 <= ver["accuracy"] <= 1.0
    assert res["summary"]["codec"]["n"] == 2
    assert list(res["speed"]) == [str(SIZE)]  # --quick: one size
    sp = res["speed"][str(SIZE)]
    assert sp["flops_round"] > 0 and sp["peak_rss_bytes"] > 0 and sp["seconds_fixed4"] > 0
    names = [t["name"] for t in res["targets"] if t["issue"] == 3]
    assert len(names) == 14
    names24 = [t["name"] for t in res["targets"] if t["issue"] == 24]
    assert any(n.startswith("clean unlabelled: share within 35 dB") for n in names24)
    assert any(n.startswith("gate: candidates >= 0.5 dB worse rejected") for n in names24)
    assert any(n.startswith("LQA answers") for n in names24)
    assert any(n.startswith("512x512") for n in names)
    t512 = next(t for t in res["targets"] if t["name"].startswith("512x512"))
    assert t512["pass"] is None  # not measured in --quick, and not silently passed
    for t in res["targets"]:
        assert t["pass"] in (True, False, None)
    for p in res["plots"]:
        assert Path(p).is_file() and Path(p).stat().st_size > 1000
    assert {Path(p).name for p in res["plots"]} == {"psnr_by_group.png", "strip_A.png", "strip_B.png", "strip_C.png"}
    assert all(Path(p).parent == tmp_path / "docs" / "bench" for p in res["plots"])

    text = report.read_text()
    assert text.startswith("# Benchmarks\n\nintro") and "GPU section" in text
    assert text.count(bench.MARK_START) == 1 and text.count(bench.MARK_END) == 1
    for heading in ("### Targets", "### Restoration quality", "### No-reference quality", "### The LQA and the codec",
                    "### Speed, memory and FLOPs", "### Plots", "### Per content class", "### Clean inputs",
                    "### Second degradation source", "target (issue 24)"):
        assert heading in text
    for m in bench.METHODS:
        assert bench.METHOD_NAMES[m] in text
    assert "](docs/bench/strip_A.png)" in text
    assert "--quick smoke run" in text
    assert "codec reconstruction PSNR" in capsys.readouterr().out


# ----- issue 24: per-class aggregation, the clean row, the gate -----------------------------
def _row(kind, cls, inp, ada, cla=None, rounds=1, gate=()):
    m = {k: {"psnr": v, "ssim": 0.5, "seconds": 0.1} for k, v in
         (("input", inp), ("classical", inp if cla is None else cla), ("rar_1", ada), ("rar_fixed4", ada), ("rar_adaptive", ada))}
    return {"kind": kind, "cls": cls, "image": 0, "methods": m, "rounds": rounds, "attempts": rounds + 1,
            "gate": list(gate)}


def test_per_class_aggregation_on_fake_rows():
    rows = [_row("A", "bright", 20.0, 26.0), _row("A", "bright", 22.0, 20.0), _row("B", "bright", 18.0, 19.0),
            _row("A", "dark", 10.0, 15.0), _row("ext", "dark", 30.0, 28.0, cla=31.0)]
    byc = bench.summarize_by_class(rows)
    assert list(byc) == ["bright", "dark"]  # fetch_data's class order
    a = byc["bright"]["A"]
    assert a["n"] == 2 and a["input"]["psnr"] == 21.0 and a["rar_adaptive"]["psnr"] == 23.0
    assert byc["bright"]["degraded"]["n"] == 3
    assert abs(byc["bright"]["degraded"]["rar_adaptive"]["psnr"] - 65.0 / 3) < 1e-9
    assert "ext" not in byc["bright"] and byc["dark"]["ext"]["classical"]["psnr"] == 31.0
    assert byc["dark"]["all"]["n"] == 1  # `all` is degrade.py's rows only; ext stays apart
    assert byc["dark"]["degraded"]["n"] == 2
    # The class targets read the pooled rows: bright gains (+6 -2 +1)/3 = +5/3, dark (+5 -2)/2.
    t = {x["name"]: x for x in bench.targets_issue24({"quality": {}, "by_class": byc})}
    assert abs(t["class bright: RAR adaptive minus input, all degraded samples (not worse)"]["value"] - 5 / 3) < 1e-9
    assert t["class dark: RAR adaptive minus input, all degraded samples (not worse)"]["pass"] is True


def test_clean_row_numbers():
    clean = [{"image": 0, "cls": "bright", "psnr": 60.0, "level_shift": 0.0, "classical_psnr": 40.0,
              "classical_level_shift": 0.001, "rounds": 0},
             {"image": 1, "cls": "bright", "psnr": 30.0, "level_shift": -0.05, "classical_psnr": 34.0,
              "classical_level_shift": -0.002, "rounds": 2},
             {"image": 2, "cls": "text", "psnr": 36.0, "level_shift": 0.02, "classical_psnr": 50.0,
              "classical_level_shift": 0.0, "rounds": 1}]
    answers = ["Clean", "Snow", "Clean"]
    s = bench.summarize_clean(clean, answers)
    b = s["by_class"]["bright"]
    assert b["n"] == 2 and b["within"] == 0.5 and b["psnr_mean"] == 45.0 and b["psnr_min"] == 30.0
    assert abs(b["level_shift_mean"] + 0.025) < 1e-12 and abs(b["level_shift_abs_mean"] - 0.025) < 1e-12
    assert b["clean_answer"] == 0.5 and b["classical_within"] == 0.5
    a = s["all"]
    assert a["n"] == 3 and abs(a["within"] - 2 / 3) < 1e-12 and a["psnr_median"] == 36.0
    assert abs(a["level_shift_abs_mean"] - 0.07 / 3) < 1e-12 and abs(a["level_shift_abs_max"] - 0.05) < 1e-12
    assert abs(a["clean_answer"] - 2 / 3) < 1e-12
    t = {x["name"]: x for x in bench.targets_issue24({"quality": {}, "clean": s})}
    assert t["clean text: share within 35 dB of the input (RAR adaptive)"]["pass"] is True
    assert t["clean bright: share within 35 dB of the input (RAR adaptive)"]["pass"] is False
    assert t["clean: mean |level shift| (mean of output minus input)"]["pass"] is False


def test_clean_psnr_of_an_unchanged_image_is_capped():
    x = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
    assert bench.capped_psnr(x, x) == bench.PSNR_CAP
    y = np.clip(x + 0.01, 0, 1)
    assert 30 < bench.capped_psnr(y, x) < bench.PSNR_CAP


def test_gate_summary_counts_worse_and_better_rounds():
    g = [{"pred": 20.0, "cand": 25.0, "accepted": True}, {"pred": 25.0, "cand": 24.0, "accepted": True},
         {"pred": 25.0, "cand": 25.2, "accepted": False}, {"pred": 30.0, "cand": 20.0, "accepted": False}]
    rows = [_row("A", "bright", 20.0, 25.0, gate=g[:2]), _row("ext", "dark", 20.0, 25.0, gate=g[2:])]
    clean = [{"cls": "dark", "gate": [{"pred": 60.0, "cand": 40.0, "accepted": True}]}]
    s = bench.summarize_gate(rows, clean)
    assert s["all"]["rounds"] == 5 and s["all"]["worse_n"] == 3 and s["all"]["better_n"] == 1
    assert abs(s["all"]["worse_rejected"] - 1 / 3) < 1e-12 and s["all"]["better_accepted"] == 1.0
    assert s["by_kind"]["clean"]["worse_n"] == 1 and s["by_kind"]["clean"]["worse_rejected"] == 0.0
    assert s["by_class"]["dark"]["rounds"] == 3
