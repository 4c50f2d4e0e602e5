"""`rar convert` on tiny synthetic checkpoints with the official key and file layout.

The fixtures (official_fixtures.py) write what the official release looks like at tiny sizes;
these tests convert them and check (1) every key is accounted for, (2) values follow the official
load order, (3) the converted modules compute what the official dataflow computes from the same
tensors (functional reference forwards written from rar-official-layout.md, Sec. 1.3 and 2.3;
LoRA against the unmerged x W^T + s (x A^T) B^T; the restorer against diffusers' own converter),
and (4) broken releases fail with errors that name the problem.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from official_fixtures import (
    A_I_GLOBAL_HEAD_KEYS,
    SD35M_DIMS,
    abstractor_state,
    build_release,
    llama_state,
    lora_key,
    meta_rand,
    mmditx_state,
    qformer_state,
)
from rar_core import convert as C
from rar_core.config import OFFICIAL_LABELS, RARConfig

PROJS = ("q_proj", "k_proj", "v_proj", "o_proj")


# ---------------------------------------------------------------------------------------------
# shared conversions (module scope: each costs a second or two)


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """Default fixture release (all files, partly overlapping), converted to fp32."""
    root = tmp_path_factory.mktemp("release")
    rel = build_release(root)
    out = root.parent / "layered.safetensors"
    report = C.convert_official(rel.root, out, dtype="fp32", config=rel.config())
    return rel, out, report, load_file(str(out))


@pytest.fixture(scope="module")
def loaded(layered):
    from rar_core.checkpoint import load_rar

    _, out, _, _ = layered
    return load_rar(out)


def _edit_pth(path: Path, fn) -> None:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    sd = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
    fn(sd)
    torch.save(obj, path)


# ---------------------------------------------------------------------------------------------
# 1) every key maps


def test_every_key_maps_and_report_is_clean(layered):
    rel, out, report, tensors = layered
    assert report.ok, report.format()
    assert report.unmatched == [] and report.missing == [] and report.shape_errors == []
    text = report.format()
    # what is dropped on purpose is listed with its reason, not as unmatched
    assert "A_I global head, unused with local features" in text
    assert "SD3 VAE, loaded by ComfyUI's VAELoader" in text
    assert "rotary inv_freq buffer" in text
    assert "pos_embed buffer" in text  # the backbone's copy; the base file's is used
    by_role = {s.role: s for s in report.sources}
    assert sorted(by_role["lqa_s1"].ignored["A_I global head, unused with local features"]) == sorted(
        f"tgt_abstractor.{k}" for k in A_I_GLOBAL_HEAD_KEYS)
    # DepictQA's CLIP-side key, its old-peft LoRA key and its CLIP-sized vision_proj are skipped
    # exactly as the official loader skips them, and listed
    skipped = [k for keys in by_role["lqa_dq495k"].skipped.values() for k in keys]
    assert "visual_hidden_proj.weight" in skipped
    assert "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in skipped
    assert any("vision_proj.weight" in k for k in skipped)
    # the output is exactly rar_core's RAR state_dict (no codec), key for key and shape for shape
    from rar_core.model import RAR

    cfg = RARConfig.from_json(json.loads(json.dumps(_metadata(out)))["config"])
    with torch.device("meta"):
        model = RAR(cfg, with_codec=False)
    expected = model.state_dict()
    assert set(tensors) == set(expected)
    for k, v in tensors.items():
        assert tuple(v.shape) == tuple(expected[k].shape), k


def _metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_official_sizes_map_completely_into_the_sd35m_preset():
    """Shape-only check at the real sizes: the official layout fills RAR(sd35m) exactly."""
    from rar_core.model import RAR

    with torch.device("meta"):
        model = RAR(RARConfig.preset("sd35m"), with_codec=False)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    d, r = SD35M_DIMS, meta_rand()

    dit = {k: tuple(v.shape) for k, v in mmditx_state(d, r).items()}
    assert C.infer_uir(dit)["dual_attention_layers"] == tuple(range(13))
    plan, unused = C.sd3_to_diffusers_plan(dit)
    assert unused == []
    assert {C.UIR_PREFIX + k: tuple(s) for k, (_, s) in plan.items()} == {
        k: s for k, s in ours.items() if k.startswith("uir.")}

    conn = {k: C.LazyTensor("meta", tuple(v.shape), v.dtype, lambda: None) for k, v in qformer_state(d, r).items()}
    cd = C.infer_connector(conn)
    assert cd["hidden_dim"] == 1024 and cd["layers"] == 8 and cd["num_query_tokens"] == 77
    expected = C.connector_shapes(cd["hidden_dim"], cd["layers"], cd["in_ch"], cd["num_query_tokens"], cd["dims"],
                                  cd["mlp"], cd["head_hidden"])
    assert expected == {k: tuple(v.shape) for k, v in qformer_state(d, r).items()}
    assert {"connector." + k: s for k, s in expected.items()} == {
        k: s for k, s in ours.items() if k.startswith("connector.")}

    a_i = C.a_i_shapes(1024, 16, 2, 12, 4096)
    official = {k: tuple(v.shape) for k, v in abstractor_state(d, r).items() if k not in A_I_GLOBAL_HEAD_KEYS}
    assert a_i == official
    assert {"lqa.A_I." + k: s for k, s in a_i.items()} == {k: s for k, s in ours.items() if k.startswith("lqa.A_I.")}

    lm = C.llama_shapes(32000, 4096, 11008, 32, 4096)
    official = {k: tuple(v.shape) for k, v in llama_state(d, r, inv_freq=False).items()}
    assert lm == official
    assert {"lqa.lm." + k: s for k, s in lm.items()} == {k: s for k, s in ours.items() if k.startswith("lqa.lm.")}
    assert ours["lqa.vision_proj.weight"] == (4096, 1024)


# ---------------------------------------------------------------------------------------------
# 2) values follow the official load order


def test_values_follow_the_official_load_order(layered):
    rel, _, _, t = layered
    for k, v in rel.connector.items():
        assert torch.equal(t["connector." + k], v), k
    for k, v in rel.a_i.items():
        assert torch.equal(t["lqa.A_I." + k], v), k
    for k, v in rel.vision_proj.items():
        assert torch.equal(t["lqa.vision_proj." + k], v), k
    # every step of the chain is visible: connector block 0 from the connector file, the rest
    # from the end-to-end file; vision_proj from LQA s2; joint block 0 from the UIR backbone
    assert torch.equal(t["connector.transformer.0.norm1.weight"], rel.raw["connector"]["transformer.0.norm1.weight"])
    assert torch.equal(t["connector.transformer.1.norm1.weight"], rel.raw["e2e"]["connector.transformer.1.norm1.weight"])
    assert torch.equal(t["lqa.vision_proj.weight"], rel.raw["lqa_s2"]["vision_proj.weight"])
    assert torch.equal(t["uir.transformer.transformer_blocks.0.attn.to_out.0.weight"],
                       rel.raw["backbone"]["joint_blocks.0.x_block.attn.proj.weight"])
    assert torch.equal(t["uir.transformer.transformer_blocks.1.attn.to_out.0.weight"],
                       rel.raw["e2e"]["model.joint_blocks.1.x_block.attn.proj.weight"])
    # pos_embed always from the base file (the backbone's copy is deleted by the official loader)
    assert torch.equal(t["uir.transformer.pos_embed.pos_embed"], rel.raw["base"]["model.diffusion_model.pos_embed"])
    # LLM weights without LoRA are copied verbatim
    for k, v in rel.llm.items():
        if not any(p in k for p in PROJS):
            assert torch.equal(t["lqa.lm." + k], v), k


def test_uir_equals_diffusers_own_converter(layered):
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    rel, _, _, t = layered
    ref = convert_sd3_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in rel.dit.items()})
    ours = {k[len(C.UIR_PREFIX):]: v for k, v in t.items() if k.startswith(C.UIR_PREFIX)}
    assert set(ours) == set(ref)
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_uir_forward_runs(loaded):
    cfg = loaded.config
    torch.manual_seed(0)
    x = torch.randn(2, cfg.codec.latent_channels, 8, 8)
    context = torch.randn(2, 2 * cfg.connector.num_query_tokens, cfg.connector.t5_dim)
    pooled = torch.randn(2, cfg.connector.pooled_dim)
    v = loaded.uir(x, torch.tensor([1.0, 0.5]), context, pooled)
    assert v.shape == x.shape and torch.isfinite(v).all()


# ---------------------------------------------------------------------------------------------
# 3) parity with reference forwards built from the official tensors


def test_lora_merge_equals_unmerged_adapter(layered):
    rel, _, report, t = layered
    scale = rel.lora_scale()  # alpha 16 / tiny rank 4 = 4: the scale really is alpha / r
    assert scale == 4.0 and "merged with scale 4" in report.format()
    x = torch.randn(7, rel.dims.hidden, generator=torch.Generator().manual_seed(1))
    for i in range(rel.dims.lm_layers):
        for proj in PROJS:
            w = rel.llm[f"model.layers.{i}.self_attn.{proj}.weight"]
            a, b = rel.lora[lora_key(i, proj, "A")], rel.lora[lora_key(i, proj, "B")]
            merged = t[f"lqa.lm.model.layers.{i}.self_attn.{proj}.weight"]
            unmerged = x @ w.T + scale * (x @ a.T) @ b.T
            torch.testing.assert_close(x @ merged.T, unmerged, rtol=1e-5, atol=1e-5)
    # layer 0's LoRA came from LQA s2, layer 1's from the end-to-end file
    assert torch.equal(rel.lora[lora_key(0, "q_proj", "A")], rel.raw["lqa_s2"][lora_key(0, "q_proj", "A")])
    assert torch.equal(rel.lora[lora_key(1, "q_proj", "A")], rel.raw["e2e"]["assessment." + lora_key(1, "q_proj", "A")])


def test_merge_lora_function():
    g = torch.Generator().manual_seed(0)
    w, a, b = torch.randn(6, 5, generator=g), torch.randn(2, 5, generator=g), torch.randn(6, 2, generator=g)
    torch.testing.assert_close(C.merge_lora(w, a, b, alpha=16.0), w + 8.0 * b @ a)
    with pytest.raises(C.ConversionError, match="LoRA shapes"):
        C.merge_lora(w, a.T, b, alpha=16.0)


def test_language_model_equals_base_plus_lora_hooks(layered, loaded):
    """Logits of the merged LM == the base Vicuna weights with LoRA applied on the fly."""
    rel, _, _, _ = layered
    ref = copy.deepcopy(loaded.lqa.lm)
    ref.load_state_dict(rel.llm, strict=True)
    scale = rel.lora_scale()
    for i, layer in enumerate(ref.model.layers):
        for proj in PROJS:
            a, b = rel.lora[lora_key(i, proj, "A")], rel.lora[lora_key(i, proj, "B")]
            getattr(layer.self_attn, proj).register_forward_hook(
                lambda m, inp, out, a=a, b=b: out + scale * (inp[0] @ a.T) @ b.T)
    ids = torch.randint(0, rel.dims.vocab, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.lqa.lm(input_ids=ids).logits, ref(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def _mha(q_in, kv_in, w_in, b_in, w_out, b_out, heads, pad_mask=None):
    """Multi-head attention with packed in_proj (nn.MultiheadAttention parameter layout)."""
    wq, wk, wv = w_in.chunk(3)
    bq, bk, bv = b_in.chunk(3)
    B, Lq, D = q_in.shape
    hd = D // heads

    def split(x):
        return x.view(B, x.shape[1], heads, hd).transpose(1, 2)

    q, k, v = split(q_in @ wq.T + bq), split(kv_in @ wk.T + bk), split(kv_in @ wv.T + bv)
    att = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if pad_mask is not None:
        att = att.masked_fill(pad_mask[:, None, None, :], float("-inf"))
    out = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, Lq, D)
    return out @ w_out.T + b_out


def _ln(x, p, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], p[prefix + ".weight"], p[prefix + ".bias"], eps)


def reference_qformer(p: dict, x: torch.Tensor, pad_mask: torch.Tensor, heads: int, pool_heads: int):
    """Official QFormer + get_cond, written from Sec. 1.3 of the layout notes."""
    kv = F.linear(_ln(x, p, "input_norm", 1e-6), p["input_proj.weight"], p["input_proj.bias"])
    q = p["query_tokens"].expand(x.shape[0], -1, -1)
    layers = len({k.split(".")[1] for k in p if k.startswith("transformer.")})
    for i in range(layers):
        b = f"transformer.{i}."
        att = _mha(q, q, p[b + "self_attn.in_proj_weight"], p[b + "self_attn.in_proj_bias"],
                   p[b + "self_attn.out_proj.weight"], p[b + "self_attn.out_proj.bias"], heads)
        q = _ln(q + att, p, b + "norm1", 1e-6)
        att = _mha(q, kv, p[b + "cross_attn.in_proj_weight"], p[b + "cross_attn.in_proj_bias"],
                   p[b + "cross_attn.out_proj.weight"], p[b + "cross_attn.out_proj.bias"], heads, pad_mask)
        q = _ln(q + att, p, b + "norm2", 1e-6)
        h = F.gelu(F.linear(q, p[b + "mlp.0.weight"], p[b + "mlp.0.bias"]))
        q = _ln(q + F.linear(h, p[b + "mlp.2.weight"], p[b + "mlp.2.bias"]), p, b + "norm3", 1e-6)

    def head(name):
        h = F.gelu(_ln(q, p, f"{name}_proj.ln", 1e-5) @ p[f"{name}_proj.fc1.weight"].T)
        return p[f"{name}_proj.gamma"] * (h @ p[f"{name}_proj.fc2.weight"].T)

    def pool(name, tokens):
        qt = p[f"{name}_pool.query_token"].expand(tokens.shape[0], -1, -1)
        o = _mha(qt, tokens, p[f"{name}_pool.attn.in_proj_weight"], p[f"{name}_pool.attn.in_proj_bias"],
                 p[f"{name}_pool.attn.out_proj.weight"], p[f"{name}_pool.attn.out_proj.bias"], pool_heads)
        return (_ln(o, p, f"{name}_norm", 1e-5) @ p[f"{name}_line"])[:, 0]

    g_out, l_out, t5_out = head("clip_g"), head("clip_l"), head("t5_xxl")
    lg = torch.cat([l_out, g_out], dim=-1)
    lg = F.pad(lg, (0, t5_out.shape[-1] - lg.shape[-1]))
    context = torch.cat([lg, t5_out], dim=-2)
    y = torch.cat([pool("clip_l", l_out), pool("clip_g", g_out)], dim=-1)
    return context, y


def test_connector_matches_official_dataflow(layered, loaded):
    rel, _, _, _ = layered
    g = torch.Generator().manual_seed(3)
    n_in = 12
    x = torch.randn(2, n_in, rel.dims.hidden, generator=g)
    mask = torch.zeros(2, n_in, dtype=torch.bool)
    mask[1, :5] = True  # left padding of the second item, as token_pad_or_truncate
    x[1, :5] = 0.0
    ref_ctx, ref_y = reference_qformer(rel.connector, x, mask, rel.dims.conn_heads, rel.dims.pool_heads)
    with torch.no_grad():
        ctx, y = loaded.connector(x, mask)
    assert ctx.shape == (2, 2 * rel.dims.n_query, rel.dims.t5) and y.shape == (2, rel.dims.clip_l + rel.dims.clip_g)
    torch.testing.assert_close(ctx, ref_ctx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y, ref_y, rtol=1e-4, atol=1e-4)


def reference_sine(h: int, w: int, dim: int) -> torch.Tensor:
    """Sec. 2.3 step 3, element by element: feature k = sin(p/d_k) for even k, cos(p/d_k) for odd."""
    npf = dim // 2
    k = torch.arange(npf, dtype=torch.float64)
    d = 10000.0 ** (2 * torch.floor(k / 2) / npf)

    def feats(p):
        return torch.where(k % 2 == 0, torch.sin(p / d), torch.cos(p / d))

    out = torch.empty(h * w, dim, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            py = (r + 1) / (h + 1e-6) * 2 * math.pi
            px = (c + 1) / (w + 1e-6) * 2 * math.pi
            out[r * w + c] = torch.cat([feats(torch.tensor(py, dtype=torch.float64)),
                                        feats(torch.tensor(px, dtype=torch.float64))])
    return out.float()


def reference_image_adapter(p: dict, vp: dict, z: torch.Tensor, heads: int) -> torch.Tensor:
    """Official FormerAbstractorModel local features + vision_proj (Sec. 2.3)."""
    k = p["conv1.weight"].shape[-1]
    x = F.conv2d(z, p["conv1.weight"], stride=k)
    h, w = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2) + reference_sine(h, w, x.shape[1])
    x = _ln(x, p, "ln_pre", 1e-5)
    layers = len({key.split(".")[2] for key in p if key.startswith("local_attn.resblocks.")})
    for j in range(layers):
        b = f"local_attn.resblocks.{j}."
        hN = _ln(x, p, b + "ln_1", 1e-5)
        x = x + _mha(hN, hN, p[b + "attn.in_proj_weight"], p[b + "attn.in_proj_bias"],
                     p[b + "attn.out_proj.weight"], p[b + "attn.out_proj.bias"], heads)
        hN = F.linear(_ln(x, p, b + "ln_2", 1e-5), p[b + "mlp.c_fc.weight"], p[b + "mlp.c_fc.bias"])
        hN = hN * torch.sigmoid(1.702 * hN)  # QuickGELU
        x = x + F.linear(hN, p[b + "mlp.c_proj.weight"], p[b + "mlp.c_proj.bias"])
    return F.linear(x, vp["weight"], vp["bias"])


def test_image_adapter_matches_official_dataflow(layered, loaded):
    rel, _, _, _ = layered
    z = torch.randn(2, rel.dims.latent_channels, 8, 12, generator=torch.Generator().manual_seed(4))
    ref = reference_image_adapter(rel.a_i, rel.vision_proj, z, rel.dims.ai_heads)
    with torch.no_grad():
        ours = loaded.lqa.embed_image(z)
    assert ours.shape == (2, (8 // 2) * (12 // 2), rel.dims.hidden)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# metadata, dtypes, variants of the release


def test_metadata(layered):
    rel, out, _, _ = layered
    meta = _metadata(out)
    assert meta["format"] == "comfyui-rar" and meta["format_version"] == "1"
    assert meta["latent_format"] == "sd3" and meta["has_codec"] == "false"
    cfg = RARConfig.from_json(meta["config"])
    d = rel.dims
    assert cfg.name == "sd35m" and cfg.codec.latent_format == "sd3" and cfg.codec.latent_channels == d.latent_channels
    assert (cfg.uir.num_layers, cfg.uir.attention_head_dim, cfg.uir.num_attention_heads) == (d.depth, d.head_dim, d.dit_heads)
    assert cfg.uir.dual_attention_layers == d.dual_layers and cfg.uir.pos_embed_max_size == d.pos_side
    assert (cfg.connector.hidden_dim, cfg.connector.layers, cfg.connector.num_query_tokens) == (d.conn_width, d.conn_layers, d.n_query)
    assert (cfg.adapter.width, cfg.adapter.layers, cfg.adapter.patch) == (d.ai_width, d.ai_layers, d.ai_patch)
    assert (cfg.lm.hidden_size, cfg.lm.num_hidden_layers, cfg.lm.num_attention_heads) == (d.hidden, d.lm_layers, d.lm_heads)
    assert (cfg.uir.flow_shift, cfg.uir.steps) == (3.0, 4)  # sampler settings kept from the preset
    assert tuple(json.loads(meta["labels"])) == OFFICIAL_LABELS
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(meta["tokenizer"])
    assert tok.token_to_id("</s>") == 2
    assert json.loads(meta["tokenizer_config"])["legacy"] is False
    assert json.loads(meta["lora_merged"]) == {"rank": 4, "alpha": 16.0, "targets": list(PROJS)}
    assert json.loads(meta["source_files"])["e2e"] == "epoch_5_step_60506_weight.pth"


def test_default_dtype_is_bf16_and_fp16_option(tmp_path, layered):
    rel, _, _, t32 = layered
    for dtype, code, torch_dtype in (("bf16", "BF16", torch.bfloat16), ("fp16", "F16", torch.float16)):
        out = tmp_path / f"{dtype}.safetensors"
        if dtype == "bf16":
            C.convert_official(rel.root, out)  # default dtype, default sd35m head counts
        else:
            C.convert_official(rel.root, out, dtype=dtype)
        with safe_open(str(out), framework="pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {code}
            assert f.get_tensor("connector.input_proj.weight").dtype == torch_dtype
            torch.testing.assert_close(f.get_tensor("lqa.lm.lm_head.weight"),
                                       t32["lqa.lm.lm_head.weight"].to(torch_dtype))
    with pytest.raises(C.ConversionError, match="unknown dtype"):
        C.convert_official(rel.root, tmp_path / "x.safetensors", dtype="int8")


def test_fp8_stores_the_linear_weights_in_fp8_and_the_rest_in_bf16(tmp_path, layered):
    """--dtype fp8_e4m3fn: every linear layer's weight in float8_e4m3fn (about half of bf16's
    bytes), every other tensor in bf16; the CLI's plain loader widens them, a loader with
    operations keeps them."""
    from rar_core.checkpoint import load_rar
    from rar_core.model import RAR
    from rar_core.operations import fp8_keys

    rel, f32_path, _, t32 = layered
    out = tmp_path / "fp8.safetensors"
    report = C.convert_official(rel.root, out, dtype="fp8_e4m3fn", config=rel.config())
    assert any("float8_e4m3fn" in n for n in report.notes)
    plain = load_rar(out)
    with torch.device("meta"):
        linear = fp8_keys(RAR(plain.config, with_codec=False))
    with safe_open(str(out), framework="pt") as f:
        codes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        head = f.get_tensor("lqa.lm.lm_head.weight")
    assert linear and {codes[k] for k in linear} == {"F8_E4M3"}
    assert {c for k, c in codes.items() if k not in linear} == {"BF16"}
    assert "lqa.lm.lm_head.weight" in linear and head.dtype == torch.float8_e4m3fn
    ref = t32["lqa.lm.lm_head.weight"]
    # e4m3 keeps 3 mantissa bits: a relative error of at most 2^-4 on normal values
    torch.testing.assert_close(head.float(), ref.clamp(-448, 448).to(torch.float8_e4m3fn).float())
    assert (head.float() - ref).abs().max() <= ref.abs().max() * 2 ** -4 + 2 ** -9
    assert {p.dtype for p in plain.parameters()} == {torch.float32}  # widened, computing on a CPU

    class Ops:  # an operations namespace: subclasses of the torch layers (as comfy.ops are)
        class Linear(torch.nn.Linear):
            pass

    kept = load_rar(out, operations=Ops)
    dtypes = {n: p.dtype for n, p in kept.named_parameters()}
    assert {dtypes[k] for k in linear} == {torch.float8_e4m3fn}
    assert {d for k, d in dtypes.items() if k not in linear} == {torch.float32}
    assert {n + ".weight" for n, m in kept.named_modules() if type(m) is Ops.Linear} == linear


def test_full_resume_checkpoint_and_safetensors_llm(tmp_path):
    """latest.pth as a full training checkpoint (frozen LLM under peft names, optimizer, numpy
    RNG state) is read with weights_only=True; the LLM folder may hold safetensors shards."""
    rel = build_release(tmp_path / "zoo", e2e="latest", llm_format="safetensors", seed=5)
    out = tmp_path / "out.safetensors"
    report = C.convert_official(rel.root, out, dtype="fp32")
    e2e = {s.role: s for s in report.sources}["e2e"]
    assert "frozen base LLM weights, taken from the vicuna folder" in e2e.ignored
    assert set(e2e.ignored["training state, not weights"]) == {"epoch", "optimizer", "scheduler", "rng_state"}
    t = load_file(str(out))
    for k, v in rel.connector.items():
        assert torch.equal(t["connector." + k], v)
    assert torch.equal(t["uir.transformer.pos_embed.pos_embed"], rel.raw["base"]["model.diffusion_model.pos_embed"])
    assert json.loads(_metadata(out)["source_files"])["e2e"] == "latest.pth"


def test_release_with_only_required_files(tmp_path):
    rel = build_release(tmp_path / "zoo", optional_files=False, seed=7)
    out = tmp_path / "out.safetensors"
    report = C.convert_official(rel.root, out, dtype="fp32")
    assert report.ok
    assert any("not present" in n and "backbone" in n for n in report.notes)
    t = load_file(str(out))
    for k, v in rel.a_i.items():
        assert torch.equal(t["lqa.A_I." + k], v)


def test_parent_folder_is_accepted(tmp_path):
    rel = build_release(tmp_path / "checkpoints" / "RAR_modelzoo", optional_files=False, seed=8)
    files = C.locate_release(tmp_path)
    assert files.e2e == rel.files["e2e"] and files.base == rel.files["base"]


def test_cli_subcommand(tmp_path, capsys):
    from rar_core.cli import main

    rel = build_release(tmp_path / "zoo", optional_files=False, seed=9)
    out = tmp_path / "cli.safetensors"
    assert main(["convert", str(rel.root), "-o", str(out), "--dtype", "fp32"]) == 0
    assert "result: OK" in capsys.readouterr().out
    assert out.is_file()
    (rel.files["e2e"]).unlink()
    assert main(["convert", str(rel.root), "-o", str(tmp_path / "bad.safetensors")]) != 0
    assert "end-to-end checkpoint" in capsys.readouterr().err


def test_streaming_writer_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(0)
    src = {"a.scalar": torch.tensor(1.5), "b.matrix": torch.randn(3, 5, generator=g), "c.vec": torch.randn(7, generator=g)}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = tmp_path / f"w_{dtype}.safetensors"
        C.write_safetensors_streaming(
            out, [C.OutTensor(k, tuple(v.shape), lambda v=v: v) for k, v in src.items()], dtype, {"x": "y"})
        back = load_file(str(out))
        assert set(back) == set(src)
        for k, v in src.items():
            assert back[k].dtype == dtype and torch.equal(back[k], v.to(dtype))
        assert _metadata(out) == {"x": "y"}


# ---------------------------------------------------------------------------------------------
# 4) broken releases fail clearly (and leave no output file)


@pytest.fixture()
def minimal(tmp_path):
    """A release with only the required files (the end-to-end file holds all trained weights)."""
    return build_release(tmp_path / "zoo", optional_files=False, seed=11), tmp_path / "out.safetensors"


def _fails(rel, out, match):
    with pytest.raises(C.ConversionError, match=match) as err:
        C.convert_official(rel.root, out, dtype="fp32")
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
    return str(err.value)


@pytest.mark.parametrize("role, match", [
    ("base", "missing SD3.5-Medium base file"),
    ("e2e", "missing end-to-end checkpoint"),
])
def test_missing_required_file(minimal, role, match):
    rel, out = minimal
    rel.files[role].unlink()
    _fails(rel, out, match)


def test_missing_llm_folder_or_weights(minimal):
    rel, out = minimal
    for shard in rel.files["llm"].glob("pytorch_model-*.bin"):
        shard.unlink()
    _fails(rel, out, "no weights")
    (rel.files["llm"] / "config.json").unlink()
    _fails(rel, out, "missing language model folder")


def test_missing_release_folder(tmp_path):
    with pytest.raises(C.ConversionError, match="release folder not found"):
        C.convert_official(tmp_path / "nope", tmp_path / "o.safetensors")


def test_unmatched_keys_are_listed(minimal):
    rel, out = minimal

    def add(sd):
        sd["assessment.mystery_head.weight"] = torch.zeros(2)
        sd["model.joint_blocks.99.x_block.attn.qkv.weight"] = torch.zeros(2)
        sd["ema.something"] = torch.zeros(2)

    _edit_pth(rel.files["e2e"], add)
    msg = _fails(rel, out, "UNMATCHED")
    for key in ("assessment.mystery_head.weight", "model.joint_blocks.99.x_block.attn.qkv.weight", "ema.something"):
        assert key in msg


def test_unmatched_key_in_vicuna_shard(minimal):
    rel, out = minimal
    shard = sorted(rel.files["llm"].glob("pytorch_model-*.bin"))[0]
    sd = torch.load(shard, weights_only=True)
    sd["model.layers.0.self_attn.extra_bias"] = torch.zeros(3)
    torch.save(sd, shard)
    assert "model.layers.0.self_attn.extra_bias" in _fails(rel, out, "UNMATCHED")


def test_missing_keys_are_listed(minimal):
    rel, out = minimal

    def drop(sd):
        del sd["connector.transformer.1.norm2.weight"]
        del sd["assessment." + lora_key(1, "v_proj", "B")]
        del sd["assessment.tgt_abstractor.local_attn.resblocks.0.ln_2.bias"]

    _edit_pth(rel.files["e2e"], drop)
    msg = _fails(rel, out, "MISSING")
    assert "connector: transformer.1.norm2.weight" in msg
    assert lora_key(1, "v_proj", "B") in msg
    assert "A_I: local_attn.resblocks.0.ln_2.bias" in msg


def test_base_without_pos_embed_is_missing(minimal):
    rel, out = minimal
    base = load_file(str(rel.files["base"]))
    del base["model.diffusion_model.pos_embed"]
    save_file(base, str(rel.files["base"]))
    _fails(rel, out, "pos_embed")


def test_wrong_shapes_are_listed(minimal):
    rel, out = minimal

    def bad(sd):
        sd["connector.transformer.1.mlp.0.weight"] = torch.zeros(3, 3)
        sd["assessment.vision_proj.bias"] = torch.zeros(5)

    _edit_pth(rel.files["e2e"], bad)
    msg = _fails(rel, out, "WRONG SHAPE")
    assert "transformer.1.mlp.0.weight" in msg and "vision_proj" in msg


def test_shape_change_between_files_is_an_error(tmp_path):
    rel = build_release(tmp_path / "zoo", seed=12)
    out = tmp_path / "out.safetensors"
    _edit_pth(rel.files["e2e"], lambda sd: sd.__setitem__("connector.input_proj.bias", torch.zeros(7)))
    msg = _fails(rel, out, "WRONG SHAPE")
    assert "input_proj.bias" in msg and "epoch_100_step_19001.pth" in msg


def test_lqa_chain_skips_and_lists_what_the_official_loader_skips(tmp_path):
    """Stage 1 gains a key the LQA does not have, stage 2 a mis-shaped vision_proj.bias: the
    official `load_pretrained_weights` skips both (keeping stage 1's bias), so does the converter,
    and the report names each with its reason."""
    rel = build_release(tmp_path / "zoo", seed=15)
    out = tmp_path / "out.safetensors"
    _edit_pth(rel.files["lqa_s1"], lambda sd: sd.__setitem__("tgt_abstractor.extra_head.weight", torch.zeros(3)))
    _edit_pth(rel.files["lqa_s2"], lambda sd: sd.__setitem__("vision_proj.bias", torch.zeros(7)))
    report = C.convert_official(rel.root, out, dtype="fp32", config=rel.config())
    assert report.ok, report.format()
    by_role = {s.role: s for s in report.sources}
    assert by_role["lqa_s1"].skipped == {"not a RAR LQA parameter": ["tgt_abstractor.extra_head.weight"]}
    assert by_role["lqa_s2"].skipped == {"shape differs from the RAR LQA parameter": [
        f"vision_proj.bias [7], expected [{rel.dims.hidden}]"]}
    text = report.format()
    assert "tgt_abstractor.extra_head.weight" in text and "vision_proj.bias [7]" in text
    t = load_file(str(out))
    # the end-to-end file has no vision_proj: s2's weight, and s1's bias since s2's was skipped
    assert torch.equal(t["lqa.vision_proj.bias"], rel.raw["lqa_s1"]["vision_proj.bias"])
    assert torch.equal(t["lqa.vision_proj.weight"], rel.raw["lqa_s2"]["vision_proj.weight"])
    assert "lqa.A_I.extra_head.weight" not in t


@pytest.mark.parametrize("key, value, match", [
    ("assessment.tgt_abstractor.extra_head.weight", torch.zeros(3), "UNMATCHED"),
    ("assessment.vision_proj.bias", torch.zeros(7), "WRONG SHAPE"),
])
def test_end_to_end_file_stays_strict(minimal, key, value, match):
    """The same defects in the end-to-end checkpoint stop the conversion and name the key."""
    rel, out = minimal
    _edit_pth(rel.files["e2e"], lambda sd: sd.__setitem__(key, value))
    msg = _fails(rel, out, match)
    assert key.split(".", 1)[1].removeprefix("tgt_abstractor.") in msg and "epoch_5_step_60506_weight.pth" in msg


def test_wrong_llm_shape_and_uir_shape(minimal):
    rel, out = minimal
    shard = sorted(rel.files["llm"].glob("pytorch_model-*.bin"))[-1]
    sd = torch.load(shard, weights_only=True)
    key = next(k for k in sd if k.endswith("mlp.up_proj.weight"))
    sd[key] = torch.zeros(5, 5)
    torch.save(sd, shard)
    assert key in _fails(rel, out, "WRONG SHAPE")


def test_refuses_code_in_pickles(minimal):
    """A .pth that needs arbitrary unpickling is refused (weights_only=True), not executed."""
    rel, out = minimal

    class Evil:
        def __reduce__(self):
            return (print, ("should never run",))

    torch.save({"state_dict": {"model.x": Evil()}}, rel.files["e2e"])
    _fails(rel, out, "weights_only=True")


def test_converted_model_with_full_vocabulary_tokenizer_loads(tmp_path, monkeypatch):
    """Vicuna's tokenizer has exactly vocab_size tokens and no <pad>; the converted file must load."""
    import official_fixtures
    from rar_core.checkpoint import load_rar

    original = official_fixtures.tiny_tokenizer_json
    monkeypatch.setattr(official_fixtures, "tiny_tokenizer_json", lambda vocab: original(vocab + 8))
    rel = build_release(tmp_path / "zoo", optional_files=False, seed=13)
    out = tmp_path / "out.safetensors"
    C.convert_official(rel.root, out, dtype="fp32")
    model = load_rar(out)
    assert len(model.lqa.tokenizer) <= model.config.lm.vocab_size


def test_planning_reads_no_weights_and_writing_streams(tmp_path, monkeypatch):
    """Validation works on shapes only; values are read tensor by tensor while writing."""
    rel = build_release(tmp_path / "zoo", seed=14)
    calls = []
    real_load, real_rows = C.LazyTensor.load, C.LazyTensor.rows
    monkeypatch.setattr(C.LazyTensor, "load", lambda self: calls.append(self.origin) or real_load(self))
    monkeypatch.setattr(C.LazyTensor, "rows", lambda self, a, b: calls.append(self.origin) or real_rows(self, a, b))
    plan = C.plan_conversion(C.locate_release(rel.root), config=rel.config())
    assert calls == []
    written = []
    for t in plan.tensors:
        produce = t.produce
        t.produce = lambda produce=produce, key=t.key: written.append(key) or produce()
    C.write_safetensors_streaming(tmp_path / "o.safetensors", plan.tensors, torch.bfloat16, plan.metadata)
    assert written == [t.key for t in plan.tensors] and len(set(written)) == len(written)


# ---------------------------------------------------------------------------------------------
# tokenizer: the official slow LlamaTokenizer's ids under both `legacy` settings


@pytest.fixture(scope="module")
def llama_sentencepiece(tmp_path_factory):
    """A tiny sentencepiece model trained like Llama's (BPE, byte fallback, dummy prefix, spaces
    kept as they are, <unk>/<s>/</s> at 0/1/2) on the official prompt strings."""
    spm = pytest.importorskip("sentencepiece")
    import io

    from rar_core import prompts

    texts = [prompts.SYSTEM, *prompts.IDENTIFY, *prompts.COMPARE, *OFFICIAL_LABELS,
             "Image: <Img> </Img> Image A: <Img-A> </Img-A> Image B: <Img-B> </Img-B> USER: ASSISTANT:"]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 3), model_writer=buf, vocab_size=420, model_type="bpe",
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1, hard_vocab_limit=False, minloglevel=2)
    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


