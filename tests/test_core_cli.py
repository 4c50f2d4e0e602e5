"""`rar` end to end on a tiny random model written by the test: restore (file, folder, trace),
assess, info (model file and preset), and the error paths: bad options, paths and model files
(exit code 2, one line, before any work), bad items in a batch (exit code 1, the rest written),
Ctrl-C (exit code 130, trace kept), no file ever replaced without --overwrite, and the
inference commands with only the base dependencies installed. docs/errors.md lists the lines."""

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
    assert all(round(v, 3) == v for v in entry["seconds"].values())  # milliseconds


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
        assert item["tiles"] == 1 and item["seconds"] > 0 and round(item["seconds"], 3) == item["seconds"]
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


def test_paper_eval_protocol_keeps_one_round_less(tmp_path, tiny_model_path):
    """--protocol paper-eval: the evaluation script discards its last round, so fixed mode with
    --max-rounds 3 keeps 2, and --max-rounds 1 gives back the input's own pixels."""
    src = write_image(tmp_path / "x.png", 24, 24)
    trace_file = tmp_path / "t.json"
    base = ["restore", str(src), "--model", str(tiny_model_path), "--mode", "fixed", "--steps", "1",
            "--protocol", "paper-eval", "-q"]
    assert main(base + ["-o", str(tmp_path / "a.png"), "--max-rounds", "3", "--trace", str(trace_file)]) == 0
    assert json.loads(trace_file.read_text())[str(src)]["rounds"] == 2
    assert main(base + ["-o", str(tmp_path / "b.png"), "--max-rounds", "1"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), np.asarray(Image.open(src)))


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
    assert main(["assess", str(bad), "--model", str(tiny_model_path)]) == 1  # an item failed
    err = capsys.readouterr().err
    assert err == f"rar assess: failed: {bad}: fake.png is not an image PIL can read\n"  # one input: no summary


