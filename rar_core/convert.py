"""`rar convert`: the official RAR release -> one comfyui-rar safetensors file.

Source: the public release of "Restore, Assess, Repeat" (GitHub SamsungLabs/RAR, weights on
Hugging Face AaronCIH/RAR_modelzoo). Facts used here (key names, shapes, load order) are listed
in shared/reference/rar-official-layout.md; section numbers below refer to that document.

Output (one file, tensors by prefix):

    uir.transformer.* the restorer UIR, diffusers `SD3Transformer2DModel` names (Sec. 4). The
                      official MMDiT-X names are translated by diffusers' own
                      `convert_sd3_transformer_checkpoint_to_diffusers`.
    connector.*       the quality adapter A_Q (Q-Former), official names unchanged (Sec. 1.2).
    lqa.A_I.*         the image adapter A_I, official `tgt_abstractor.` names (Sec. 2.2) minus the
                      unused global head.
    lqa.vision_proj.* the official `vision_proj` (A_I -> LLM embedding width).
    lqa.lm.*          transformers `LlamaForCausalLM` names, Vicuna-7B-v1.5 with the official LoRA
                      (r=16, alpha=16 on q/k/v/o) merged: W += (alpha / r) * B @ A (Sec. 3.1).

No `codec.*`: the official tier uses the user's SD3.5 VAE (metadata latent_format "sd3").

Load order is the official inference's (Sec. 4.6): SD3.5-M base -> UIR backbone -> A_Q
pre-training -> LQA chain (DepictQA DQ495K, LQA s1, LQA s2) -> end-to-end checkpoint, each later
file overriding the earlier ones. Every source key is accounted for: mapped, ignored by design
(with the reason) or, for the LQA-chain files only, skipped as the official loader skips it (a
name the LQA does not have, or another shape; listed with the reason). Any other key, any missing
key and any shape disagreement fails the conversion with a listing.

Memory: pickled files are opened with torch.load(weights_only=True, mmap=True), safetensors
lazily, and the output is written tensor by tensor, so peak memory is about one tensor, not the
13 GB language model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import struct
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMAT = "comfyui-rar"
FORMAT_VERSION = "1"

# Output key prefixes = the state_dict names of rar_core.model.RAR (codec excluded).
UIR_PREFIX = "uir.transformer."

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
          # the linear layers' weights in fp8 (half of bf16's bytes), the rest in bf16: for ComfyUI,
          # whose layers cast them on the fly (rar_core/operations.py); the CLI widens them at load
          "fp8_e4m3fn": torch.float8_e4m3fn}
FP8_MAX = 448.0  # float8_e4m3fn's largest finite value: saturate rather than overflow to NaN

# Official LoRA hyper-parameters (iqa/config.yaml, Sec. 3.1): only alpha is needed, r is read
# from the tensor shapes.
OFFICIAL_LORA_ALPHA = 16.0
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class ConversionError(RuntimeError):
    """The release cannot be converted; the message lists every offending key or file."""

    def __init__(self, message: str, report: "ConversionReport | None" = None):
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------------------------------------
# Release layout (Sec. 7)


@dataclass
class ReleaseFiles:
    """Paths of the official files, in load order. `None` = optional file not present."""

    base: Path  # stable-diffusion-3.5-medium/sd3.5_medium.safetensors
    backbone: Path | None
    connector: Path | None
    lqa_chain: list[tuple[str, Path]]  # [(role, path)] for DQ495K, s1, s2 that exist
    e2e: Path
    llm_dir: Path  # vicuna-7b-v1.5/
    missing_optional: list[str] = field(default_factory=list)


BASE_FILE = "stable-diffusion-3.5-medium/sd3.5_medium.safetensors"
BACKBONE_FILE = "backbone/epoch_100_step_302601.pth"
CONNECTOR_FILE = "connector/epoch_100_step_19001.pth"
LQA_CHAIN = (
    ("lqa_dq495k", "DepictQA2-DQ495K/ckpt.pt"),
    ("lqa_s1", "LQA/s1/ckpt_epoch50"),  # no extension in the official config
    ("lqa_s2", "LQA/s2/ckpt/ckpt_epoch1.pt"),
)
E2E_FILES = ("RAR/checkpoints/epoch_5_step_60506_weight.pth", "RAR/checkpoints/latest.pth")
LLM_DIR = "vicuna-7b-v1.5"


def _resolve_checkpoint(path: Path) -> Path | None:
    """A file path from the official configs; tolerate a missing extension or a save folder."""
    if path.is_file():
        return path
    for suffix in (".pt", ".pth"):
        if path.with_name(path.name + suffix).is_file():
            return path.with_name(path.name + suffix)
    if path.is_dir():  # the LQA save routine writes <dir>/ckpt.pt
        for name in ("ckpt.pt", "pytorch_model.bin"):
            if (path / name).is_file():
                return path / name
    return None


def _glob_single(root: Path, pattern: str) -> Path | None:
    hits = sorted(root.glob(pattern))
    return hits[0] if len(hits) == 1 else None


def locate_release(release_dir: str | Path, e2e: str | Path | None = None) -> ReleaseFiles:
    """Find the official files under `release_dir` (the RAR_modelzoo folder or its parent).

    Required: the SD3.5-M base file, the end-to-end checkpoint and the vicuna folder. The
    backbone, connector and LQA-chain files are loaded when present (the end-to-end checkpoint
    overrides all their weights, Sec. 4.6) and listed as absent otherwise.
    """
    root = Path(release_dir).expanduser()
    if not root.is_dir():
        raise ConversionError(f"release folder not found: {root}")
    for nested in ("RAR_modelzoo", "checkpoints/RAR_modelzoo"):
        if not (root / BASE_FILE).exists() and (root / nested).is_dir():
            root = root / nested
    problems = []
    missing_optional = []

    base = _resolve_checkpoint(root / BASE_FILE) or _glob_single(root, "stable-diffusion-3.5-medium/*.safetensors")
    if base is None:
        problems.append(f"missing SD3.5-Medium base file: {root / BASE_FILE}")

    if e2e is not None:
        e2e_path = Path(e2e).expanduser()
        if not e2e_path.is_absolute() and not e2e_path.exists():
            e2e_path = root / e2e_path
        e2e_path = _resolve_checkpoint(e2e_path)
        if e2e_path is None:
            problems.append(f"missing end-to-end checkpoint: {e2e}")
    else:
        e2e_path = None
        for rel in E2E_FILES:
            e2e_path = _resolve_checkpoint(root / rel)
            if e2e_path is not None:
                break
        if e2e_path is None:
            problems.append("missing end-to-end checkpoint: one of " + ", ".join(str(root / r) for r in E2E_FILES))

    llm_dir = root / LLM_DIR
    if not (llm_dir / "config.json").is_file():
        problems.append(f"missing language model folder (config.json + weights): {llm_dir}")

    backbone = _resolve_checkpoint(root / BACKBONE_FILE) or _glob_single(root, "backbone/*.pth")
    if backbone is None:
        missing_optional.append(BACKBONE_FILE)
    connector = _resolve_checkpoint(root / CONNECTOR_FILE) or _glob_single(root, "connector/*.pth")
    if connector is None:
        missing_optional.append(CONNECTOR_FILE)
    chain = []
    for role, rel in LQA_CHAIN:
        p = _resolve_checkpoint(root / rel)
        if p is None:
            missing_optional.append(rel)
        else:
            chain.append((role, p))

    if problems:
        raise ConversionError(f"the release folder {root} is incomplete: " + "; ".join(problems))
    return ReleaseFiles(base, backbone, connector, chain, e2e_path, llm_dir, missing_optional)


# ----------------------------------------------------------------------------------------------
# Lazy tensors


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class LazyTensor:
    """A tensor in a checkpoint: its shape now, its values (or some rows) only when asked."""

    def __init__(self, origin: str, shape: tuple[int, ...], dtype: torch.dtype,
                 load: Callable[[], torch.Tensor], rows: Callable[[int, int], torch.Tensor] | None = None):
        self.origin = origin  # "file::key", for messages
        self.shape = tuple(shape)
        self.dtype = dtype
        self._load = load
        self._rows = rows

    def load(self) -> torch.Tensor:
        return self._load()

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if self._rows is not None:
            return self._rows(start, stop)
        return self._load()[start:stop]

    @staticmethod
    def of(t: torch.Tensor, origin: str = "<memory>") -> "LazyTensor":
        return LazyTensor(origin, tuple(t.shape), t.dtype, lambda: t, lambda a, b: t[a:b])


def open_safetensors(path: Path) -> dict[str, LazyTensor]:
    from safetensors import safe_open

    try:
        handle = safe_open(str(path), framework="pt")  # kept open by the closures below
    except Exception as e:  # safetensors raises several types for garbage / truncated headers
        raise ConversionError(f"{path} is not a readable safetensors file ({e})") from e
    out = {}
    for key in handle.keys():
        sl = handle.get_slice(key)
        shape = tuple(sl.get_shape())
        dtype = _ST_DTYPES.get(sl.get_dtype(), torch.float32)

        def load(k=key):
            return handle.get_tensor(k)

        def rows(a, b, k=key, nd=len(shape)):
            if nd == 0:
                return handle.get_tensor(k)
            return handle.get_slice(k)[a:b]

        out[key] = LazyTensor(f"{path.name}::{key}", shape, dtype, load, rows)
    return out


def _torch_load(path: Path):
    """torch.load with weights_only=True (never unpickle code). Memory-mapped when possible.

    The full training checkpoint (`latest.pth`) also stores numpy RNG state; numpy's array
    reconstruction is allow-listed for that case, still under weights_only=True.
    """
    from .checkpoint import is_torch_save

    with open(path, "rb") as f:
        head = f.read(4)
    if not is_torch_save(head):
        raise ConversionError(f"{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle); download it again")

    def attempt(mmap: bool):
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return attempt(True)
        except RuntimeError as e:  # legacy (non-zip) serialization cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            return attempt(False)
    except Exception as first:  # noqa: BLE001 - retried once with numpy allow-listed
        try:
            import numpy as np

            allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            allowed.append(_reconstruct)
            with torch.serialization.safe_globals(allowed):
                try:
                    return attempt(True)
                except RuntimeError as e:
                    if "mmap" not in str(e):
                        raise
                    return attempt(False)
        except Exception:  # noqa: BLE001
            raise ConversionError(
                f"cannot read {path} with torch.load(weights_only=True): {first}\n"
                "This converter never unpickles arbitrary objects. If this is the full training "
                "checkpoint (latest.pth), use the trainable-only RAR/checkpoints/*_weight.pth file "
                "instead (--e2e)."
            ) from first


def open_pickle(path: Path) -> tuple[dict[str, LazyTensor], list[str]]:
    """A torch.save'd checkpoint -> (tensors, ignored top-level entries).

    RAR's own files are {"state_dict": ...} (+ epoch/optimizer/... in resume files); the LQA
    files are flat OrderedDicts of trainable parameters (Sec. 3.5, 4.6).
    """
    obj = _torch_load(path)
    extras: list[str] = []
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        extras = [k for k in obj if k != "state_dict"]
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = LazyTensor.of(value, f"{path.name}::{key}")
    return out, extras


def open_checkpoint(path: Path) -> tuple[dict[str, LazyTensor], list[str]]:
    if not path.is_file():
        raise ConversionError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        return open_safetensors(path), []
    return open_pickle(path)


# ----------------------------------------------------------------------------------------------
# Report


@dataclass
class SourceReport:
    role: str
    path: str
    mapped: int = 0
    ignored: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys (official skip)
    unmatched: list[str] = field(default_factory=list)

    def ignore(self, reason: str, key: str) -> None:
        self.ignored.setdefault(reason, []).append(key)

    def skip(self, reason: str, key: str) -> None:
        self.skipped.setdefault(reason, []).append(key)


@dataclass
class ConversionReport:
    sources: list[SourceReport] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "<module>: key (reason)"
    shape_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outputs: dict[str, int] = field(default_factory=dict)  # output prefix -> tensor count

    def source(self, role: str, path: Path | str) -> SourceReport:
        rep = SourceReport(role, str(path))
        self.sources.append(rep)
        return rep

    @property
    def unmatched(self) -> list[str]:
        return [f"{s.role} ({Path(s.path).name}): {k}" for s in self.sources for k in s.unmatched]

    @property
    def ok(self) -> bool:
        return not (self.unmatched or self.missing or self.shape_errors)

    def format(self, max_keys: int = 20) -> str:
        def listing(keys: list[str]) -> str:
            shown = ", ".join(keys[:max_keys])
            return shown + (f", ... (+{len(keys) - max_keys} more)" if len(keys) > max_keys else "")

        lines = ["RAR conversion report"]
        for s in self.sources:
            if isinstance(s, _Unmatched) and not s.unmatched:
                continue
            lines.append(f"  [{s.role}] {s.path}: {s.mapped} mapped")
            for reason, keys in s.ignored.items():
                lines.append(f"      ignored by design ({reason}): {len(keys)} keys")
            for reason, keys in s.skipped.items():
                lines.append(f"      skipped as by the official loader ({reason}): {len(keys)}: {listing(keys)}")
            if s.unmatched:
                lines.append(f"      UNMATCHED: {len(s.unmatched)}: {listing(s.unmatched)}")
        if self.outputs:
            lines.append("  output: " + ", ".join(f"{k} {n} tensors" for k, n in self.outputs.items()))
        for note in self.notes:
            lines.append(f"  note: {note}")
        if self.missing:
            lines.append(f"  MISSING ({len(self.missing)}): {listing(self.missing)}")
        if self.shape_errors:
            lines.append(f"  WRONG SHAPE ({len(self.shape_errors)}): {listing(self.shape_errors)}")
        lines.append("  result: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise ConversionError("conversion failed:\n" + self.format(max_keys=50), self)


# ----------------------------------------------------------------------------------------------
# Key classification per module (pure functions on key names)

# A_I: the "local" feature path is used; the global head is never run (Sec. 2.2, 2.3).
A_I_GLOBAL_HEAD = re.compile(r"^(attn_pool\.|global_norm\.|global_proj$)")
LORA_KEY = re.compile(
    r"^llm\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.([qkvo]_proj)\.lora_([AB])\.default\.weight$"
)


def classify_lqa_key(key: str) -> tuple[str, str | None]:
    """A DepictQA-module key (no outer prefix) -> (kind, target).

    kinds: "a_i" (target = A_I key), "vision_proj", "lora" (target = "i.proj.A|B"),
    "ignore" (target = reason), "unknown".
    """
    if key.startswith("tgt_abstractor."):
        sub = key[len("tgt_abstractor."):]
        if A_I_GLOBAL_HEAD.match(sub):
            return "ignore", "A_I global head, unused with local features"
        return "a_i", sub
    if key in ("vision_proj.weight", "vision_proj.bias"):
        return "vision_proj", key[len("vision_proj."):]
    m = LORA_KEY.match(key)
    if m:
        return "lora", f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
    if key.startswith("llm.base_model.model.") and "lora_" not in key:
        return "ignore", "frozen base LLM weights, taken from the vicuna folder"
    if key.startswith(("tgt_vision_encoder.", "vision_encoder.")):
        return "ignore", "vision encoder, not used with latent input"
    return "unknown", None


def classify_e2e_key(key: str) -> tuple[str, str]:
    """End-to-end checkpoint key -> (module, key inside the module) for 'model.', 'connector.', 'assessment.'."""
    for prefix, module in (("model.", "dit"), ("connector.", "connector"), ("assessment.", "lqa")):
        if key.startswith(prefix):
            return module, key[len(prefix):]
    return "unknown", key


def classify_llm_key(key: str) -> str:
    """Vicuna (HF Llama) key -> "map" | "ignore"."""
    if key.endswith("rotary_emb.inv_freq"):
        return "ignore"
    return "map"


# ----------------------------------------------------------------------------------------------
# Expected shapes per module, from sizes inferred from the tensors


def connector_shapes(d: int, layers: int, in_ch: int, n_query: int, dims: Mapping[str, int],
                     mlp: int, head_hidden: int) -> dict[str, tuple[int, ...]]:
    """Official QFormer state_dict (Sec. 1.2). dims: {"clip_g": 1280, "clip_l": 768, "t5_xxl": 4096}."""
    s: dict[str, tuple[int, ...]] = {
        "input_norm.weight": (in_ch,), "input_norm.bias": (in_ch,),
        "input_proj.weight": (d, in_ch), "input_proj.bias": (d,),
        "query_tokens": (1, n_query, d),
    }
    for i in range(layers):
        p = f"transformer.{i}."
        for att in ("self_attn", "cross_attn"):
            s[p + att + ".in_proj_weight"] = (3 * d, d)
            s[p + att + ".in_proj_bias"] = (3 * d,)
            s[p + att + ".out_proj.weight"] = (d, d)
            s[p + att + ".out_proj.bias"] = (d,)
        for n in ("norm1", "norm2", "norm3"):
            s[p + n + ".weight"] = (d,)
            s[p + n + ".bias"] = (d,)
        s[p + "mlp.0.weight"] = (mlp, d)
        s[p + "mlp.0.bias"] = (mlp,)
        s[p + "mlp.2.weight"] = (d, mlp)
        s[p + "mlp.2.bias"] = (d,)
    for name, out in dims.items():
        p = f"{name}_proj."
        s[p + "ln.weight"] = (d,)
        s[p + "ln.bias"] = (d,)
        s[p + "fc1.weight"] = (head_hidden, d)
        s[p + "fc2.weight"] = (out, head_hidden)
        s[p + "gamma"] = ()
    for name in ("clip_g", "clip_l"):
        e = dims[name]
        s[f"{name}_pool.query_token"] = (1, 1, e)
        s[f"{name}_pool.attn.in_proj_weight"] = (3 * e, e)
        s[f"{name}_pool.attn.in_proj_bias"] = (3 * e,)
        s[f"{name}_pool.attn.out_proj.weight"] = (e, e)
        s[f"{name}_pool.attn.out_proj.bias"] = (e,)
        s[f"{name}_norm.weight"] = (e,)
        s[f"{name}_norm.bias"] = (e,)
        s[f"{name}_line"] = (e, e)
    return s


def a_i_shapes(width: int, in_ch: int, patch: int, layers: int, mlp: int) -> dict[str, tuple[int, ...]]:
    """Official `tgt_abstractor.` local path (Sec. 2.2), without the unused global head."""
    s: dict[str, tuple[int, ...]] = {
        "conv1.weight": (width, in_ch, patch, patch),
        "ln_pre.weight": (width,), "ln_pre.bias": (width,),
    }
    for j in range(layers):
        p = f"local_attn.resblocks.{j}."
        s[p + "attn.in_proj_weight"] = (3 * width, width)
        s[p + "attn.in_proj_bias"] = (3 * width,)
        s[p + "attn.out_proj.weight"] = (width, width)
        s[p + "attn.out_proj.bias"] = (width,)
        for n in ("ln_1", "ln_2"):
            s[p + n + ".weight"] = (width,)
            s[p + n + ".bias"] = (width,)
        s[p + "mlp.c_fc.weight"] = (mlp, width)
        s[p + "mlp.c_fc.bias"] = (mlp,)
        s[p + "mlp.c_proj.weight"] = (width, mlp)
        s[p + "mlp.c_proj.bias"] = (width,)
    return s


def llama_shapes(vocab: int, hidden: int, inter: int, layers: int, kv_dim: int,
                 tie_word_embeddings: bool = False) -> dict[str, tuple[int, ...]]:
    """transformers LlamaForCausalLM state_dict (no biases: Llama/Vicuna has none)."""
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not tie_word_embeddings:
        s["lm_head.weight"] = (vocab, hidden)
    for i in range(layers):
        p = f"model.layers.{i}."
        s[p + "self_attn.q_proj.weight"] = (hidden, hidden)
        s[p + "self_attn.k_proj.weight"] = (kv_dim, hidden)
        s[p + "self_attn.v_proj.weight"] = (kv_dim, hidden)
        s[p + "self_attn.o_proj.weight"] = (hidden, hidden)
        s[p + "mlp.gate_proj.weight"] = (inter, hidden)
        s[p + "mlp.up_proj.weight"] = (inter, hidden)
        s[p + "mlp.down_proj.weight"] = (hidden, inter)
        s[p + "input_layernorm.weight"] = (hidden,)
        s[p + "post_attention_layernorm.weight"] = (hidden,)
    return s


def _layer_count(keys, prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _shape(tensors: Mapping[str, LazyTensor], key: str, module: str) -> tuple[int, ...]:
    if key not in tensors:
        raise ConversionError(f"{module}: cannot infer sizes, key {key!r} is missing from every source file")
    return tensors[key].shape


def infer_connector(tensors: Mapping[str, LazyTensor]) -> dict:
    m = "connector"
    d, in_ch = _shape(tensors, "input_proj.weight", m)
    return dict(
        hidden_dim=d, in_ch=in_ch, layers=_layer_count(tensors, "transformer."),
        num_query_tokens=_shape(tensors, "query_tokens", m)[1],
        dims={n: _shape(tensors, f"{n}_proj.fc2.weight", m)[0] for n in ("clip_g", "clip_l", "t5_xxl")},
        mlp=_shape(tensors, "transformer.0.mlp.0.weight", m)[0],
        head_hidden=_shape(tensors, "clip_g_proj.fc1.weight", m)[0],
    )


def infer_a_i(tensors: Mapping[str, LazyTensor]) -> dict:
    w, in_ch, k, _ = _shape(tensors, "conv1.weight", "A_I")
    return dict(width=w, in_ch=in_ch, patch=k, layers=_layer_count(tensors, "local_attn.resblocks."),
                mlp=_shape(tensors, "local_attn.resblocks.0.mlp.c_fc.weight", "A_I")[0])


def check_shapes(module: str, tensors: Mapping[str, LazyTensor], expected: Mapping[str, tuple[int, ...]],
                 report: ConversionReport, unmatched_to: SourceReport | None = None) -> None:
    """Every expected key present with its shape; keys not expected go to `unmatched_to`."""
    for key, shape in expected.items():
        if key not in tensors:
            report.missing.append(f"{module}: {key}")
        elif tuple(tensors[key].shape) != tuple(shape):
            report.shape_errors.append(
                f"{module}: {key} is {list(tensors[key].shape)} ({tensors[key].origin}), expected {list(shape)}"
            )
    if unmatched_to is not None:
        for key in tensors:
            if key not in expected:
                unmatched_to.unmatched.append(f"{key} (from {tensors[key].origin})")


# ----------------------------------------------------------------------------------------------
# Load-order merge


def merge_override(target: dict[str, LazyTensor], key: str, value: LazyTensor, module: str,
                   report: ConversionReport) -> None:
    """Later files override earlier ones (official load order); a shape change is an error.

    The official loaders of the UIR, A_Q and end-to-end files load strictly by shape; between
    those files such a change means a broken or foreign file, so it fails here. (The LQA chain is
    resolved apart, see `resolve_lqa_chain`.)
    """
    old = target.get(key)
    if old is not None and tuple(old.shape) != tuple(value.shape):
        report.shape_errors.append(
            f"{module}: {key} is {list(value.shape)} in {value.origin} but {list(old.shape)} in {old.origin}"
        )
        return
    target[key] = value


@dataclass
class ChainTensor:
    """One LQA-chain tensor awaiting the LQA's shapes (kind/target as `classify_lqa_key`)."""

    kind: str
    target: str
    tensor: LazyTensor
    report: SourceReport
    key: str  # the source key, for the report