def slow_llama_ids(model_file: Path, text: str, legacy: bool) -> list[int]:
    """`LlamaTokenizer(use_fast=False)(text, add_special_tokens=False)` of transformers 4.45 (the
    official code's), restated on sentencepiece. It cuts the text at special tokens and encodes
    each piece; with `legacy` every piece gets the model's dummy prefix "▁", without it the model's
    dummy prefix is switched off, "▁" is put before the whole text, a piece that starts with a
    space is encoded behind "<unk>" (then dropped) and a lone leading "▁" before a special token is
    removed. Checked to give the same ids as transformers 4.45.2 on the prompts below."""
    import re

    import sentencepiece as spm
    pb = pytest.importorskip("sentencepiece.sentencepiece_model_pb2")  # needs protobuf

    proto = pb.ModelProto.FromString(model_file.read_bytes())
    if not legacy:
        proto.normalizer_spec.add_dummy_prefix = False
        text = "▁" + text.replace("▁", " ")
    sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    specials = ("<unk>", "<s>", "</s>")
    unk_len = len(sp.encode("<unk>", out_type=str))
    tokens: list[str] = []
    for piece in re.split("(<unk>|<s>|</s>)", text):
        if piece in specials:
            tokens.append(piece)
        elif piece and (legacy or not piece.startswith(("▁", " "))):
            tokens += sp.encode(piece, out_type=str)
        elif piece:
            tokens += sp.encode("<unk>" + piece, out_type=str)[unk_len:]
    if not legacy and len(tokens) > 1 and tokens[0] == "▁" and tokens[1] in specials:
        tokens = tokens[1:]
    return [sp.piece_to_id(t) for t in tokens]


