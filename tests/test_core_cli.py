"""`rar` end to end on a tiny random model written by the test: restore (file, folder, trace),
assess, info (model file and preset), and the error paths (exit code 2 with a clear message)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rar_core import checkpoint
from rar_core.cli import main

REPO = Path(__file__).resolve().parent.parent
TRACE_KEYS = {"round", "answer", "verdict", "accepted", "seconds"}


def write_image(path: Path, w: int, h: int, seed: int = 0, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=2)
    arr = np.clip(arr + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).convert(mode).save(path)
    return path


def check_trace_entry(entry: dict, labels) -> None:
    assert set(entry) == TRACE_KEYS
    assert entry["answer"] in labels
    assert entry["verdict"] in ("Image A", "Image B")
    assert isinstance(entry["accepted"], bool)
    assert set(entry["seconds"]) == {"assess", "restore", "verify"}


@pytest.fixture
def labels(tiny_config):
    return tiny_config.labels


def test_restore_one_file(tmp_path, tiny_model_path, capsys):
    src = write_image(tmp_path / "in.png", 40, 24)
    out = tmp_path / "out" / "restored.png"
    rc = main(["restore", str(src), "-o", str(out), "--model", str(tiny_model_path), "--max-rounds", "2", "--steps", "1"])
    assert rc == 0
    assert out.is_file()
    with Image.open(out) as im:
        assert im.size == (40, 24) and im.mode == "RGB"
    captured = capsys.readouterr()
    assert "restoring" in captured.err  # the tqdm bar
    assert "in.png: " in captured.out and "round(s)" in captured.out and str(out) in captured.out


def test_restore_folder_with_trace(tmp_path, tiny_model_path, labels, capsys):
    folder = tmp_path / "inputs"
    sizes = {"a.png": (32, 32), "b.jpg": (37, 53), "c.bmp": (20, 44)}
    for i, (name, (w, h)) in enumerate(sizes.items()):
        write_image(folder / name, w, h, seed=i)
    (folder / "notes.txt").write_text("not an image, and not picked up")
    out = tmp_path / "restored"
    trace_file = tmp_path / "trace.json"
    rc = main(["restore", str(folder), "-o", str(out), "--model", str(tiny_model_path), "--max-rounds", "3",
               "--steps", "1", "--trace", str(trace_file), "-q"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    for name, size in sizes.items():
        with Image.open(out / (Path(name).stem + ".png")) as im:
            assert im.size == size
    trace = json.loads(trace_file.read_text())
    assert set(trace) == {str(folder / n) for n in sizes}
    for src, item in trace.items():
        assert set(item) == {"output", "rounds", "tiles", "seconds", "trace"}
        assert item["output"] == str(out / (Path(src).stem + ".png"))
        assert item["tiles"] == 1 and item["seconds"] > 0
        assert 1 <= len(item["trace"]) <= 3
        assert item["rounds"] == sum(e["accepted"] for e in item["trace"])
        assert [e["round"] for e in item["trace"]] == list(range(1, len(item["trace"]) + 1))
        for entry in item["trace"]:
            check_trace_entry(entry, labels)
    captured = capsys.readouterr()
    assert captured.err == captured.out == ""  # -q: no bar, no summary lines


def test_restore_fixed_mode_runs_exactly_n_rounds(tmp_path, tiny_model_path):
    src = write_image(tmp_path / "x.png", 24, 24)
    trace_file = tmp_path / "t.json"
    rc = main(["restore", str(src), "-o", str(tmp_path / "o"), "--model", str(tiny_model_path), "--mode", "fixed",
               "--max-rounds", "2", "--steps", "1", "--trace", str(trace_file), "-q"])
    assert rc == 0
    assert (tmp_path / "o" / "x.png").is_file()  # one input, output without image suffix: a folder
    item = json.loads(trace_file.read_text())[str(src)]
    assert item["rounds"] == 2
    assert [e["verdict"] for e in item["trace"]] == ["not verified"] * 2


def test_restore_is_deterministic(tmp_path, tiny_model_path):
    src = write_image(tmp_path / "x.png", 28, 20, seed=3)
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}.png"
        assert main(["restore", str(src), "-o", str(out), "--model", str(tiny_model_path), "--steps", "1",
                     "--max-rounds", "2", "--seed", "5", "-q"]) == 0
        outs.append(np.asarray(Image.open(out)))
    assert np.array_equal(outs[0], outs[1])


def test_assess(tmp_path, tiny_model_path, labels, capsys):
    a = write_image(tmp_path / "imgs" / "a.png", 32, 32, seed=1)
    b = write_image(tmp_path / "imgs" / "b.png", 36, 20, seed=2)
    js = tmp_path / "answers.json"
    assert main(["assess", str(tmp_path / "imgs"), "--model", str(tiny_model_path), "--json", str(js)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    answers = json.loads(js.read_text())
    assert set(answers) == {str(a), str(b)}
    assert all(v in labels for v in answers.values())
    assert lines == [f"{p}: {answers[p]}" for p in (str(a), str(b))]


def test_assess_free_generation(tmp_path, tiny_model_path, capsys):
    a = write_image(tmp_path / "a.png", 32, 32)
    assert main(["assess", str(a), "--model", str(tiny_model_path), "--free"]) == 0
    assert capsys.readouterr().out.startswith(f"{a}: ")


def test_info_model(tiny_model_path, tiny_model, capsys):
    assert main(["info", str(tiny_model_path)]) == 0
    out = capsys.readouterr().out
    assert "RAR model 'tiny'" in out
    assert "format: comfyui-rar" in out and "format_version: 1" in out and str(tiny_model_path) in out
    assert "16 channels, 2x downsampling" in out and "multiples of 4" in out
    for row in ["codec (AutoencoderKL)", "LQA: A_I image adapter", "LQA: vision_proj", "LQA: language model",
                "A_Q quality adapter (Q-Former)", "UIR restorer (MMDiT)", "total"]:
        assert row in out
    total = sum(t.numel() for t in tiny_model.state_dict().values())
    assert f"{total:,}" in out
    assert "labels: Clean, Noise" in out


def test_info_preset_sd35m(capsys):
    assert main(["info", "--preset", "sd35m"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("  ")[1].strip(): line for line in out.splitlines() if line.startswith("  ")}
    assert "RAR model 'sd35m' (preset: sd35m)" in out
    assert "16 channels, 8x downsampling, format 'sd3'" in out
    assert "(2.47 B)" in rows["UIR restorer (MMDiT)"]
    assert "(6.74 B)" in rows["LQA: language model"]
    assert "(151.22 M)" in rows["LQA: A_I image adapter"]
    assert "(168.69 M)" in rows["A_Q quality adapter (Q-Former)"]
    assert "6,738,415,616" in rows["LQA: language model"]
    assert "total" in rows


def test_info_preset_compact(capsys):
    assert main(["info", "--preset", "compact"]) == 0
    out = capsys.readouterr().out
    assert "RAR model 'compact'" in out and "UIR restorer (MMDiT)" in out


# ----- errors ------------------------------------------------------------------------------


@pytest.fixture
def no_builtin(monkeypatch, tmp_path):
    missing = tmp_path / "weights" / "rar-compact.safetensors"
    monkeypatch.setattr(checkpoint, "BUILTIN", missing)
    return missing


@pytest.mark.parametrize("command", ["restore", "assess", "info"])
def test_no_model_message(tmp_path, no_builtin, capsys, command):
    src = write_image(tmp_path / "a.png", 16, 16)
    argv = {"restore": ["restore", str(src), "-o", str(tmp_path / "o.png")],
            "assess": ["assess", str(src)], "info": ["info"]}[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rar {command}: error: the built-in compact RAR model is not installed")
    assert str(no_builtin) in err and "--model PATH" in err
    assert not (tmp_path / "o.png").exists()


def test_missing_input(tmp_path, tiny_model_path, capsys):
    rc = main(["restore", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o.png"), "--model", str(tiny_model_path)])
    assert rc == 2
    assert "rar restore: error: input not found" in capsys.readouterr().err


def test_non_image_input(tmp_path, tiny_model_path, capsys):
    bad = tmp_path / "fake.png"
    bad.write_text("this is text")
    assert main(["assess", str(bad), "--model", str(tiny_model_path)]) == 2
    assert "fake.png is not an image" in capsys.readouterr().err


def test_empty_folder(tmp_path, tiny_model_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images found"):
        main(["restore", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--model", str(tiny_model_path)])


def test_corrupt_model(tmp_path, capsys):
    src = write_image(tmp_path / "a.png", 16, 16)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a safetensors header")
    assert main(["restore", str(src), "-o", str(tmp_path / "o.png"), "--model", str(bad)]) == 2
    assert "bad.safetensors is not a readable safetensors file" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "absent.safetensors")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_argument_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["restore", "x.png", "-o", "y.png", "--mode", "sometimes"])
    assert e.value.code == 2
    assert "invalid choice: 'sometimes'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "comfyui-rar 0.1.0" in capsys.readouterr().out


def test_cli_as_a_module_in_a_subprocess(tmp_path, tiny_model_path):
    src = write_image(tmp_path / "in.png", 37, 21)
    out = tmp_path / "out.png"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "rar_core.cli", "restore", str(src), "-o", str(out), "--model", str(tiny_model_path),
         "--max-rounds", "1", "--steps", "1", "--trace", str(tmp_path / "t.json")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as im:
        assert im.size == (37, 21)
    assert json.loads((tmp_path / "t.json").read_text())[str(src)]["trace"]
    assert "in.png: " in proc.stdout


def test_inputs_with_the_same_name_get_distinct_outputs(tmp_path, tiny_model_path):
    d1, d2 = tmp_path / "d1", tmp_path / "d2"
    write_image(d1 / "a.png", 16, 16, seed=1)
    write_image(d1 / "a.jpg", 20, 16, seed=2)
    write_image(d2 / "a.png", 24, 16, seed=3)
    out = tmp_path / "out"
    trace = tmp_path / "t.json"
    assert main(["restore", str(d1), str(d2), "-o", str(out), "--model", str(tiny_model_path), "--max-rounds", "1",
                 "--steps", "1", "--trace", str(trace), "-q"]) == 0
    outputs = {src: Path(item["output"]) for src, item in json.loads(trace.read_text()).items()}
    assert len(set(outputs.values())) == 3  # nothing overwritten
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "a_png.png", "a_png_2.png"]  # d1: a.jpg, a.png; d2: a.png
    for src, dst in outputs.items():
        with Image.open(src) as a, Image.open(dst) as b:
            assert a.size == b.size


def test_rgba_input_to_jpeg_output(tmp_path, tiny_model_path):
    src = tmp_path / "rgba.png"
    Image.new("RGBA", (20, 20), (200, 10, 10, 128)).save(src)
    out = tmp_path / "out.jpg"
    assert main(["restore", str(src), "-o", str(out), "--model", str(tiny_model_path), "--max-rounds", "1",
                 "--steps", "1", "-q"]) == 0
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (20, 20)