def resolve_lqa_chain(items: list[ChainTensor], dests: Mapping[str, dict[str, LazyTensor]],
                      expected: Mapping[str, Mapping[str, tuple[int, ...]]]) -> None:
    """The official `load_pretrained_weights` on the chain DepictQA -> s1 -> s2 (Sec. 3.5).

    A tensor is loaded only if the LQA has a parameter of that name and shape; any other is skipped
    and listed with the reason. Later chain files override earlier ones; the strictly loaded
    end-to-end values already in `dests` override them all.
    """
    strict = {kind: set(d) for kind, d in dests.items()}
    for it in items:
        want = expected[it.kind].get(it.target)
        if want is None:
            it.report.skip("not a RAR LQA parameter", it.key)
        elif tuple(it.tensor.shape) != tuple(want):
            it.report.skip("shape differs from the RAR LQA parameter",
                           f"{it.key} {list(it.tensor.shape)}, expected {list(want)}")
        else:
            it.report.mapped += 1
            if it.target not in strict[it.kind]:
                dests[it.kind][it.target] = it.tensor


def lora_shapes(lm_expected: Mapping[str, tuple[int, ...]], layers: int, rank: int | None) -> dict[str, tuple[int, ...]]:
    """LoRA A [r, in] and B [out, r] of every target projection ("i.proj.A|B" keys)."""
    if rank is None:
        return {}
    s = {}
    for i in range(layers):
        for proj in LORA_TARGETS:
            out_f, in_f = lm_expected[f"model.layers.{i}.self_attn.{proj}.weight"]
            s[f"{i}.{proj}.A"], s[f"{i}.{proj}.B"] = (rank, in_f), (out_f, rank)
    return s


