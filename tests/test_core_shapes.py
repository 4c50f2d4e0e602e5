"""Shapes of every rar_core module: `compact` at its real sizes (one CPU forward each, 64x64 px)
and `sd35m` (the official sizes) on the meta device: parameter counts and output shapes."""

from __future__ import annotations

import pytest
import torch

from rar_core import prompts
from rar_core.checkpoint import attach_tokenizer, build_model
from rar_core.cli import parameter_table
from rar_core.config import COMPACT_LABELS, OFFICIAL_LABELS, RARConfig
from rar_core.model import RAR


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----- config ------------------------------------------------------------------------------


def test_presets_and_unknown_preset():
    assert RARConfig.preset("compact").name == "compact"
    assert RARConfig.preset("sd35m").name == "sd35m"
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        RARConfig.preset("nope")


@pytest.mark.parametrize("name", ["compact", "sd35m"])
def test_config_json_round_trip(name):
    cfg = RARConfig.preset(name)
    back = RARConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.to_json() == cfg.to_json()


def test_config_json_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown fields"):
        RARConfig.from_json('{"uir": {"bogus": 1}}')
    with pytest.raises(ValueError, match="unknown section"):
        RARConfig.from_json('{"vae": {}}')


def test_official_latent_constants():
    c = RARConfig.preset("sd35m")
    assert (c.codec.latent_channels, c.codec.downsample) == (16, 8)
    assert c.codec.shift == pytest.approx(0.0609) and c.codec.scale == pytest.approx(1.5305)
    assert c.uir.flow_shift == 3.0 and c.uir.steps == 4
    assert c.pixel_multiple == 16 and RARConfig.preset("compact").pixel_multiple == 16
    assert c.labels == OFFICIAL_LABELS and RARConfig.preset("compact").labels == COMPACT_LABELS


# ----- compact: real weights, one forward per module --------------------------------------


@pytest.fixture(scope="module")
def compact():
    return build_model(RARConfig.preset("compact"), seed=0).eval()


def test_compact_codec_shapes(compact):
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = compact.encode(img)
        assert z.shape == (2, 16, 16, 16)  # 4x codec
        x = compact.decode(z)
    assert x.shape == (2, 3, 64, 64)
    assert x.min() >= 0 and x.max() <= 1
    # process_in / process_out are inverse
    assert torch.allclose(compact.codec.process_out(compact.codec.process_in(z)), z, atol=1e-6)


def test_codec_runs_in_nhwc_and_returns_the_usual_layout(compact):
    """The codec convolves in NHWC (faster on CPU): the same numbers as in NCHW, up to float
    rounding, handed back contiguous."""
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    codec = compact.codec
    with torch.no_grad():
        z = codec.encode(img)
        x = codec.decode(z)
        z_nchw = codec.process_in(codec.vae.encode(img * 2 - 1).latent_dist.mode())
        x_nchw = ((codec.vae.decode(codec.process_out(z)).sample + 1) / 2).clamp(0, 1)
    assert z.is_contiguous() and x.is_contiguous()
    # measured here: 1.3e-6 (z) and 4.1e-6 (x); 1.1e-5 on the built-in model at 512 px
    assert torch.allclose(z, z_nchw, atol=1e-4) and torch.allclose(x, x_nchw, atol=1e-4)