def test_empty_folder(tmp_path, tiny_model_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["restore", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--model", str(tiny_model_path)]) == 2
    assert capsys.readouterr().err.startswith(f"rar restore: error: no images found in {tmp_path / 'empty'}")
    assert not (tmp_path / "o").exists()


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


# ----- no file lost ------------------------------------------------------------------------

MISSING_MODEL = "/nonexistent/model.safetensors"  # an error about it would mean the checks came too late


def restore(*argv) -> list[str]:
    return ["restore", *map(str, argv)]


def one_error_line(capsys, command: str = "restore") -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"rar {command}: error: "), err
    return err.strip()


def test_output_is_the_input_file(tmp_path, capsys):
    src = write_image(tmp_path / "photo.png", 20, 20)
    before = src.read_bytes()
    assert main(restore(src, "-o", src, "--model", MISSING_MODEL)) == 2
    assert f"-o {src} is the input image itself" in one_error_line(capsys)
    assert main(restore(src, "-o", tmp_path / "." / "photo.png", "--model", MISSING_MODEL)) == 2  # same file, other spelling
    assert "is the input image itself" in one_error_line(capsys)
    assert src.read_bytes() == before


def test_output_is_an_input_folder(tmp_path, capsys):
    folder = tmp_path / "photos"
    a = write_image(folder / "a.png", 20, 20)
    write_image(folder / "b.jpg", 20, 20)
    before = a.read_bytes()
    assert main(restore(folder, "-o", folder, "--model", MISSING_MODEL)) == 2
    assert f"-o {folder} is an input folder; its originals would be replaced" in one_error_line(capsys)
    # files named one by one, output into their own folder: a.png would be replaced
    assert main(restore(a, folder / "b.jpg", "-o", folder, "--model", MISSING_MODEL)) == 2
    assert f"output {a} would replace the input {a}" in one_error_line(capsys)
    assert a.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["a.png", "b.jpg"]


def test_overwrite_restores_in_place(tmp_path, tiny_model_path):
    folder = tmp_path / "photos"
    srcs = [write_image(folder / "a.png", 20, 24, seed=1), write_image(folder / "b.png", 24, 20, seed=2)]
    before = [np.asarray(Image.open(p)) for p in srcs]
    assert main(restore(folder, "-o", folder, "--model", tiny_model_path, "--mode", "fixed", "--max-rounds", "1",
                        "--steps", "1", "--overwrite", "-q")) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png"]  # no temporary files left
    for p, x in zip(srcs, before):
        y = np.asarray(Image.open(p))
        assert y.shape == x.shape and not np.array_equal(x, y)  # fixed mode: a restored image


def test_other_inputs_names_are_never_taken(tmp_path, tiny_model_path):
    """In place with --overwrite, a.jpg's output must not become a.png while a.png is still unread."""
    folder = tmp_path / "photos"
    write_image(folder / "a.jpg", 20, 20, seed=1)
    png = write_image(folder / "a.png", 24, 16, seed=2)
    trace = tmp_path / "t.json"
    assert main(restore(folder, "-o", folder, "--model", tiny_model_path, "--max-rounds", "1", "--steps", "1",
                        "--overwrite", "--trace", trace, "-q")) == 0
    outputs = {Path(k).name: Path(v["output"]).name for k, v in json.loads(trace.read_text()).items()}
    assert outputs == {"a.jpg": "a_jpg.png", "a.png": "a.png"}
    with Image.open(png) as im:
        assert im.size == (24, 16)  # a.png's own restoration, not a.jpg's


def test_existing_output_is_kept(tmp_path, tiny_model_path, capsys):
    src = write_image(tmp_path / "in.png", 20, 20)
    out = tmp_path / "out.png"
    out.write_bytes(b"an earlier run's result")
    assert main(restore(src, "-o", out, "--model", MISSING_MODEL)) == 2
    line = one_error_line(capsys)
    assert f"output {out} already exists; pass --overwrite to replace it, or --skip-existing" in line
    assert out.read_bytes() == b"an earlier run's result"
    assert main(restore(src, "-o", out, "--model", tiny_model_path, "--max-rounds", "1", "--steps", "1", "--overwrite", "-q")) == 0
    with Image.open(out) as im:
        assert im.size == (20, 20)


def test_skip_existing(tmp_path, tiny_model_path, capsys):
    folder = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        write_image(folder / name, 20, 20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"keep me")
    trace = tmp_path / "t.json"
    assert main(restore(folder, "-o", out, "--model", tiny_model_path, "--max-rounds", "1", "--steps", "1",
                        "--skip-existing", "--trace", trace)) == 0
    assert (out / "b.png").read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]
    stdout = capsys.readouterr().out
    assert f"b.png: skipped, {out / 'b.png'} exists" in stdout
    assert "rar restore: 2 restored, 0 failed, 1 skipped (output exists)" in stdout
    assert set(json.loads(trace.read_text())) == {str(folder / "a.png"), str(folder / "c.png")}
    with pytest.raises(SystemExit) as e:
        main(restore(folder, "-o", out, "--overwrite", "--skip-existing"))
    assert e.value.code == 2
    assert "not allowed with argument" in one_error_line(capsys)


@pytest.mark.parametrize("name", ["result.xyz", "result.png.bak"])
def test_unknown_output_extension(tmp_path, capsys, name):
    src = write_image(tmp_path / "in.png", 20, 20)
    assert main(restore(src, "-o", tmp_path / name, "--model", MISSING_MODEL)) == 2
    assert f"unknown image extension '{Path(name).suffix}'" in one_error_line(capsys)
    assert not (tmp_path / name).exists()  # no folder made of it


def test_one_output_file_for_two_inputs(tmp_path, capsys):
    a, b = write_image(tmp_path / "a.png", 20, 20), write_image(tmp_path / "b.png", 20, 20)
    (tmp_path / "existing.png").write_bytes(b"x")
    assert main(restore(a, b, "-o", tmp_path / "existing.png", "--model", MISSING_MODEL)) == 2
    assert "is one file but there are 2 input images; give a folder" in one_error_line(capsys)
    assert (tmp_path / "existing.png").read_bytes() == b"x"