def _infer(fn, strict: Mapping[str, LazyTensor], chain: Mapping[str, LazyTensor]) -> dict:
    """Sizes from the strictly loaded tensors when they suffice (a chain file's stray key must not
    change the model, as it cannot in the official code), else with the chain's tensors added."""
    try:
        return fn(strict)
    except ConversionError:
        return fn({**chain, **strict})


# ----------------------------------------------------------------------------------------------
# DiT (UIR): diffusers' converter, run on row-index tensors so nothing is loaded to plan


@dataclass
class Segment:
    source: LazyTensor
    start: int
    stop: int


def sd3_to_diffusers_plan(shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, tuple[list[tuple[str, int, int]], tuple[int, ...]]], list[str]]:
    """MMDiT-X key shapes -> ({diffusers key: ([(mmdit key, row0, row1)], shape)}, unused keys).

    Every operation in diffusers' `convert_sd3_transformer_checkpoint_to_diffusers` (rename,
    chunk along dim 0 for q/k/v, scale/shift swap along dim 0) acts on whole rows, so running it
    on one int64 row-id vector per tensor tells exactly which source rows land where, without
    reading a single weight. Keys the converter never consumes are returned as unused.
    """
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    ids: dict[str, torch.Tensor] = {}
    starts: list[tuple[int, str]] = []
    offset = 0
    for key, shape in shapes.items():
        if len(shape) == 0:
            raise ConversionError(f"UIR: unexpected scalar tensor {key!r}")
        ids[key] = torch.arange(offset, offset + shape[0])
        starts.append((offset, key))
        offset += shape[0]
    pending = dict(ids)
    try:
        converted = convert_sd3_transformer_checkpoint_to_diffusers(pending)
    except KeyError as e:
        raise ConversionError(f"UIR: key {e.args[0]!r} required by diffusers' SD3 converter is missing") from e
    except IndexError as e:
        raise ConversionError("UIR: no joint_blocks.* tensors found") from e
    unused = sorted(pending)
    bounds = torch.tensor([s for s, _ in starts])
    names = [k for _, k in starts]
    plan = {}
    for out_key, rows in converted.items():
        rows = rows.reshape(-1).tolist()
        segs: list[tuple[str, int, int]] = []
        for r in rows:
            src_i = int(torch.searchsorted(bounds, r, right=True)) - 1
            src, local = names[src_i], r - starts[src_i][0]
            if segs and segs[-1][0] == src and segs[-1][2] == local:
                segs[-1] = (src, segs[-1][1], local + 1)
            else:
                segs.append((src, local, local + 1))
        first = shapes[segs[0][0]]
        plan[out_key] = (segs, (len(rows), *first[1:]))
    return plan, unused


