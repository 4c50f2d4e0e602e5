"""checkpoint.py: one safetensors file per model. Round trip is exact; every broken file gives a
CheckpointError that names the problem (never a raw safetensors / torch traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from rar_core import checkpoint
from rar_core.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    build_model,
    default_model_path,
    load_rar,
    read_metadata,
    save_rar,
)
from rar_core.config import RARConfig


def metadata_of(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


@pytest.fixture
def saved(tmp_path, tiny_model):
    path = save_rar(tiny_model, tmp_path / "m.safetensors", extra={"trained_steps": "123"})
    return tiny_model, path


def rewrite(src: Path, dst: Path, state_fn=None, meta_fn=None) -> Path:
    state = load_file(str(src))
    meta = metadata_of(src)
    if state_fn:
        state = state_fn(state) or state
    if meta_fn:
        meta = meta_fn(meta) or meta
    save_file(state, str(dst), metadata=meta)
    return dst


# ----- round trip --------------------------------------------------------------------------


def test_round_trip_is_exact(saved):
    model, path = saved
    assert path.is_file() and not path.with_suffix(".safetensors.tmp").exists()
    loaded = load_rar(path)
    assert not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # non-persistent buffers are rebuilt for real, not left on meta
    assert not any(t.is_meta for t in list(loaded.parameters()) + list(loaded.buffers()))
    assert loaded.config == model.config
    assert loaded.config.labels == model.config.labels
    assert loaded.lqa.tokenizer.tokenizer_json == model.lqa.tokenizer.tokenizer_json
    assert loaded.lqa.tokenizer.get_vocab() == model.lqa.tokenizer.get_vocab()


def test_round_trip_same_outputs(saved):
    model, path = saved
    loaded = load_rar(path)
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # Equal weights, but the loaded ones lie at the file's offsets (not 64-byte aligned), so MKL and
    # oneDNN may take other code paths: outputs agree to float32 rounding (at most 1e-6 at |x| <= 4,
    # measured with AVX2 and default ATen kernels, 1 and 2 threads, SSE4.2 MKL), not bit for bit.
    # Answers and verdicts rest on log-prob gaps of 1.3e-4 or more here, far above that rounding.
    close = dict(rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        z1, z2 = model.encode(img), loaded.encode(img)
        torch.testing.assert_close(z1, z2, **close)
        torch.testing.assert_close(model.decode(z1), loaded.decode(z1), **close)
        a1, a2 = model.assess(z1), loaded.assess(z1)
        assert a1.answer == a2.answer
        for x, y in zip(a1.hidden, a2.hidden):
            torch.testing.assert_close(x, y, **close)
        r1, r2 = model.run(z1, max_rounds=2, steps=1), loaded.run(z1, max_rounds=2, steps=1)
    assert r1.rounds == r2.rounds == [2]
    torch.testing.assert_close(r1.latent, r2.latent, **close)
    assert not torch.allclose(r1.latent, z1, atol=1e-2)  # the rounds really restored something
    assert [[(e["answer"], e["verdict"]) for e in t] for t in r1.trace] == [
        [(e["answer"], e["verdict"]) for e in t] for t in r2.trace
    ]


def test_metadata(saved):
    model, path = saved
    meta = read_metadata(path)
    assert meta["format"] == FORMAT == "comfyui-rar"
    assert meta["format_version"] == str(FORMAT_VERSION)
    assert RARConfig.from_json(meta["config"]) == model.config
    assert meta["latent_format"] == "rar-compact"
    assert json.loads(meta["labels"]) == list(model.config.labels)
    assert meta["has_codec"] == "true"
    assert json.loads(meta["tokenizer"])["model"]["type"] == "WordLevel"
    assert meta["trained_steps"] == "123"  # extra metadata is kept


def test_round_trip_without_codec_and_custom_labels(tmp_path, tiny_config):
    tiny_config.labels = ("Noise", "Haze", "Rain")
    model = build_model(tiny_config, seed=3, with_codec=False)
    path = save_rar(model, tmp_path / "sub" / "nocodec.safetensors")  # parent folders are made
    meta = read_metadata(path)
    assert meta["has_codec"] == "false"
    loaded = load_rar(path)
    assert loaded.codec is None
    assert loaded.config.labels == ("Noise", "Haze", "Rain")
    assert not any(k.startswith("codec.") for k in load_file(str(path)))
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    assert model.eval().assess(z).answer == loaded.assess(z).answer


def test_half_precision_file_loads(tmp_path, saved):
    _, path = saved
    half = rewrite(path, tmp_path / "half.safetensors", state_fn=lambda s: {k: v.half() for k, v in s.items()})
    model = load_rar(half)  # on a CPU, half-precision files compute in fp32 (the shipped model is fp16)
    assert model.uir.transformer.proj_out.weight.dtype == torch.float32
    model16 = load_rar(half, dtype=torch.float16)  # an explicit dtype wins
    assert model16.uir.transformer.proj_out.weight.dtype == torch.float16


def test_loading_never_unpickles(saved, monkeypatch):
    _, path = saved

    def forbidden(*a, **k):
        raise AssertionError("torch.load (pickle) must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    load_rar(path)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_len])  # a plain safetensors header
    assert header["__metadata__"]["format"] == FORMAT


# ----- corrupt and wrong files -------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="model file not found: .*nothing.safetensors"):
        load_rar(tmp_path / "nothing.safetensors")
    with pytest.raises(CheckpointError, match="model file not found"):
        load_rar(tmp_path)  # a folder is not a model file


@pytest.mark.parametrize("keep", [0.5, 0.999, 0.01])
def test_truncated_file(tmp_path, saved, keep):
    _, path = saved
    data = path.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        load_rar(bad)
    assert "truncated.safetensors" in str(e.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 7, b"hello world, not a model" * 10, bytes(range(256)) * 40, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"],
)
def test_garbage_file(tmp_path, content):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a (readable )?safetensors file"):
        load_rar(bad)


def test_missing_key(tmp_path, saved):
    _, path = saved
    key = "uir.transformer.proj_out.weight"
    bad = rewrite(path, tmp_path / "missing.safetensors", state_fn=lambda s: {k: v for k, v in s.items() if k != key})
    with pytest.raises(CheckpointError, match=rf"1 missing tensors \(first: {key}\)"):
        load_rar(bad)


def test_extra_key(tmp_path, saved):
    _, path = saved

    def add(s):
        s["lqa.extra_head.weight"] = torch.zeros(2, 2)

    bad = rewrite(path, tmp_path / "extra.safetensors", state_fn=add)
    with pytest.raises(CheckpointError, match=r"1 unexpected tensors \(first: lqa.extra_head.weight\)"):
        load_rar(bad)


def test_wrong_shape(tmp_path, saved):
    _, path = saved
    key = "lqa.vision_proj.weight"

    def grow(s):
        s[key] = torch.zeros(s[key].shape[0] + 1, s[key].shape[1])

    bad = rewrite(path, tmp_path / "shape.safetensors", state_fn=grow)
    with pytest.raises(CheckpointError, match=rf"{key}: shape \(33, 32\), expected \(32, 32\)") as e:
        load_rar(bad)
    assert "does not match its config (tiny)" in str(e.value)


def test_wrong_dtype(tmp_path, saved):
    _, path = saved
    key = "connector.query_tokens"

    def to_int(s):
        s[key] = s[key].to(torch.int64)

    bad = rewrite(path, tmp_path / "dtype.safetensors", state_fn=to_int)
    with pytest.raises(CheckpointError, match=rf"{key}: dtype I64, expected a float type"):
        load_rar(bad)


def test_several_problems_are_all_named(tmp_path, saved):
    _, path = saved

    def break_it(s):
        s.pop("lqa.lm.lm_head.weight")
        s["junk"] = torch.zeros(1)
        s["connector.query_tokens"] = torch.zeros(1, 9, 32)

    bad = rewrite(path, tmp_path / "many.safetensors", state_fn=break_it)
    with pytest.raises(CheckpointError) as e:
        load_rar(bad)
    msg = str(e.value)
    assert "missing tensors (first: lqa.lm.lm_head.weight)" in msg
    assert "unexpected tensors (first: junk)" in msg
    assert "connector.query_tokens: shape (1, 9, 32), expected (1, 8, 32)" in msg


@pytest.mark.parametrize("version", ["2", "0", "one", None])
def test_wrong_format_version(tmp_path, saved, version):
    _, path = saved

    def set_version(m):
        if version is None:
            m.pop("format_version")
        else:
            m["format_version"] = version

    bad = rewrite(path, tmp_path / "version.safetensors", meta_fn=set_version)
    with pytest.raises(CheckpointError, match=rf"has format version {version!r}, this comfyui-rar reads version 1"):
        load_rar(bad)


def test_not_a_comfyui_rar_file(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))  # no metadata at all
    with pytest.raises(CheckpointError, match=r"plain.safetensors is not a comfyui-rar model .*'format' is None.*rar convert"):
        load_rar(plain)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(other), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="'format' is 'pt'"):
        read_metadata(other)


def test_unreadable_config(tmp_path, saved):
    _, path = saved
    for i, config in enumerate(["{not json", '{"uir": {"layers_typo": 3}}', None]):
        def set_config(m, config=config):
            if config is None:
                m.pop("config")
            else:
                m["config"] = config

        bad = rewrite(path, tmp_path / f"config{i}.safetensors", meta_fn=set_config)
        with pytest.raises(CheckpointError, match="unreadable config metadata"):
            load_rar(bad)


def test_tokenizer_larger_than_vocabulary(tmp_path, saved):
    _, path = saved

    def shrink_vocab(m):
        cfg = json.loads(m["config"])
        cfg["lm"]["vocab_size"] = 100
        m["config"] = json.dumps(cfg)

    def shrink_tensors(s):
        s["lqa.lm.model.embed_tokens.weight"] = s["lqa.lm.model.embed_tokens.weight"][:100].clone()
        s["lqa.lm.lm_head.weight"] = s["lqa.lm.lm_head.weight"][:100].clone()

    bad = rewrite(path, tmp_path / "vocab.safetensors", state_fn=shrink_tensors, meta_fn=shrink_vocab)
    with pytest.raises(CheckpointError, match=r"tokenizer has \d+ tokens but the LM vocabulary is 100"):
        load_rar(bad)


def test_default_model_path_without_builtin(monkeypatch, tmp_path):
    missing = tmp_path / "weights" / "rar-compact.safetensors"
    monkeypatch.setattr(checkpoint, "BUILTIN", missing)
    assert not checkpoint.builtin_available()
    with pytest.raises(FileNotFoundError, match="built-in compact RAR model is not installed") as e:
        default_model_path()
    assert "--model PATH" in str(e.value)


def test_default_model_path_with_builtin(monkeypatch, tiny_model_path):
    monkeypatch.setattr(checkpoint, "BUILTIN", tiny_model_path)
    assert checkpoint.builtin_available()
    assert default_model_path() == tiny_model_path