def test_unwritable_paths_are_found_first(tmp_path, capsys):
    src = write_image(tmp_path / "in.png", 20, 20)
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where a folder would have to be")
    assert main(restore(src, "-o", blocker / "out" / "x.png", "--model", MISSING_MODEL)) == 2
    assert f"cannot create output folder {blocker / 'out'}: {blocker} is a file" in one_error_line(capsys)
    assert main(restore(src, "-o", tmp_path / "o.png", "--trace", blocker / "t.json", "--model", MISSING_MODEL)) == 2
    assert "cannot create --trace file folder" in one_error_line(capsys)
    assert main(restore(src, "-o", tmp_path / "o.png", "--trace", tmp_path, "--model", MISSING_MODEL)) == 2
    assert f"--trace {tmp_path} is a folder" in one_error_line(capsys)
    assert main(restore(src, "-o", tmp_path / "o.png", "--trace", src, "--model", MISSING_MODEL)) == 2
    assert "is also an input or output image" in one_error_line(capsys)
    (tmp_path / "t.json").write_text("{}")
    assert main(restore(src, "-o", tmp_path / "o.png", "--trace", tmp_path / "t.json", "--model", MISSING_MODEL)) == 2
    assert "already exists; pass --overwrite" in one_error_line(capsys)
    assert main(["assess", str(src), "--json", str(tmp_path / "t.json"), "--model", MISSING_MODEL]) == 2
    assert "--json" in one_error_line(capsys, "assess")
    assert not (tmp_path / "o.png").exists() and (tmp_path / "t.json").read_text() == "{}"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_output_folder(tmp_path, capsys):
    src = write_image(tmp_path / "in.png", 20, 20)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(restore(src, "-o", ro / "o.png", "--model", MISSING_MODEL)) == 2
        assert "is not writable" in one_error_line(capsys)
    finally:
        ro.chmod(0o755)


def test_read_only_check_probes_the_folder(tmp_path, monkeypatch):
    """What a read-only file system does to the probe file (root included) is an error, not a pass."""
    from rar_core import image as rar_image

    def refuse(path, *a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(rar_image.os, "open", refuse)
    with pytest.raises(rar_image.ImageError, match=r"cannot write output .*o.png: .* is not writable \(Read-only file system\)"):
        rar_image.check_writable(tmp_path / "o.png", "output")


# ----- batches -----------------------------------------------------------------------------


def test_batch_survives_a_bad_file(tmp_path, tiny_model_path, capsys):
    folder = tmp_path / "in"
    write_image(folder / "a.png", 20, 20, seed=1)
    (folder / "b.png").write_text("notes saved under an image name")
    write_image(folder / "c.png", 20, 20, seed=3)
    Image.new("RGB", (8, 8)).save(folder / "d.png")  # too small
    out, trace = tmp_path / "out", tmp_path / "t.json"
    assert main(restore(folder, "-o", out, "--model", tiny_model_path, "--max-rounds", "1", "--steps", "1",
                        "--trace", trace, "-q")) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"rar restore: failed: {folder / 'b.png'}: b.png is not an image PIL can read",
        f"rar restore: failed: {folder / 'd.png'}: d.png is 8x8 pixels; RAR needs at least 16x16",
        "rar restore: 2 restored, 2 failed; failed: b.png (b.png is not an image PIL can read); "
        "d.png (d.png is 8x8 pixels; RAR needs at least 16x16)",
    ]
    items = json.loads(trace.read_text())
    assert items[str(folder / "b.png")] == {"output": None, "error": "b.png is not an image PIL can read"}
    assert items[str(folder / "a.png")]["output"] == str(out / "a.png") and items[str(folder / "c.png")]["trace"]


def test_assess_batch_survives_a_bad_file(tmp_path, tiny_model_path, capsys):
    a = write_image(tmp_path / "a.png", 20, 20)
    bad = tmp_path / "b.png"
    bad.write_text("text")
    js = tmp_path / "answers.json"
    assert main(["assess", str(a), str(bad), "--model", str(tiny_model_path), "--json", str(js)]) == 1
    assert set(json.loads(js.read_text())) == {str(a)}
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{a}: ")
    assert "rar assess: 1 assessed, 1 failed; failed: b.png (b.png is not an image PIL can read)" in captured.err


def test_ctrl_c_keeps_the_finished_items(tmp_path, tiny_model_path, monkeypatch, capsys):
    from rar_core import loop

    folder = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        write_image(folder / name, 20, 20)
    real, calls = loop.restore_image, []

    def interrupted_on_the_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(loop, "restore_image", interrupted_on_the_second)
    out, trace = tmp_path / "out", tmp_path / "t.json"
    assert main(restore(folder, "-o", out, "--model", tiny_model_path, "--max-rounds", "1", "--steps", "1",
                        "--trace", trace, "-q")) == 130
    assert set(json.loads(trace.read_text())) == {str(folder / "a.png")}
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]
    assert capsys.readouterr().err == "rar restore: interrupted: 1 restored, 0 failed, 2 not started\n"


# ----- bad options -------------------------------------------------------------------------