def infer_uir(shapes: Mapping[str, tuple[int, ...]]) -> dict:
    """SD3Transformer2DModel sizes from MMDiT-X shapes (as the official load_mmdit, Sec. 4.1)."""
    m = "UIR"

    def shp(k):
        if k not in shapes:
            raise ConversionError(f"{m}: cannot infer sizes, key {k!r} is missing")
        return shapes[k]

    width, in_ch, patch, _ = shp("x_embedder.proj.weight")
    has_qk = "joint_blocks.0.x_block.attn.ln_q.weight" in shapes
    head_dim = shp("joint_blocks.0.x_block.attn.ln_q.weight")[0] if has_qk else 64
    pos = shp("pos_embed")
    side = int(math.isqrt(pos[1]))
    if side * side != pos[1]:
        raise ConversionError(f"{m}: pos_embed has {pos[1]} positions, not a square grid")
    dual = sorted({int(k.split(".")[1]) for k in shapes if k.startswith("joint_blocks.") and ".attn2." in k})
    return dict(
        patch_size=patch, in_channels=in_ch, width=width,
        num_layers=_layer_count(shapes, "joint_blocks."), attention_head_dim=head_dim,
        num_attention_heads=width // head_dim, pos_embed_max_size=side,
        dual_attention_layers=tuple(dual), qk_norm="rms_norm" if has_qk else None,
        joint_attention_dim=shp("context_embedder.weight")[1],
        pooled_projection_dim=shp("y_embedder.mlp.0.weight")[1],
        out_channels=shp("final_layer.linear.weight")[0] // (patch * patch),
    )


