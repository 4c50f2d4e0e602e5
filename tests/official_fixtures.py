"""Tiny synthetic stand-ins for the official RAR release (HF AaronCIH/RAR_modelzoo).

Key names, nesting ({"state_dict": ...} vs flat dicts), file names and folders follow
shared/reference/rar-official-layout.md (Sec. 1.2, 2.2, 3.5, 4.2, 4.6, 7); only the sizes are
tiny. `build_release` writes the folder and returns what the official inference would end up
with after its load order, so tests can compare a conversion against it.

By default the files overlap only partly (the backbone leaves `x_embedder` to the base file,
the end-to-end file leaves joint block 0, connector block 0, `vision_proj` and the LoRA of layer
0 to the earlier files), so every step of the load order is visible in the result.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class TinyDims:
    # restorer (MMDiT-X)
    latent_channels: int = 4
    patch: int = 2
    head_dim: int = 8
    dit_heads: int = 2
    depth: int = 3
    dual_layers: tuple[int, ...] = (0, 1)
    pos_side: int = 8
    # connector (Q-Former); head counts as the sd35m preset (16) so the default config fits
    conn_width: int = 32
    conn_layers: int = 2
    conn_heads: int = 16
    n_query: int = 5
    clip_l: int = 16
    clip_g: int = 32
    t5: int = 64
    pool_heads: int = 16
    # A_I
    ai_width: int = 32
    ai_layers: int = 2
    ai_heads: int = 16
    ai_patch: int = 2
    # LLM (Llama layout)
    vocab: int = 48
    hidden: int = 32
    inter: int = 48
    lm_layers: int = 2
    lm_heads: int = 4
    lora_rank: int = 4

    @property
    def dit_width(self) -> int:
        return self.head_dim * self.dit_heads


SD35M_DIMS = TinyDims(  # the official sizes (Sec. 1-4), for shape-only (meta) layouts
    latent_channels=16, patch=2, head_dim=64, dit_heads=24, depth=24, dual_layers=tuple(range(13)),
    pos_side=384, conn_width=1024, conn_layers=8, conn_heads=16, n_query=77, clip_l=768, clip_g=1280,
    t5=4096, pool_heads=16, ai_width=1024, ai_layers=12, ai_heads=16, ai_patch=2, vocab=32000,
    hidden=4096, inter=11008, lm_layers=32, lm_heads=32, lora_rank=16,
)


def meta_rand() -> "_Rand":
    return _Rand(None)


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _Rand:
    """Random tensors; seed None gives meta tensors (shapes only, for full-size layouts)."""

    def __init__(self, seed: int | None):
        self.gen = None if seed is None else _g(seed)

    def w(self, *shape, std: float = 0.2) -> torch.Tensor:
        if len(shape) == 1 and shape[0] == ():
            shape = ()
        if self.gen is None:
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=self.gen) * std

    def norm(self, n: int) -> torch.Tensor:
        if self.gen is None:
            return torch.empty(n, device="meta")
        return 1.0 + 0.1 * torch.randn(n, generator=self.gen)


def mmditx_state(d: TinyDims, r: _Rand, with_pos_embed: bool = True) -> dict[str, torch.Tensor]:
    """Un-prefixed MMDiT-X keys (Sec. 4.2)."""
    W, p, c = d.dit_width, d.patch, d.latent_channels
    s = {
        "x_embedder.proj.weight": r.w(W, c, p, p), "x_embedder.proj.bias": r.w(W),
        "t_embedder.mlp.0.weight": r.w(W, 256), "t_embedder.mlp.0.bias": r.w(W),
        "t_embedder.mlp.2.weight": r.w(W, W), "t_embedder.mlp.2.bias": r.w(W),
        "y_embedder.mlp.0.weight": r.w(W, d.clip_l + d.clip_g), "y_embedder.mlp.0.bias": r.w(W),
        "y_embedder.mlp.2.weight": r.w(W, W), "y_embedder.mlp.2.bias": r.w(W),
        "context_embedder.weight": r.w(W, d.t5), "context_embedder.bias": r.w(W),
        "final_layer.linear.weight": r.w(p * p * c, W), "final_layer.linear.bias": r.w(p * p * c),
        "final_layer.adaLN_modulation.1.weight": r.w(2 * W, W), "final_layer.adaLN_modulation.1.bias": r.w(2 * W),
    }
    if with_pos_embed:
        s["pos_embed"] = r.w(1, d.pos_side**2, W)
    for i in range(d.depth):
        last = i == d.depth - 1
        for blk in ("x_block", "context_block"):
            pre = f"joint_blocks.{i}.{blk}."
            s[pre + "attn.qkv.weight"] = r.w(3 * W, W)
            s[pre + "attn.qkv.bias"] = r.w(3 * W)
            s[pre + "attn.ln_q.weight"] = r.norm(d.head_dim)
            s[pre + "attn.ln_k.weight"] = r.norm(d.head_dim)
            pre_only = blk == "context_block" and last
            if not pre_only:
                s[pre + "attn.proj.weight"] = r.w(W, W)
                s[pre + "attn.proj.bias"] = r.w(W)
                s[pre + "mlp.fc1.weight"] = r.w(4 * W, W)
                s[pre + "mlp.fc1.bias"] = r.w(4 * W)
                s[pre + "mlp.fc2.weight"] = r.w(W, 4 * W)
                s[pre + "mlp.fc2.bias"] = r.w(W)
            chunks = 2 if pre_only else (9 if blk == "x_block" and i in d.dual_layers else 6)
            s[pre + "adaLN_modulation.1.weight"] = r.w(chunks * W, W)
            s[pre + "adaLN_modulation.1.bias"] = r.w(chunks * W)
            if blk == "x_block" and i in d.dual_layers:
                s[pre + "attn2.qkv.weight"] = r.w(3 * W, W)
                s[pre + "attn2.qkv.bias"] = r.w(3 * W)
                s[pre + "attn2.ln_q.weight"] = r.norm(d.head_dim)
                s[pre + "attn2.ln_k.weight"] = r.norm(d.head_dim)
                s[pre + "attn2.proj.weight"] = r.w(W, W)
                s[pre + "attn2.proj.bias"] = r.w(W)
    return s


def qformer_state(d: TinyDims, r: _Rand) -> dict[str, torch.Tensor]:
    """Official QFormer keys (Sec. 1.2)."""
    D, H = d.conn_width, d.hidden
    s = {
        "input_norm.weight": r.norm(H), "input_norm.bias": r.w(H),
        "input_proj.weight": r.w(D, H), "input_proj.bias": r.w(D),
        "query_tokens": r.w(1, d.n_query, D, std=1.0),
    }
    for i in range(d.conn_layers):
        pre = f"transformer.{i}."
        for att in ("self_attn", "cross_attn"):
            s[pre + att + ".in_proj_weight"] = r.w(3 * D, D)
            s[pre + att + ".in_proj_bias"] = r.w(3 * D)
            s[pre + att + ".out_proj.weight"] = r.w(D, D)
            s[pre + att + ".out_proj.bias"] = r.w(D)
        for n in ("norm1", "norm2", "norm3"):
            s[pre + n + ".weight"] = r.norm(D)
            s[pre + n + ".bias"] = r.w(D)
        s[pre + "mlp.0.weight"] = r.w(4 * D, D)
        s[pre + "mlp.0.bias"] = r.w(4 * D)
        s[pre + "mlp.2.weight"] = r.w(D, 4 * D)
        s[pre + "mlp.2.bias"] = r.w(D)
    for name, out in (("clip_g", d.clip_g), ("clip_l", d.clip_l), ("t5_xxl", d.t5)):
        s[f"{name}_proj.ln.weight"] = r.norm(D)
        s[f"{name}_proj.ln.bias"] = r.w(D)
        s[f"{name}_proj.fc1.weight"] = r.w(2 * D, D)
        s[f"{name}_proj.fc2.weight"] = r.w(out, 2 * D)
        s[f"{name}_proj.gamma"] = r.w(()) + 1.0
    for name, e in (("clip_g", d.clip_g), ("clip_l", d.clip_l)):
        s[f"{name}_pool.query_token"] = r.w(1, 1, e, std=1.0)
        s[f"{name}_pool.attn.in_proj_weight"] = r.w(3 * e, e)
        s[f"{name}_pool.attn.in_proj_bias"] = r.w(3 * e)
        s[f"{name}_pool.attn.out_proj.weight"] = r.w(e, e)
        s[f"{name}_pool.attn.out_proj.bias"] = r.w(e)
        s[f"{name}_norm.weight"] = r.norm(e)
        s[f"{name}_norm.bias"] = r.w(e)
        s[f"{name}_line"] = r.w(e, e, std=0.3)
    return s


A_I_GLOBAL_HEAD_KEYS = ("attn_pool.query_token", "attn_pool.attn.in_proj_weight", "attn_pool.attn.in_proj_bias",
                        "attn_pool.attn.out_proj.weight", "attn_pool.attn.out_proj.bias",
                        "global_norm.weight", "global_norm.bias", "global_proj")


def abstractor_state(d: TinyDims, r: _Rand, global_head: bool = True) -> dict[str, torch.Tensor]:
    """`tgt_abstractor.*` without the prefix (Sec. 2.2); the global head is unused by RAR."""
    W = d.ai_width
    s = {
        "conv1.weight": r.w(W, d.latent_channels, d.ai_patch, d.ai_patch),
        "ln_pre.weight": r.norm(W), "ln_pre.bias": r.w(W),
    }
    for j in range(d.ai_layers):
        pre = f"local_attn.resblocks.{j}."
        s[pre + "attn.in_proj_weight"] = r.w(3 * W, W)
        s[pre + "attn.in_proj_bias"] = r.w(3 * W)
        s[pre + "attn.out_proj.weight"] = r.w(W, W)
        s[pre + "attn.out_proj.bias"] = r.w(W)
        s[pre + "ln_1.weight"] = r.norm(W)
        s[pre + "ln_1.bias"] = r.w(W)
        s[pre + "mlp.c_fc.weight"] = r.w(4 * W, W)
        s[pre + "mlp.c_fc.bias"] = r.w(4 * W)
        s[pre + "mlp.c_proj.weight"] = r.w(W, 4 * W)
        s[pre + "mlp.c_proj.bias"] = r.w(W)
        s[pre + "ln_2.weight"] = r.norm(W)
        s[pre + "ln_2.bias"] = r.w(W)
    if global_head:
        s.update({
            "attn_pool.query_token": r.w(1, 1, W), "attn_pool.attn.in_proj_weight": r.w(3 * W, W),
            "attn_pool.attn.in_proj_bias": r.w(3 * W), "attn_pool.attn.out_proj.weight": r.w(W, W),
            "attn_pool.attn.out_proj.bias": r.w(W), "global_norm.weight": r.norm(W),
            "global_norm.bias": r.w(W), "global_proj": r.w(W, 24),
        })
    return s


def lora_key(i: int, proj: str, ab: str) -> str:
    return f"llm.base_model.model.model.layers.{i}.self_attn.{proj}.lora_{ab}.default.weight"


def lora_state(d: TinyDims, r: _Rand, layers=None) -> dict[str, torch.Tensor]:
    """peft 'default' adapter keys of the DepictQA module (Sec. 3.5); B is non-zero (trained)."""
    s = {}
    for i in (range(d.lm_layers) if layers is None else layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            s[lora_key(i, proj, "A")] = r.w(d.lora_rank, d.hidden)
            s[lora_key(i, proj, "B")] = r.w(d.hidden, d.lora_rank)
    return s


def llama_state(d: TinyDims, r: _Rand, inv_freq: bool = True) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM keys, as in the vicuna-7b-v1.5 folder (incl. the old inv_freq buffers)."""
    H, I = d.hidden, d.inter
    s = {"model.embed_tokens.weight": r.w(d.vocab, H, std=1.0), "model.norm.weight": r.norm(H),
         "lm_head.weight": r.w(d.vocab, H)}
    for i in range(d.lm_layers):
        pre = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            s[pre + f"self_attn.{proj}.weight"] = r.w(H, H)
        s[pre + "mlp.gate_proj.weight"] = r.w(I, H)
        s[pre + "mlp.up_proj.weight"] = r.w(I, H)
        s[pre + "mlp.down_proj.weight"] = r.w(H, I)
        s[pre + "input_layernorm.weight"] = r.norm(H)
        s[pre + "post_attention_layernorm.weight"] = r.norm(H)
        if inv_freq:
            hd = H // d.lm_heads
            s[pre + "self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    return s


def tiny_tokenizer_json(vocab: int) -> str:
    """A small word-level `tokenizers` JSON with Llama's special tokens at ids 0/1/2."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>", "Image", "A", "B", "Noise", "Blur", "Haze", "Rain", ":", "?", "."]
    words += [f"w{i}" for i in range(vocab - 8 - len(words))]  # room for tokens rar_core may add
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


def write_llm_folder(path: Path, d: TinyDims, state: dict[str, torch.Tensor], fmt: str = "bin") -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": d.hidden,
        "intermediate_size": d.inter, "num_attention_heads": d.lm_heads, "num_key_value_heads": d.lm_heads,
        "num_hidden_layers": d.lm_layers, "rms_norm_eps": 1e-5, "vocab_size": d.vocab,
        "max_position_embeddings": 128, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
        "tie_word_embeddings": False, "hidden_act": "silu",
    }))
    (path / "tokenizer.json").write_text(tiny_tokenizer_json(d.vocab))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False,
    }))
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    index = {}
    for n, part in enumerate(halves, start=1):
        if fmt == "bin":
            name = f"pytorch_model-{n:05d}-of-00002.bin"
            torch.save({k: state[k] for k in part}, path / name)
        else:
            name = f"model-{n:05d}-of-00002.safetensors"
            save_file({k: state[k].contiguous() for k in part}, str(path / name))
        index.update({k: name for k in part})
    idx_name = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    (path / idx_name).write_text(json.dumps({"metadata": {}, "weight_map": index}))


@dataclass
class FixtureRelease:
    root: Path
    dims: TinyDims
    files: dict[str, Path]
    # what the official load order ends with (official key names, un-prefixed per module)
    dit: dict[str, torch.Tensor]
    connector: dict[str, torch.Tensor]
    a_i: dict[str, torch.Tensor]  # local path only (no global head)
    vision_proj: dict[str, torch.Tensor]
    lora: dict[str, torch.Tensor]  # lora_key(...) -> tensor
    llm: dict[str, torch.Tensor]  # vicuna weights (without inv_freq)
    raw: dict[str, dict] = field(default_factory=dict)  # file role -> the dict written

    def config(self):
        """RARConfig with the tiny head counts (not inferable from shapes)."""
        import dataclasses

        from rar_core.config import RARConfig

        cfg = RARConfig.preset("sd35m")
        d = self.dims
        cfg.connector = dataclasses.replace(cfg.connector, heads=d.conn_heads, pool_heads=d.pool_heads)
        cfg.adapter = dataclasses.replace(cfg.adapter, heads=d.ai_heads)
        return cfg

    def lora_scale(self, alpha: float = 16.0) -> float:
        return alpha / self.dims.lora_rank


def build_release(root: Path, dims: TinyDims | None = None, *, seed: int = 0, llm_format: str = "bin",
                  e2e: str = "weight", layered: bool = True, optional_files: bool = True) -> FixtureRelease:
    """Write a tiny official-layout release under `root` (the RAR_modelzoo folder).

    e2e: "weight" -> RAR/checkpoints/epoch_5_step_60506_weight.pth ({"state_dict": trainable});
         "latest" -> RAR/checkpoints/latest.pth, a full resume checkpoint (all weights incl. the
         frozen LLM under peft names and pos_embed, plus epoch/optimizer/scheduler/rng_state with
         numpy RNG state).
    layered: the later files cover only part of the keys (see module docstring).
    optional_files: write the backbone, connector and LQA-chain files.
    """
    d = dims or TinyDims()
    root = Path(root)
    files: dict[str, Path] = {}
    raw: dict[str, dict] = {}

    # base SD3.5-M single file: DiT + a VAE key + a text-encoder key
    base_dit = mmditx_state(d, _Rand(seed + 1))
    base = {f"model.diffusion_model.{k}": v for k, v in base_dit.items()}
    base["first_stage_model.decoder.conv_in.weight"] = _Rand(seed + 2).w(8, d.latent_channels, 3, 3)
    base["text_encoders.clip_l.transformer.text_model.final_layer_norm.weight"] = _Rand(seed + 3).norm(8)
    files["base"] = root / "stable-diffusion-3.5-medium" / "sd3.5_medium.safetensors"
    files["base"].parent.mkdir(parents=True, exist_ok=True)
    save_file(base, str(files["base"]))
    raw["base"] = base
    dit = dict(base_dit)

    llm = llama_state(d, _Rand(seed + 4))
    files["llm"] = root / "vicuna-7b-v1.5"
    write_llm_folder(files["llm"], d, llm, llm_format)
    llm = {k: v for k, v in llm.items() if not k.endswith("inv_freq")}

    connector: dict[str, torch.Tensor] = {}
    a_i: dict[str, torch.Tensor] = {}
    vproj: dict[str, torch.Tensor] = {}
    lora: dict[str, torch.Tensor] = {}

    if optional_files:
        # UIR backbone: {"state_dict": un-prefixed MMDiT-X, with a pos_embed the loader deletes}
        bb = mmditx_state(d, _Rand(seed + 5))
        if layered:
            bb = {k: v for k, v in bb.items() if not k.startswith("x_embedder.")}
        files["backbone"] = root / "backbone" / "epoch_100_step_302601.pth"
        files["backbone"].parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": bb}, files["backbone"])
        raw["backbone"] = bb
        dit.update({k: v for k, v in bb.items() if k != "pos_embed"})

        cn = qformer_state(d, _Rand(seed + 6))
        files["connector"] = root / "connector" / "epoch_100_step_19001.pth"
        files["connector"].parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": cn}, files["connector"])
        raw["connector"] = cn
        connector.update(cn)

        # DepictQA DQ495K: LoRA + a CLIP-sized vision_proj + CLIP-side and old-peft keys (skipped)
        r = _Rand(seed + 7)
        dq = lora_state(d, r)
        dq["vision_proj.weight"] = r.w(d.hidden, 24)
        dq["vision_proj.bias"] = r.w(d.hidden)
        dq["visual_hidden_proj.weight"] = r.w(d.hidden, 24)
        dq["llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = r.w(d.lora_rank, d.hidden)
        files["lqa_dq495k"] = root / "DepictQA2-DQ495K" / "ckpt.pt"
        files["lqa_dq495k"].parent.mkdir(parents=True, exist_ok=True)
        torch.save(dq, files["lqa_dq495k"])
        raw["lqa_dq495k"] = dq
        lora.update({k: v for k, v in dq.items() if ".default." in k})

        # LQA stage 1: abstractor (with global head) + vision_proj; path without extension
        r = _Rand(seed + 8)
        s1 = {f"tgt_abstractor.{k}": v for k, v in abstractor_state(d, r).items()}
        s1["vision_proj.weight"] = r.w(d.hidden, d.ai_width)
        s1["vision_proj.bias"] = r.w(d.hidden)
        files["lqa_s1"] = root / "LQA" / "s1" / "ckpt_epoch50"
        files["lqa_s1"].parent.mkdir(parents=True, exist_ok=True)
        torch.save(s1, files["lqa_s1"])
        raw["lqa_s1"] = s1
        # LQA stage 2: abstractor + vision_proj + LoRA
        r = _Rand(seed + 9)
        s2 = {f"tgt_abstractor.{k}": v for k, v in abstractor_state(d, r).items()}
        s2["vision_proj.weight"] = r.w(d.hidden, d.ai_width)
        s2["vision_proj.bias"] = r.w(d.hidden)
        s2.update(lora_state(d, r))
        files["lqa_s2"] = root / "LQA" / "s2" / "ckpt" / "ckpt_epoch1.pt"
        files["lqa_s2"].parent.mkdir(parents=True, exist_ok=True)
        torch.save(s2, files["lqa_s2"])
        raw["lqa_s2"] = s2
        for k, v in {**s1, **s2}.items():
            if k.startswith("tgt_abstractor.") and k[len("tgt_abstractor."):] not in A_I_GLOBAL_HEAD_KEYS:
                a_i[k[len("tgt_abstractor."):]] = v
        vproj = {"weight": s2["vision_proj.weight"], "bias": s2["vision_proj.bias"]}
        lora.update({k: v for k, v in s2.items() if k.startswith("llm.")})

    # end-to-end: "model." DiT (no pos_embed), "connector.", "assessment." (LoRA, A_I, vision_proj)
    r = _Rand(seed + 10)
    e_dit = mmditx_state(d, r, with_pos_embed=False)
    e_conn = qformer_state(d, r)
    e_ai = abstractor_state(d, r)
    e_vp = {"weight": r.w(d.hidden, d.ai_width), "bias": r.w(d.hidden)}
    e_lora = lora_state(d, r)
    if layered and optional_files:
        e_dit = {k: v for k, v in e_dit.items() if not k.startswith("joint_blocks.0.")}
        e_conn = {k: v for k, v in e_conn.items() if not k.startswith("transformer.0.")}
        e_vp = {}
        e_lora = {k: v for k, v in e_lora.items() if ".layers.0." not in k}
    sd = {f"model.{k}": v for k, v in e_dit.items()}
    sd.update({f"connector.{k}": v for k, v in e_conn.items()})
    sd.update({f"assessment.tgt_abstractor.{k}": v for k, v in e_ai.items()})
    sd.update({f"assessment.vision_proj.{k}": v for k, v in e_vp.items()})
    sd.update({f"assessment.{k}": v for k, v in e_lora.items()})
    dit.update(e_dit)
    connector.update(e_conn)
    a_i.update({k: v for k, v in e_ai.items() if k not in A_I_GLOBAL_HEAD_KEYS})
    vproj.update(e_vp)
    lora.update(e_lora)
    ckdir = root / "RAR" / "checkpoints"
    ckdir.mkdir(parents=True, exist_ok=True)
    if e2e == "weight":
        files["e2e"] = ckdir / "epoch_5_step_60506_weight.pth"
        torch.save({"state_dict": sd}, files["e2e"])
    elif e2e == "latest":
        full = dict(sd)
        full["model.pos_embed"] = _Rand(seed + 11).w(1, d.pos_side**2, d.dit_width)
        for k, v in llm.items():  # frozen base LLM under peft names
            k2 = k.replace(".self_attn.q_proj.weight", ".self_attn.q_proj.base_layer.weight")
            full[f"assessment.llm.base_model.model.{k2}"] = v
        full["assessment.llm.base_model.model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)
        files["e2e"] = ckdir / "latest.pth"
        torch.save({
            "state_dict": full, "epoch": 5,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
            "scheduler": {"last_epoch": 5},
            "rng_state": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                          "python": (3, tuple(range(5)), None)},
        }, files["e2e"])
    else:
        raise ValueError(e2e)
    raw["e2e"] = sd

    return FixtureRelease(root, d, files, dit, connector, a_i, vproj, lora, llm, raw)
