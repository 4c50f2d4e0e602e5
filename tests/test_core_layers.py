"""PatchConv: the patchify convs of A_I and the restorer stay in their weights' dtype under autocast."""

from __future__ import annotations

import pytest
import torch

from rar_core.checkpoint import build_model
from rar_core.config import RARConfig
from rar_core.layers import PatchConv


def test_patchify_convs_are_patch_convs(tiny_model):
    assert type(tiny_model.lqa.A_I.conv1) is PatchConv
    assert type(tiny_model.uir.transformer.pos_embed.proj) is PatchConv
    # same parameter names as before: official and shipped checkpoints still load
    keys = dict(tiny_model.named_parameters())
    assert "uir.transformer.pos_embed.proj.weight" in keys and "lqa.A_I.conv1.weight" in keys


def test_patch_conv_computes_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    conv = PatchConv(16, 32, 4, stride=4, bias=False)
    x = torch.randn(2, 16, 16, 16)
    with torch.no_grad():
        ref = conv(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(x)
    assert out.dtype == torch.float32 and torch.equal(out, ref)


def test_patch_conv_follows_half_weights_without_autocast():
    conv = PatchConv(16, 8, 2, stride=2).to(torch.bfloat16)
    assert conv(torch.randn(1, 16, 8, 8)).dtype == torch.bfloat16


@pytest.mark.parametrize("part", ["uir", "lqa"])
def test_compact_model_under_bf16_autocast_stays_near_fp32(part):
    """At the compact sizes (16 channels, 4x4 patches), where oneDNN's bf16 conv goes wrong on AMX
    CPUs: a bf16-autocast forward must stay within bf16 rounding of the fp32 one."""
    model = build_model(RARConfig.preset("compact"), seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 32, 32, generator=gen)
    with torch.no_grad():
        if part == "uir":
            ctx = torch.randn(2, 8, model.config.connector.context_dim, generator=gen)
            pooled = torch.randn(2, model.config.connector.pooled_dim, generator=gen)
            s = torch.tensor([0.3, 0.9])
            run = lambda: model.uir(z, s, ctx, pooled).float()  # noqa: E731
        else:
            run = lambda: model.lqa.A_I(z).float()  # noqa: E731
        ref = run()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = run()
    assert ((out - ref).norm() / ref.norm()).item() < 0.03