def diffusers_uir_kwargs(u: Mapping) -> dict:
    return dict(
        patch_size=u["patch_size"], in_channels=u["in_channels"], num_layers=u["num_layers"],
        attention_head_dim=u["attention_head_dim"], num_attention_heads=u["num_attention_heads"],
        joint_attention_dim=u["joint_attention_dim"], caption_projection_dim=u["width"],
        pooled_projection_dim=u["pooled_projection_dim"], out_channels=u["out_channels"],
        pos_embed_max_size=u["pos_embed_max_size"], dual_attention_layers=tuple(u["dual_attention_layers"]),
        qk_norm=u["qk_norm"],
    )


def diffusers_reference_shapes(kwargs: Mapping) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of a diffusers SD3Transformer2DModel built on the meta device."""
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        model = SD3Transformer2DModel(**kwargs)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# LoRA merge


def merge_lora(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, alpha: float) -> torch.Tensor:
    """W' = W + (alpha / r) * B @ A (peft's merge for a Linear), computed in fp32."""
    r = lora_a.shape[0]
    if lora_b.shape[1] != r or lora_a.shape[1] != weight.shape[1] or lora_b.shape[0] != weight.shape[0]:
        raise ConversionError(
            f"LoRA shapes do not fit: W {list(weight.shape)}, A {list(lora_a.shape)}, B {list(lora_b.shape)}"
        )
    return weight.float() + (alpha / r) * (lora_b.float() @ lora_a.float())


# ----------------------------------------------------------------------------------------------
# Language model folder


def open_llm_folder(llm_dir: Path) -> tuple[dict[str, LazyTensor], dict, list[str]]:
    """Vicuna HF folder -> (tensors, config.json, shard file names). Prefers safetensors shards."""
    config = json.loads(_read_text(llm_dir / "config.json"))
    shards = sorted(llm_dir.glob("*.safetensors"))
    opener = open_safetensors
    if not shards:
        shards = sorted(p for p in llm_dir.glob("pytorch_model*.bin"))
        opener = lambda p: open_pickle(p)[0]  # noqa: E731
    if not shards:
        raise ConversionError(f"no weights (*.safetensors or pytorch_model*.bin) in {llm_dir}")
    tensors: dict[str, LazyTensor] = {}
    for shard in shards:
        for k, v in opener(shard).items():
            if k in tensors:
                raise ConversionError(f"{llm_dir}: key {k!r} appears in two shards")
            tensors[k] = v
    return tensors, config, [s.name for s in shards]


def _read_text(path: Path) -> str:
    """A text file of the release (JSON); a garbage one is named, with the reason, in one line."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            json.loads(text)
        return text
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path} is not a readable JSON file ({e}); download it again") from e


def tokenizer_json(llm_dir: Path) -> str:
    """The Llama tokenizer as a `tokenizers` JSON string (transformers' fast tokenizer), made to
    split text as the official slow tokenizer does (`match_slow_llama`).

    Uses the folder's tokenizer.json when present; otherwise converts the sentencepiece
    tokenizer.model with transformers (needs the `sentencepiece`/`protobuf` packages).
    """
    cfg_path = llm_dir / "tokenizer_config.json"
    tok_config = json.loads(_read_text(cfg_path)) if cfg_path.is_file() else {}
    if (llm_dir / "tokenizer.json").is_file():
        return match_slow_llama(_read_text(llm_dir / "tokenizer.json"), tok_config)
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(llm_dir), use_fast=True)
        return match_slow_llama(tok.backend_tokenizer.to_str(), tok_config)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(
            f"could not build the fast tokenizer from {llm_dir}: {e}\n"
            "Install the converters' dependencies (pip install sentencepiece protobuf) and retry."
        ) from e


