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
    # 2 images x 3 groups + 1 single degradation x 2 images
    assert len(res["samples"]) == 8
    for r in res["samples"]:
        assert set(r["methods"]) == set(bench.METHODS)
        for m in r["methods"].values():
            assert {"psnr", "ssim", "seconds"} <= set(m)
        assert 0 <= r["rounds"] <= bench.MAX_ROUNDS
        assert r["identify"] in COMPACT_LABELS
    q = res["summary"]["quality"]
    assert set(q) == {"A", "B", "C", "single", "all"}
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
    names = [t["name"] for t in res["targets"]]
    assert len(names) == 14
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
                    "### Speed, memory and FLOPs", "### Plots"):
        assert heading in text
    for m in bench.METHODS:
        assert bench.METHOD_NAMES[m] in text
    assert "](docs/bench/strip_A.png)" in text
    assert "--quick smoke run" in text
    assert "codec reconstruction PSNR" in capsys.readouterr().out
