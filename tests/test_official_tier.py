"""The sd35m (official) tier runs end to end with the same code as the compact tier.

A tiny release in the official layout is converted with `rar convert`'s function, loaded in
bf16 and fp16, and driven through the whole Restore-Assess-Repeat loop on SD3-format latents
(16 channels, no codec of its own: ComfyUI's SD3.5 VAE encodes and decodes).
"""

from __future__ import annotations

import pytest
import torch

from official_fixtures import build_release
from rar_core import convert as C
from rar_core import prompts
from rar_core.checkpoint import load_rar
from rar_core.loop import RAR, LatentError


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    rel = build_release(root)
    out = root.parent / "official-tiny.safetensors"
    C.convert_official(rel.root, out, dtype="bf16", config=rel.config())
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_official_tier_loop_end_to_end(converted, dtype):
    torch.manual_seed(0)
    model = load_rar(converted, dtype=dtype)
    assert isinstance(model, RAR) and model.codec is None
    assert model.config.codec.latent_format == "sd3" and model.config.uir.flow_shift == 3.0
    assert next(model.uir.parameters()).dtype == dtype
    c = model.config.codec.latent_channels
    z = torch.randn(2, c, 8, 8)
    res = model.run(z, max_rounds=3, mode="adaptive")
    assert res.latent.shape == z.shape and torch.isfinite(res.latent).all()
    assert len(res.trace) == 2
    for rounds, trace in zip(res.rounds, res.trace):
        assert 1 <= len(trace) <= 3 and rounds == sum(t["accepted"] for t in trace)
        assert all(t["verdict"] in prompts.COMPARE_ANSWERS for t in trace)
        assert all(t["answer"] in model.config.labels for t in trace)
    fixed = model.run(z, max_rounds=2, mode="fixed")
    assert fixed.rounds == [2, 2]


def test_official_tier_refuses_compact_latents_and_own_codec(converted):
    model = load_rar(converted, dtype=torch.bfloat16)
    c = model.config.codec.latent_channels
    with pytest.raises(LatentError, match=f"needs \\[batch, {c}, h, w\\]"):
        model.run(torch.randn(1, c + 1, 8, 8))
    with pytest.raises(RuntimeError, match="SD3.5 VAE"):
        model.encode(torch.rand(1, 3, 64, 64))