def match_slow_llama(tok_json: str, tok_config: Mapping) -> str:
    """A Llama (sentencepiece BPE) tokenizer JSON that gives the official slow LlamaTokenizer's ids.

    The official code tokenizes each prompt segment with transformers' slow LlamaTokenizer, `</s>`
    written inside the text (Sec. 3.2). That tokenizer cuts the text at special tokens and encodes
    each piece with sentencepiece. With `legacy` (its default when tokenizer_config.json does not
    say) every piece gets sentencepiece's dummy prefix, so " Image" after "</s>" becomes "▁",
    "▁Image"; without it only the start of the text gets one (if `add_prefix_space`, default on).
    Fast tokenizers written by other transformers versions differ here (transformers 5 ignores
    `legacy`: its Metaspace adds no "▁" to a piece that starts with a space), so the splitting is
    set from the config: a Prepend normalizer per piece (legacy) or a Metaspace that prepends to
    the first piece only, with special tokens matched on the raw text as the slow tokenizer does.
    Other tokenizers are returned unchanged.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    if (json.loads(tok_json).get("model", {}).get("type") != "BPE"
            or not str(tok_config.get("tokenizer_class") or "LlamaTokenizer").startswith("Llama")):
        return tok_json
    legacy = tok_config.get("legacy")
    prefix = tok_config.get("add_prefix_space")
    tok = Tokenizer.from_str(tok_json)
    if legacy is None or legacy:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.pre_tokenizer = None
    else:
        tok.normalizer = None
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="never" if prefix is False else "first", split=False)
    out = json.loads(tok.to_str())
    for added in out.get("added_tokens", []):
        added["normalized"] = False
    return json.dumps(out, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------
# Config


def build_config(base, uir: Mapping, conn: Mapping, a_i: Mapping, lm: Mapping):
    """RARConfig (preset sd35m unless given) with every size taken from the tensors."""
    from .config import RARConfig

    cfg = RARConfig.preset("sd35m") if base is None else base
    cfg = dataclasses.replace(cfg)  # shallow copy; sections are replaced below
    cfg.codec = dataclasses.replace(cfg.codec, latent_format="sd3", latent_channels=uir["in_channels"])
    cfg.uir = dataclasses.replace(
        cfg.uir, patch_size=uir["patch_size"], num_layers=uir["num_layers"],
        attention_head_dim=uir["attention_head_dim"], num_attention_heads=uir["num_attention_heads"],
        pos_embed_max_size=uir["pos_embed_max_size"], dual_attention_layers=tuple(uir["dual_attention_layers"]),
        qk_norm=uir["qk_norm"],
    )
    cfg.connector = dataclasses.replace(
        cfg.connector, hidden_dim=conn["hidden_dim"], layers=conn["layers"], num_query_tokens=conn["num_query_tokens"],
        clip_l_dim=conn["dims"]["clip_l"], clip_g_dim=conn["dims"]["clip_g"], t5_dim=conn["dims"]["t5_xxl"],
    )
    cfg.adapter = dataclasses.replace(cfg.adapter, patch=a_i["patch"], width=a_i["width"], layers=a_i["layers"])
    cfg.lm = dataclasses.replace(cfg.lm, **lm)
    return cfg


def _lm_config_fields(hf: Mapping, vocab: int, hidden: int, inter: int, layers: int) -> dict:
    out = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers)
    for ours, theirs in (("num_attention_heads", "num_attention_heads"), ("rms_norm_eps", "rms_norm_eps"),
                         ("max_position_embeddings", "max_position_embeddings"), ("rope_theta", "rope_theta"),
                         ("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        if hf.get(theirs) is not None:
            out[ours] = hf[theirs]
    return out


def check_config_consistency(cfg, uir: Mapping, conn: Mapping, a_i: Mapping, report: ConversionReport) -> None:
    """Cross-module sizes must agree (the modules feed each other) and fit the fixed ratios."""
    problems = []
    lm_h = cfg.lm.hidden_size
    if conn["in_ch"] != lm_h:
        problems.append(f"connector input width {conn['in_ch']} != LLM hidden {lm_h}")
    if uir["joint_attention_dim"] != conn["dims"]["t5_xxl"]:
        problems.append(f"UIR context width {uir['joint_attention_dim']} != connector t5 width {conn['dims']['t5_xxl']}")
    pooled = conn["dims"]["clip_l"] + conn["dims"]["clip_g"]
    if uir["pooled_projection_dim"] != pooled:
        problems.append(f"UIR pooled width {uir['pooled_projection_dim']} != connector clip_l+clip_g {pooled}")
    if conn["dims"]["t5_xxl"] < pooled:
        problems.append("connector t5 width is smaller than clip_l + clip_g (context padding impossible)")
    if a_i["in_ch"] != uir["in_channels"]:
        problems.append(f"A_I input channels {a_i['in_ch']} != latent channels {uir['in_channels']}")
    if uir["out_channels"] != uir["in_channels"]:
        problems.append("UIR output channels differ from input channels")
    for name, width, heads in (("connector", conn["hidden_dim"], cfg.connector.heads),
                               ("A_I", a_i["width"], cfg.adapter.heads),
                               ("connector clip_l pool", conn["dims"]["clip_l"], cfg.connector.pool_heads),
                               ("connector clip_g pool", conn["dims"]["clip_g"], cfg.connector.pool_heads),
                               ("LLM", lm_h, cfg.lm.num_attention_heads)):
        if width % heads:
            problems.append(f"{name} width {width} is not divisible by {heads} heads (config)")
    # rar_core builds these MLPs with fixed ratios (official: 4x, 4x, 2x)
    if conn["mlp"] != 4 * conn["hidden_dim"]:
        problems.append(f"connector MLP width {conn['mlp']} != 4 x {conn['hidden_dim']}")
    if conn["head_hidden"] != 2 * conn["hidden_dim"]:
        problems.append(f"connector head width {conn['head_hidden']} != 2 x {conn['hidden_dim']}")
    if a_i["mlp"] != 4 * a_i["width"]:
        problems.append(f"A_I MLP width {a_i['mlp']} != 4 x {a_i['width']}")
    report.shape_errors.extend(f"sizes: {p}" for p in problems)


# ----------------------------------------------------------------------------------------------
# Streaming safetensors writer


_OUT_CODES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}


@dataclass
class OutTensor:
    key: str
    shape: tuple[int, ...]
    produce: Callable[[], torch.Tensor]


def write_safetensors_streaming(path: Path, tensors: list[OutTensor], dtype: torch.dtype,
                                metadata: Mapping[str, str], fp8: Collection[str] = ()) -> None:
    """Write a safetensors file one tensor at a time (the header is known from the shapes); the
    keys in `fp8` are stored as float8_e4m3fn, the others in `dtype`."""
    def dtype_of(key: str) -> torch.dtype:
        return torch.float8_e4m3fn if key in fp8 else dtype

    header: dict = {"__metadata__": dict(metadata)}
    offset = 0
    for t in tensors:
        d = dtype_of(t.key)
        n = math.prod(t.shape) * torch.empty((), dtype=d).element_size()
        header[t.key] = {"dtype": _OUT_CODES[d], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for t in tensors:
                value = t.produce()
                if tuple(value.shape) != tuple(t.shape):
                    raise ConversionError(f"{t.key}: produced {list(value.shape)}, planned {list(t.shape)}")
                if t.key in fp8:
                    value = value.float().clamp(-FP8_MAX, FP8_MAX)
                value = value.to(dtype_of(t.key)).contiguous().reshape(-1)
                f.write(value.view(torch.uint8).numpy().tobytes())
                del value
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------------------------
# Whole release


@dataclass
class ConversionPlan:
    """Everything decided before a byte is written: output tensors, config, metadata, report."""

    tensors: list[OutTensor]
    config: object  # RARConfig
    metadata: dict[str, str]
    report: ConversionReport


def plan_conversion(files: ReleaseFiles, config=None, lora_alpha: float = OFFICIAL_LORA_ALPHA,
                    lenient_roles: tuple[str, ...] = tuple(r for r, _ in LQA_CHAIN)) -> ConversionPlan:
    """Read every source lazily, merge in official load order, validate, and plan the output.

    `lenient_roles`: files loaded the way the official `load_pretrained_weights` does (keys absent
    from the LQA module or of another shape are skipped and listed): the LQA chain. Every other
    file, the end-to-end checkpoint included, is strict.
    """
    report = ConversionReport()
    dit: dict[str, LazyTensor] = {}
    conn: dict[str, LazyTensor] = {}
    a_i: dict[str, LazyTensor] = {}
    vproj: dict[str, LazyTensor] = {}
    lora: dict[str, LazyTensor] = {}  # "i.q_proj.A" -> tensor

    # 1) SD3.5-Medium base: the DiT under model.diffusion_model. (VAE/text encoders unused here)
    src, _ = open_checkpoint(files.base)
    rep = report.source("base", files.base)
    base_dit_keys: set[str] = set()
    for key, t in src.items():
        if key.startswith("model.diffusion_model."):
            k = key[len("model.diffusion_model."):]
            dit[k] = t
            base_dit_keys.add(k)
            rep.mapped += 1
        elif key.startswith("first_stage_model."):
            rep.ignore("SD3 VAE, loaded by ComfyUI's VAELoader", key)
        elif key.startswith(("text_encoders.", "cond_stage_model.", "conditioner.")):
            rep.ignore("text encoders, replaced by the connector A_Q", key)
        else:
            rep.unmatched.append(key)
    if not base_dit_keys:
        raise ConversionError(f"{files.base}: no 'model.diffusion_model.' tensors; is this the SD3.5-Medium file?")
    if "pos_embed" not in base_dit_keys:
        report.missing.append("UIR: pos_embed (must come from the SD3.5-Medium base file)")

    def load_dit(items, rep: SourceReport, prefix: str = ""):
        for key, t in items:
            if key == "pos_embed":  # the official loader deletes it; the buffer comes from base
                rep.ignore("pos_embed buffer, the base file's is used (official loader deletes it)", prefix + key)
            elif key in base_dit_keys:
                merge_override(dit, key, t, "UIR", report)
                rep.mapped += 1
            else:
                rep.unmatched.append(prefix + key)

    # 2) UIR backbone
    if files.backbone is not None:
        src, extras = open_checkpoint(files.backbone)
        rep = report.source("backbone", files.backbone)
        for e in extras:
            rep.ignore("training state, not weights", e)
        load_dit(src.items(), rep)

    # 3) connector pre-training
    if files.connector is not None:
        src, extras = open_checkpoint(files.connector)
        rep = report.source("connector", files.connector)
        for e in extras:
            rep.ignore("training state, not weights", e)
        for key, t in src.items():
            merge_override(conn, key, t, "connector", report)
            rep.mapped += 1

    lqa_dests = {"a_i": a_i, "vision_proj": vproj, "lora": lora}
    chain: list[ChainTensor] = []  # lenient LQA tensors, resolved once the LQA's shapes are known

    def load_lqa(items, rep: SourceReport, lenient: bool, prefix: str = ""):
        for key, t in items:
            kind, target = classify_lqa_key(key)
            if kind == "ignore":
                rep.ignore(target, prefix + key)
            elif kind not in lqa_dests:
                if lenient:
                    rep.skip("not a RAR LQA parameter", prefix + key)
                else:
                    rep.unmatched.append(prefix + key)
            elif lenient:
                chain.append(ChainTensor(kind, target, t, rep, prefix + key))
            else:
                merge_override(lqa_dests[kind], target, t, "LQA", report)
                rep.mapped += 1

    # 4) LQA chain: DepictQA DQ495K -> s1 -> s2 (flat dicts, Sec. 3.5)
    for role, path in files.lqa_chain:
        src, extras = open_checkpoint(path)
        rep = report.source(role, path)
        for e in extras:
            rep.ignore("training state, not weights", e)
        load_lqa(src.items(), rep, role in lenient_roles)

    # 5) end-to-end checkpoint overrides everything
    src, extras = open_checkpoint(files.e2e)
    rep = report.source("e2e", files.e2e)
    for e in extras:
        rep.ignore("training state, not weights", e)
    dit_items, lqa_items = [], []
    for key, t in src.items():
        module, sub = classify_e2e_key(key)
        if module == "dit":
            dit_items.append((sub, t))
        elif module == "connector":
            merge_override(conn, sub, t, "connector", report)
            rep.mapped += 1
        elif module == "lqa":
            lqa_items.append((sub, t))
        else:
            rep.unmatched.append(key)
    load_dit(dit_items, rep, "model.")
    load_lqa(lqa_items, rep, False, "assessment.")

    # 6) language model folder
    llm_tensors, llm_cfg, shard_names = open_llm_folder(files.llm_dir)
    rep_llm = report.source("llm", files.llm_dir)
    lm: dict[str, LazyTensor] = {}
    for key, t in llm_tensors.items():
        if classify_llm_key(key) == "ignore":
            rep_llm.ignore("rotary inv_freq buffer, recomputed", key)
        else:
            lm[key] = t
            rep_llm.mapped += 1

    # ---- sizes and validation
    uir_dims = infer_uir({k: v.shape for k, v in dit.items()})
    conn_dims = infer_connector(conn)
    chain_view = {kind: {it.target: it.tensor for it in chain if it.kind == kind} for kind in lqa_dests}
    a_i_dims = _infer(infer_a_i, a_i, chain_view["a_i"])
    vocab, hidden = _shape(lm, "model.embed_tokens.weight", "LLM")
    lm_layers = _layer_count(lm, "model.layers.")
    inter = _shape(lm, "model.layers.0.mlp.gate_proj.weight", "LLM")[0]
    kv_dim = _shape(lm, "model.layers.0.self_attn.k_proj.weight", "LLM")[0]
    tie = bool(llm_cfg.get("tie_word_embeddings", False))
    cfg = build_config(config, uir_dims, conn_dims, a_i_dims,
                       _lm_config_fields(llm_cfg, vocab, hidden, inter, lm_layers))
    if llm_cfg.get("num_key_value_heads", cfg.lm.num_attention_heads) != cfg.lm.num_attention_heads:
        report.shape_errors.append("LLM: grouped-query attention (num_key_value_heads) is not supported")
    check_config_consistency(cfg, uir_dims, conn_dims, a_i_dims, report)
    lm_expected = llama_shapes(vocab, hidden, inter, lm_layers, kv_dim, tie)
    vproj_expected = {"weight": (hidden, a_i_dims["width"]), "bias": (hidden,)}
    a_i_expected = a_i_shapes(a_i_dims["width"], a_i_dims["in_ch"], a_i_dims["patch"], a_i_dims["layers"],
                              a_i_dims["mlp"])
    lora_rank = next((t.shape[0] for k, t in sorted((lora or chain_view["lora"]).items())
                      if k.endswith(".A") and len(t.shape) == 2), None)
    resolve_lqa_chain(chain, lqa_dests, {"a_i": a_i_expected, "vision_proj": vproj_expected,
                                         "lora": lora_shapes(lm_expected, lm_layers, lora_rank)})

    check_shapes("connector", conn, connector_shapes(
        conn_dims["hidden_dim"], conn_dims["layers"], conn_dims["in_ch"], conn_dims["num_query_tokens"],
        conn_dims["dims"], conn_dims["mlp"], conn_dims["head_hidden"]), report,
        _Unmatched(report, "connector (merged)"))
    check_shapes("A_I", a_i, a_i_expected, report, _Unmatched(report, "A_I (merged)"))
    check_shapes("vision_proj", vproj, vproj_expected, report, _Unmatched(report, "vision_proj (merged)"))
    check_shapes("LLM", lm, lm_expected, report, rep_llm)

    # LoRA: every layer and target, A and B, shapes fitting the base weight
    rank = None
    for i in range(lm_layers):
        for proj in LORA_TARGETS:
            w_key = f"model.layers.{i}.self_attn.{proj}.weight"
            for ab in ("A", "B"):
                if f"{i}.{proj}.{ab}" not in lora:
                    report.missing.append(
                        f"LQA: llm.base_model.model.model.layers.{i}.self_attn.{proj}.lora_{ab}.default.weight")
            if f"{i}.{proj}.A" in lora and f"{i}.{proj}.B" in lora and w_key in lm_expected:
                a, b = lora[f"{i}.{proj}.A"].shape, lora[f"{i}.{proj}.B"].shape
                w = lm_expected[w_key]
                if len(a) != 2 or len(b) != 2 or a[1] != w[1] or b[0] != w[0] or b[1] != a[0]:
                    report.shape_errors.append(f"LQA: LoRA of layer {i} {proj}: A {list(a)}, B {list(b)}, W {list(w)}")
                elif rank is not None and a[0] != rank:
                    report.shape_errors.append(f"LQA: LoRA rank {a[0]} at layer {i} {proj}, {rank} elsewhere")
                rank = rank if rank is not None else a[0]
    for k in lora:
        i, proj, _ = k.split(".")
        if int(i) >= lm_layers:
            report.shape_errors.append(f"LQA: LoRA for layer {i} but the LLM has {lm_layers} layers")

    # UIR through diffusers' converter, then checked against diffusers' own model
    plan, unused = sd3_to_diffusers_plan({k: v.shape for k, v in dit.items()})
    for k in unused:
        report.sources[0].unmatched.append(f"model.diffusion_model.{k} (not consumed by the SD3 converter)")
    ref = diffusers_reference_shapes(diffusers_uir_kwargs(uir_dims))
    for k, shape in ref.items():
        if k not in plan:
            report.missing.append(f"UIR: {k} (diffusers SD3Transformer2DModel)")
        elif tuple(plan[k][1]) != tuple(shape):
            report.shape_errors.append(f"UIR: {k} is {list(plan[k][1])}, diffusers expects {list(shape)}")
    for k in plan:
        if k not in ref:
            report.sources[0].unmatched.append(f"{k} (converted key unknown to SD3Transformer2DModel)")

    preset = _preset_difference(cfg)
    if preset:
        report.notes.append("sizes differ from preset sd35m: " + ", ".join(preset))
    report.notes.append(f"LoRA rank {rank}, alpha {lora_alpha}: merged with scale {lora_alpha / (rank or 1):g}")
    if files.missing_optional:
        report.notes.append("not present (overridden by the end-to-end checkpoint anyway): "
                            + ", ".join(files.missing_optional))
    report.raise_if_failed()

    # ---- output plan
    out: list[OutTensor] = []
    for k in sorted(plan):
        segs, shape = plan[k]
        segments = [Segment(dit[s], a, b) for s, a, b in segs]
        out.append(OutTensor(UIR_PREFIX + k, tuple(shape), _concat_rows(segments)))
    for k in sorted(conn):
        out.append(OutTensor("connector." + k, conn[k].shape, conn[k].load))
    for k in sorted(a_i):
        out.append(OutTensor("lqa.A_I." + k, a_i[k].shape, a_i[k].load))
    for k in sorted(vproj):
        out.append(OutTensor("lqa.vision_proj." + k, vproj[k].shape, vproj[k].load))
    lora_of = {}
    for i in range(lm_layers):
        for proj in LORA_TARGETS:
            lora_of[f"model.layers.{i}.self_attn.{proj}.weight"] = (lora[f"{i}.{proj}.A"], lora[f"{i}.{proj}.B"])
    for k in sorted(lm_expected):
        if k in lora_of:
            a, b = lora_of[k]
            produce = (lambda w=lm[k], a=a, b=b: merge_lora(w.load(), a.load(), b.load(), lora_alpha))
        else:
            produce = lm[k].load
        out.append(OutTensor("lqa.lm." + k, lm[k].shape, produce))
    check_against_rar_model(cfg, out, report)
    report.raise_if_failed()
    for prefix in (UIR_PREFIX, "connector.", "lqa.A_I.", "lqa.vision_proj.", "lqa.lm."):
        report.outputs[prefix[:-1]] = sum(t.key.startswith(prefix) for t in out)

    used = {"base": files.base, "backbone": files.backbone, "connector": files.connector,
            **{r: p for r, p in files.lqa_chain}, "e2e": files.e2e, "llm": files.llm_dir}
    tokcfg = files.llm_dir / "tokenizer_config.json"
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg.to_json(),
        "latent_format": "sd3",
        "has_codec": "false",
        "labels": json.dumps(list(cfg.labels)),
        "tokenizer": tokenizer_json(files.llm_dir),
        "tokenizer_config": _read_text(tokcfg) if tokcfg.is_file() else "{}",
        "source": "SamsungLabs/RAR official release (AaronCIH/RAR_modelzoo)",
        "source_files": json.dumps({r: (Path(p).name if p else None) for r, p in used.items()}
                                   | {"llm_shards": shard_names}),
        "lora_merged": json.dumps({"rank": rank, "alpha": lora_alpha, "targets": list(LORA_TARGETS)}),
    }
    return ConversionPlan(out, cfg, metadata, report)


def check_against_rar_model(cfg, out: list[OutTensor], report: ConversionReport) -> None:
    """The planned file must be exactly the state_dict of rar_core's RAR(cfg) without a codec."""
    from .model import RAR

    with torch.device("meta"):
        model = RAR(cfg, with_codec=False)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    planned = {t.key: tuple(t.shape) for t in out}
    for k in sorted(set(expected) - set(planned)):
        report.missing.append(f"rar_core model: {k}")
    for k in sorted(set(planned) - set(expected)):
        report.shape_errors.append(f"rar_core model has no tensor {k}")
    for k in sorted(set(planned) & set(expected)):
        if planned[k] != expected[k]:
            report.shape_errors.append(f"rar_core model: {k} is {list(expected[k])}, converted {list(planned[k])}")