@pytest.mark.parametrize("option,message", [
    (["--max-rounds", "0"], "--max-rounds must be between 1 and 100, got 0"),
    (["--max-rounds", "-1"], "--max-rounds must be between 1 and 100, got -1"),
    (["--max-rounds", "1000", "--mode", "fixed"], "--max-rounds must be between 1 and 100, got 1000"),
    (["--max-rounds", "101", "--mode", "once"], "--max-rounds must be between 1 and 100, got 101"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--steps", "-3"], "--steps must be at least 1, got -3"),
    (["--tile", "7"], "--tile must be at least 256 pixels, got 7"),
    (["--tile", "0"], "--tile must be at least 256 pixels, got 0"),
    (["--device", "bogus"], "--device 'bogus' is not a device name; use cpu, cuda, cuda:N or mps"),
    (["--device", "meta"], "--device meta: meta is not available in this torch build"),
    (["--max-rounds", "four"], "argument --max-rounds: invalid int value: 'four' (see `rar restore --help`)"),
])
def test_bad_option(tmp_path, capsys, option, message):
    src = write_image(tmp_path / "in.png", 20, 20)
    try:
        rc = main(restore(src, "-o", tmp_path / "o.png", "--model", MISSING_MODEL, *option))
    except SystemExit as e:  # argparse's own checks (types, choices)
        rc = e.code
    assert rc == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "o.png").exists()


def test_bad_device_for_assess(tmp_path, capsys):
    src = write_image(tmp_path / "in.png", 20, 20)
    assert main(["assess", str(src), "--device", "cuda:x", "--model", MISSING_MODEL]) == 2
    assert "--device 'cuda:x' is not a device name" in one_error_line(capsys, "assess")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without(tmp_path, capsys):
    src = write_image(tmp_path / "in.png", 20, 20)
    assert main(restore(src, "-o", tmp_path / "o.png", "--device", "cuda", "--model", MISSING_MODEL)) == 2
    line = one_error_line(capsys)
    assert "--device cuda: " in line and ("no CUDA support" in line or "no CUDA GPU is visible" in line)
    assert line.endswith("use --device cpu")


def test_animated_gif_warns(tmp_path, tiny_model_path, capsys):
    frames = [Image.fromarray(np.full((20, 24, 3), v, np.uint8)) for v in (30, 200)]
    src = tmp_path / "anim.gif"
    frames[0].save(src, save_all=True, append_images=frames[1:], duration=100)
    assert main(restore(src, "-o", tmp_path / "o.png", "--model", tiny_model_path, "--max-rounds", "1",
                        "--steps", "1", "-q")) == 0
    assert capsys.readouterr().err == (
        "rar restore: warning: anim.gif has 2 frames (animated or multi-page); only the first frame is restored\n")
    with Image.open(tmp_path / "o.png") as im:
        assert im.size == (24, 20)


# ----- model files -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_pickle_as_model(tmp_path, capsys, kind):
    import pickle

    import torch

    path = tmp_path / f"model.{'pt' if kind != 'pickle' else 'pkl'}"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    else:
        torch.save({"weight": torch.ones(2)}, path, _use_new_zipfile_serialization=kind == "zip")
    src = write_image(tmp_path / "in.png", 20, 20)
    assert main(restore(src, "-o", tmp_path / "o.png", "--model", path)) == 2
    line = one_error_line(capsys)
    assert f"{path.name} is a PyTorch pickle, not a safetensors file" in line and "`rar convert" in line
    assert main(["info", str(path)]) == 2
    assert "is a PyTorch pickle" in one_error_line(capsys, "info")


def test_other_file_as_model(tmp_path, capsys):
    path = tmp_path / "notes.safetensors"
    path.write_text("hello, not a model at all")
    assert main(["info", str(path)]) == 2
    assert "notes.safetensors is not a safetensors file" in one_error_line(capsys, "info")


