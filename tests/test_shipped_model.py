"""The built-in compact model as shipped, and the README's main job with it.

Every other test uses tiny random-weight models; this one checks what a user gets on a fresh
machine: the committed weights load, respect the size budget (issue 3: at most 50 MB, fp16),
carry the calibrated verify gate, and `rar restore` of the committed sample runs end to end.
Quality is the benchmark's job (BENCHMARKS.md), not a unit test's.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from rar_core import checkpoint
from rar_core.cli import main

SAMPLE = Path(checkpoint.__file__).parent / "assets" / "sample_degraded.png"


@pytest.fixture(scope="module")
def calibrate_verify(load_script):
    return load_script("calibrate_verify")


@pytest.fixture(scope="module")
def shipped() -> Path:
    assert checkpoint.builtin_available(), f"the built-in model is missing: {checkpoint.BUILTIN}"
    return checkpoint.default_model_path()


@pytest.fixture(scope="module")
def model(shipped):
    """Loaded once for the module (the CLI commands under test load their own)."""
    return checkpoint.load_rar(shipped)


def test_shipped_file_budget_and_metadata(shipped, model, calibrate_verify):
    assert shipped.stat().st_size <= 50 * 2**20
    with safe_open(str(shipped), "pt") as f:
        meta = f.metadata()
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {"F16"}
    assert meta["format"] == "comfyui-rar" and meta["stage"] == "final" and meta["has_codec"] == "true"
    config = json.loads(meta["config"])
    assert config["name"] == "compact"
    # written by scripts/calibrate_verify.py --write: one of its margins and a trained view size
    assert config["verify_margin"] in calibrate_verify.MARGINS
    assert config["lqa_view"] in (64, 128, 256)
    assert model.codec is not None and model.config.labels[0] == "Clean"


def test_main_job_restores_the_sample(model, tmp_path, capsys):
    out = tmp_path / "restored.png"
    trace_file = tmp_path / "trace.json"
    assert main(["restore", str(SAMPLE), "-o", str(out), "--trace", str(trace_file)]) == 0
    with Image.open(SAMPLE) as im:
        x = np.asarray(im.convert("RGB"), dtype=np.int16)
    with Image.open(out) as im:
        assert im.mode == "RGB"
        y = np.asarray(im, dtype=np.int16)
    assert y.shape == x.shape
    item = json.loads(trace_file.read_text())[str(SAMPLE)]
    labels = model.config.labels
    assert 1 <= len(item["trace"]) <= 4  # default --max-rounds 4
    assert item["rounds"] == sum(e["accepted"] for e in item["trace"])
    assert all(e["answer"] in labels for e in item["trace"])
    if item["rounds"] == 0:
        assert np.array_equal(x, y)  # a rejected first round gives the input back, untouched
    else:
        assert np.abs(x - y).mean() > 1.0  # an accepted round changed the picture
    printed = capsys.readouterr().out
    assert f"{SAMPLE.name}: {item['rounds']} round(s)" in printed and str(out) in printed


def test_assess_names_the_sample(model, capsys):
    assert main(["assess", str(SAMPLE)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{SAMPLE}: ")
    assert line.split(": ", 1)[1] in model.config.labels