class _Unmatched(SourceReport):
    """Collects keys of a merged module that no expected key claims, as a pseudo-source."""

    def __init__(self, report: ConversionReport, role: str):
        super().__init__(role, "(merged over the load order)")
        report.sources.append(self)


def _concat_rows(segments: list[Segment]) -> Callable[[], torch.Tensor]:
    def produce():
        parts = [s.source.rows(s.start, s.stop) for s in segments]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return produce


def _preset_difference(cfg) -> list[str]:
    from .config import RARConfig

    ref = RARConfig.preset("sd35m")
    diffs = []
    for section in ("uir", "connector", "adapter", "lm"):
        a, b = getattr(cfg, section), getattr(ref, section)
        for f in dataclasses.fields(a):
            va, vb = getattr(a, f.name), getattr(b, f.name)
            if va != vb:
                diffs.append(f"{section}.{f.name}={va!r} (sd35m {vb!r})")
    return diffs


def convert_official(release_dir: str | Path, out_path: str | Path, dtype: str | torch.dtype = "bf16",
                     config=None, e2e: str | Path | None = None,
                     lora_alpha: float = OFFICIAL_LORA_ALPHA) -> ConversionReport:
    """Convert an official RAR release folder into one comfyui-rar safetensors file.

    dtype: "bf16" (default, as the official inference), "fp16", "fp32", or "fp8_e4m3fn" (the linear
      layers' weights in fp8, the rest in bf16).
    config: a RARConfig whose non-size fields (head counts, sampler settings, labels) are kept;
      default preset "sd35m". Sizes always come from the tensors.
    e2e: which end-to-end checkpoint (default epoch_5_step_60506_weight.pth, else latest.pth).
    Raises ConversionError (with `.report`) on any missing file, unmatched/missing key or wrong shape.
    """
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConversionError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        dtype = DTYPES[dtype]
    if dtype not in _OUT_CODES:
        raise ConversionError(f"unsupported output dtype {dtype}")
    files = locate_release(release_dir, e2e=e2e)
    plan = plan_conversion(files, config=config, lora_alpha=lora_alpha)
    out_path = Path(out_path).expanduser()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fp8 = ()
    if dtype == torch.float8_e4m3fn:
        from .model import RAR
        from .operations import fp8_keys

        with torch.device("meta"):
            fp8 = fp8_keys(RAR(plan.config, with_codec=False))
        dtype = torch.bfloat16
    write_safetensors_streaming(out_path, plan.tensors, dtype, plan.metadata, fp8)
    kind = str(dtype).replace("torch.", "") + (f", {len(fp8)} linear weights in float8_e4m3fn" if fp8 else "")
    plan.report.notes.append(f"wrote {len(plan.tensors)} tensors ({kind}) to {out_path}")
    return plan.report