@pytest.mark.parametrize("with_json", [False, True], ids=["tokenizer.model", "tokenizer.json"])
@pytest.mark.parametrize("legacy", [True, False, None], ids=["legacy", "non-legacy", "unset"])
def test_tokenizer_gives_the_official_slow_tokenizer_ids(tmp_path, llama_sentencepiece, legacy, with_json):
    """The converted tokenizer, loaded as rar_core loads it, gives the slow tokenizer's ids for the
    official prompt segments and answer candidates, whatever tokenizer.json the folder carries
    (transformers 5 writes the same one for both settings). Unset `legacy` means legacy, the slow
    tokenizer's default."""
    pytest.importorskip("sentencepiece.sentencepiece_model_pb2")
    import shutil

    from rar_core import prompts
    from rar_core.lqa import tokenizer_from_json

    llm = tmp_path / "vicuna-7b-v1.5"
    llm.mkdir()
    shutil.copy(llama_sentencepiece, llm / "tokenizer.model")
    cfg = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "add_bos_token": True, "add_eos_token": False}
    if legacy is not None:
        cfg["legacy"] = legacy
    (llm / "tokenizer_config.json").write_text(json.dumps(cfg))
    if with_json:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(llm)).backend_tokenizer.save(str(llm / "tokenizer.json"))
    tok = tokenizer_from_json(C.tokenizer_json(llm))

    suffix = RARConfig.preset("sd35m").lm.answer_suffix
    prompt = [s for s in prompts.identify_segments(prompts.IDENTIFY[-1]) + prompts.compare_segments(prompts.COMPARE[-1])
              if s is not None]
    texts = prompt + [c + suffix for c in (*OFFICIAL_LABELS, *prompts.COMPARE_ANSWERS)] + ["</s> Image", "x</s></s>y"]
    for text in texts:
        assert tok(text, add_special_tokens=False)["input_ids"] == slow_llama_ids(
            llama_sentencepiece, text, legacy is not False), text
    # the two settings differ exactly by one "▁" after each of the prompt's five " </s> "
    n_legacy = sum(len(slow_llama_ids(llama_sentencepiece, t, True)) for t in prompt)
    n_new = sum(len(slow_llama_ids(llama_sentencepiece, t, False)) for t in prompt)
    assert sum(t.count("</s>") for t in prompt) == 5 and n_legacy - n_new == 5