def test_convert_on_garbage_files(tmp_path, capsys):
    from official_fixtures import build_release

    rel = build_release(tmp_path / "zoo", optional_files=False, seed=9)
    rel.files["e2e"].write_bytes(os.urandom(2000))
    assert main(["convert", str(rel.root), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert f"{rel.files['e2e']} is not a PyTorch checkpoint (neither a zip archive nor a pickle)" in one_error_line(capsys, "convert")
    rel.files["base"].write_bytes(b"\xff" * 300)
    assert main(["convert", str(rel.root), "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "sd3.5_medium.safetensors is not a readable safetensors file" in one_error_line(capsys, "convert")
    assert not (tmp_path / "o.safetensors").exists()
    junk = tmp_path / "junk"
    junk.mkdir()
    for name in ("a.pth", "b.safetensors", "config.json"):
        (junk / name).write_bytes(os.urandom(500))
    assert main(["convert", str(junk), "-o", str(tmp_path / "o.safetensors")]) == 2
    line = one_error_line(capsys, "convert")
    assert f"the release folder {junk} is incomplete: missing SD3.5-Medium base file" in line
    assert "missing end-to-end checkpoint" in line and "missing language model folder" in line


# ----- base dependencies only --------------------------------------------------------------

# Runs `rar` with scipy, scikit-image and matplotlib hidden from the import system, as after a
# plain `pip install .`: every finder answers "not found" for them (find_spec -> None), which is
# what diffusers' and transformers' optional-dependency probes see on such a machine.
BASE_ONLY = r"""
import contextlib, io, json, sys
HIDDEN = {"scipy", "skimage", "matplotlib", "pytest"}

class Hide:
    def __init__(self, inner):
        self.inner = inner
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.inner.find_spec(name, path, target)
    def __getattr__(self, attr):
        return getattr(self.inner, attr)

sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
for name in list(sys.modules):
    if name.partition(".")[0] in HIDDEN:
        del sys.modules[name]
try:
    import scipy  # noqa: F401
    hidden = False
except ModuleNotFoundError:
    hidden = True

from rar_core.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    results.append({"rc": rc, "out": out.getvalue(), "err": err.getvalue()})
import rar_core.checkpoint, rar_core.image, rar_core.loop, rar_core.prompts  # what nodes/ imports
print(json.dumps({"hidden": hidden, "results": results,
                  "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in HIDDEN)}))
"""


def test_inference_needs_only_the_base_dependencies(tmp_path):
    sample = REPO / "rar_core" / "assets" / "sample_degraded.png"
    out = tmp_path / "restored.png"
    commands = [
        ["--help"],
        ["convert", "--help"],
        ["info"],
        ["restore", str(sample), "-o", str(out), "--max-rounds", "1", "-q"],
        ["assess", str(sample)],
        ["convert", str(tmp_path / "no_release"), "-o", str(tmp_path / "m.safetensors")],
        ["train", "--stage", "codec"],
        ["bench", "--quick"],
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", BASE_ONLY, json.dumps(commands)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["hidden"] and report["loaded"] == []
    help_, convert_help, info, restored, assessed, convert, train, bench = report["results"]
    assert help_["rc"] == 0 and "{restore,assess,info,convert,train,bench}" in help_["out"]
    assert convert_help["rc"] == 0 and "release_dir" in convert_help["out"]
    assert info["rc"] == 0 and "RAR model 'compact'" in info["out"], info["err"]
    assert restored["rc"] == 0, restored["err"]
    with Image.open(out) as im:
        assert im.size == (256, 256)
    assert assessed["rc"] == 0 and assessed["out"].startswith(f"{sample}: "), assessed["err"]
    assert convert == {"rc": 2, "out": "", "err": f"rar convert: error: release folder not found: {tmp_path / 'no_release'}\n"}
    for name, res in (("train", train), ("bench", bench)):
        assert res == {"rc": 2, "out": "", "err": f'rar {name}: error: needs scipy, which is not installed: '
                                                   f'pip install "comfyui-rar[{name}]"\n'}


def test_several_existing_outputs_and_a_folder_in_the_way(tmp_path, capsys):
    folder = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        write_image(folder / name, 20, 20)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"1")
    (out / "c.png").write_bytes(b"3")
    assert main(restore(folder, "-o", out, "--model", MISSING_MODEL)) == 2
    assert f"outputs {out / 'a.png'} and 1 more already exist; pass --overwrite to replace them" in one_error_line(capsys)
    (out / "b.png").mkdir()
    assert main(restore(folder, "-o", out, "--model", MISSING_MODEL, "--overwrite")) == 2
    assert f"output {out / 'b.png'} exists and is a folder" in one_error_line(capsys)
    assert (out / "a.png").read_bytes() == b"1" and (out / "c.png").read_bytes() == b"3"


def test_restore_defaults_are_the_loops():
    """The CLI reads the loop's defaults from rar_core.config, as the nodes do (one source)."""
    from rar_core import config
    from rar_core.cli import build_parser

    args = build_parser().parse_args(["restore", "x.png", "-o", "y.png"])
    assert args.max_rounds == config.DEFAULT_ROUNDS == 4
    assert args.steps is None and config.DEFAULT_STEPS == config.UIRConfig().steps == 4  # None: the model's