# ----------------------------------------------------------------------------------------------
# CLI: `rar convert RELEASE_DIR -o OUT.safetensors [--dtype bf16]`


def add_convert_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "convert", help="convert the official RAR release into a comfyui-rar .safetensors file",
        description="Convert the official RAR release (Hugging Face AaronCIH/RAR_modelzoo) into one "
                    "comfyui-rar safetensors file for models/rar.")
    p.add_argument("release_dir", help="the downloaded RAR_modelzoo folder")
    p.add_argument("-o", "--output", required=True, help="output .safetensors path")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                   help="output dtype (default bf16); fp8_e4m3fn stores the linear layers' weights in fp8 for "
                        "ComfyUI (about half the memory), the rest in bf16")
    p.add_argument("--e2e", default=None,
                   help="end-to-end checkpoint to use (default RAR/checkpoints/epoch_5_step_60506_weight.pth, "
                        "else latest.pth)")
    p.set_defaults(func=run_convert)
    return p


def run_convert(args) -> int:
    try:
        report = convert_official(args.release_dir, args.output, dtype=args.dtype, e2e=args.e2e)
    except (ConversionError, OSError, ValueError) as e:  # ValueError: unreadable JSON / config files
        print(f"rar convert: error: {e}", file=sys.stderr)
        return 2  # as every `rar` error on bad input (rar_core/cli.py)
    print(report.format())
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="rar")
    add_convert_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