def test_compact_lqa_connector_uir_shapes(compact):
    cfg = compact.config
    z = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = compact.lqa.embed_image(z)
        assert tokens.shape == (2, (16 // cfg.adapter.patch) ** 2, cfg.lm.hidden_size)

        a = compact.assess(z)
        assert len(a.answer) == 2 and all(t in cfg.labels for t in a.answer)
        assert all(h.dim() == 2 and h.shape[1] == cfg.lm.hidden_size for h in a.hidden)

        context, pooled = compact.connector.condition(a.hidden)
        assert context.shape == (2, 2 * cfg.connector.num_query_tokens, cfg.connector.t5_dim)
        assert pooled.shape == (2, cfg.connector.clip_l_dim + cfg.connector.clip_g_dim)

        v = compact.uir(z, torch.full((2,), 0.5), context, pooled)
        assert v.shape == z.shape and torch.isfinite(v).all()

        z_new = compact.restore(z, a, steps=1)
        assert z_new.shape == z.shape and z_new.dtype == torch.float32

        improved, verdict = compact.verify(z_new, z)
    assert improved.dtype == torch.bool and improved.shape == (2,)
    assert all(t.split(" (")[0] in prompts.COMPARE_ANSWERS for t in verdict)
    assert improved.tolist() == [prompts.REJECT not in t for t in verdict]


def test_compact_parameter_table(compact):
    rows = dict(parameter_table(compact))
    assert set(rows) == {
        "codec (AutoencoderKL)",
        "LQA: A_I image adapter",
        "LQA: vision_proj",
        "LQA: language model",
        "A_Q quality adapter (Q-Former)",
        "UIR restorer (MMDiT)",
    }
    assert rows["LQA: language model"] == n_params(compact.lqa.lm)
    assert rows["A_Q quality adapter (Q-Former)"] == n_params(compact.connector)
    # the table counts stored values: every persistent tensor of the state dict, once
    assert sum(rows.values()) == sum(t.numel() for t in compact.state_dict().values())
    assert all(n > 0 for n in rows.values())


# ----- sd35m: official sizes on the meta device -------------------------------------------


@pytest.fixture(scope="module")
def official():
    cfg = RARConfig.preset("sd35m")
    with torch.device("meta"):
        model = RAR(cfg, with_codec=True)
    attach_tokenizer(model, None)
    return model


def test_sd35m_has_no_codec_by_default():
    with torch.device("meta"):
        model = RAR(RARConfig.preset("sd35m"))
    assert model.codec is None
    with pytest.raises(RuntimeError, match="SD3.5 VAE"):
        model.encode(torch.empty(1, 3, 64, 64, device="meta"))


def test_sd35m_parameter_counts(official):
    m = official
    assert all(p.is_meta for p in m.parameters())
    restorer = n_params(m.uir)
    pos_embed = m.uir.transformer.pos_embed.pos_embed
    assert restorer == pytest.approx(2.243e9, rel=2e-3)  # MMDiT-X parameters
    assert pos_embed.numel() == 384 * 384 * 1536 == 226_492_416  # fixed sin-cos table, stored
    assert n_params(m.lqa.lm) == 6_738_415_616  # Vicuna-7B / Llama-2-7B, untied head
    assert n_params(m.lqa.A_I) == pytest.approx(151.2e6, rel=2e-3)
    assert n_params(m.lqa.vision_proj) == 1024 * 4096 + 4096
    assert n_params(m.connector) == pytest.approx(168.7e6, rel=2e-3)
    rows = dict(parameter_table(m))
    assert rows["UIR restorer (MMDiT)"] == restorer + pos_embed.numel()
    assert rows["UIR restorer (MMDiT)"] == pytest.approx(2.47e9, rel=5e-3)  # ~2.5 B as SD3.5-M
    assert rows["LQA: language model"] == 6_738_415_616
    assert rows["codec (AutoencoderKL)"] == pytest.approx(83.8e6, rel=5e-3)  # SD3 VAE


def test_sd35m_module_layout(official):
    t = official.uir.transformer
    assert len(t.transformer_blocks) == 24
    assert t.config.patch_size == 2 and t.config.in_channels == 16
    assert t.config.joint_attention_dim == 4096 and t.config.pooled_projection_dim == 2048
    assert t.inner_dim == 1536
    lm = official.lqa.lm.config
    assert (lm.hidden_size, lm.num_hidden_layers, lm.vocab_size, lm.intermediate_size) == (4096, 32, 32000, 11008)
    assert len(official.lqa.A_I.local_attn.resblocks) == 12
    assert len(official.connector.transformer) == 8
    assert official.connector.query_tokens.shape == (1, 77, 1024)


def test_sd35m_forward_shapes_on_meta(official):
    m = official
    B = 2
    z = torch.empty(B, 16, 32, 32, device="meta")  # 256x256 px image, 8x VAE
    tokens = m.lqa.embed_image(z)
    assert tokens.shape == (B, 256, 4096)  # stride-2 patches: 16x16 tokens, projected to 4096

    hidden = torch.empty(B, 400, 4096, device="meta")
    context, pooled = m.connector(hidden)
    assert context.shape == (B, 154, 4096)  # 77 CLIP-L/G tokens padded to 4096 + 77 T5 tokens
    assert pooled.shape == (B, 2048)  # CLIP-L 768 + CLIP-G 1280

    v = m.uir(z, torch.empty(B, device="meta"), context, pooled)
    assert v.shape == z.shape

    x = m.codec.encode(torch.empty(1, 3, 64, 64, device="meta"))
    assert x.shape == (1, 16, 8, 8)
    assert m.codec.decode(x).shape == (1, 3, 64, 64)


def test_sd35m_prompt_embeds_on_meta(official):
    m = official
    z = torch.empty(1, 16, 32, 32, device="meta")
    seg = prompts.identify_segments(prompts.IDENTIFY[-1])
    prefix = m.lqa.prompt_embeds(seg, [z])
    n_text = sum(len(m.lqa._text_ids(s)) for s in seg if s is not None)
    assert prefix.shape == (1, 1 + n_text + 256, 4096)  # BOS + text + image tokens
    h = m.lqa.lm.model(inputs_embeds=prefix).last_hidden_state
    assert h.shape == prefix.shape
