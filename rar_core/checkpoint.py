"""One safetensors file per RAR model, with everything needed to rebuild it in its metadata.

Keys are the RAR module's own state_dict names (codec.vae.*, lqa.A_I.*, lqa.vision_proj.*,
lqa.lm.*, connector.*, uir.transformer.*). Metadata: format, format_version, config (JSON),
latent_format, labels (JSON), tokenizer (tokenizer.json text). Loading checks keys, shapes and
dtypes before touching the model and says exactly what is wrong. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from . import prompts
from .config import RARConfig
from .lqa import tokenizer_from_json, word_tokenizer
from .model import RAR
from .operations import FP8_DTYPES, cast_floats, fp8_keys, use_operations

FORMAT = "comfyui-rar"
FORMAT_VERSION = 1
BUILTIN = Path(__file__).parent / "weights" / "rar-compact.safetensors"


class CheckpointError(ValueError):
    """A model file that cannot be used, with the reason and what to do about it."""


def builtin_available() -> bool:
    return BUILTIN.is_file()


def default_model_path() -> Path:
    """The packaged compact model, or a clear error while it is not shipped."""
    if not BUILTIN.is_file():
        raise FileNotFoundError(
            f"the built-in compact RAR model is not installed ({BUILTIN} is missing). "
            "Train it with `rar train` (see README) or pass --model PATH to a RAR .safetensors file."
        )
    return BUILTIN


def build_model(config: RARConfig, tokenizer_json: str | None = None, seed: int | None = None, with_codec: bool | None = None) -> RAR:
    """A RAR with freshly initialised weights (seeded) and its tokenizer attached."""
    if seed is not None:
        torch.manual_seed(seed)
    model = RAR(config, with_codec=with_codec)
    attach_tokenizer(model, tokenizer_json)
    return model


def attach_tokenizer(model: RAR, tokenizer_json: str | None) -> None:
    if tokenizer_json is None:
        tok = word_tokenizer(prompts.all_text() + list(model.config.labels))
    else:
        tok = tokenizer_from_json(tokenizer_json)
    if len(tok) > model.config.lm.vocab_size:
        raise CheckpointError(f"tokenizer has {len(tok)} tokens but the LM vocabulary is {model.config.lm.vocab_size}")
    model.lqa.tokenizer = tok


def save_rar(model: RAR, path: str | Path, extra: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write the model; `dtype` (e.g. float16, to ship half the bytes) casts the float tensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": model.config.to_json(),
        "latent_format": model.config.codec.latent_format,
        "labels": json.dumps(list(model.config.labels)),
        "has_codec": str(model.codec is not None).lower(),
    }
    if model.lqa.tokenizer is not None:
        meta["tokenizer"] = model.lqa.tokenizer.tokenizer_json
    meta.update(extra or {})
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)  # never leave a half-written model under the real name
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    check_safetensors_header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for truncated / garbage files
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({e}); it is truncated or corrupt: download or convert it again") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path.name} is not a comfyui-rar model (metadata 'format' is {meta.get('format')!r}). "
            "Official RAR release files must be converted first: `rar convert RELEASE_DIR -o model.safetensors`."
        )
    try:
        version = int(meta.get("format_version", "0"))
    except ValueError:
        version = 0
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path.name} has format version {meta.get('format_version')!r}, this comfyui-rar reads version "
            f"{FORMAT_VERSION}; update the pack or re-convert the model"
        )
    return meta


def is_torch_save(head: bytes) -> bool:
    """Whether a file's first bytes are torch.save's: a zip archive, or a legacy pickle (protocol 2-5)."""
    return head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def check_safetensors_header(path: Path) -> None:
    """Name the file type when a model file is not safetensors at all (never unpickled here).

    safetensors starts with an 8-byte little-endian header length and a JSON header ('{');
    torch.save writes a zip archive (PK) or, in its legacy format, a pickle (0x80 protocol byte).
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if is_torch_save(head):
        raise CheckpointError(
            f"{path.name} is a PyTorch pickle, not a safetensors file; comfyui-rar never loads pickles: "
            "convert the official RAR release with `rar convert RELEASE_DIR -o model.safetensors`"
        )
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if len(head) < 9 or head[8:9] != b"{" or n < 2:
        raise CheckpointError(f"{path.name} is not a safetensors file (it does not start with a safetensors header)")


FLOAT_DTYPES = ("F32", "F16", "BF16")
FP8_CODES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}  # safetensors' names


def stored_fp8(path: str | Path) -> torch.dtype | None:
    """The fp8 dtype a model file stores weights in (`rar convert --dtype fp8_e4m3fn`), or None."""
    with safe_open(str(path), framework="pt") as f:
        codes = {f.get_slice(k).get_dtype() for k in f.keys()}
    return next((FP8_CODES[c] for c in codes if c in FP8_CODES), None)


def load_rar(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
             operations=None) -> RAR:
    """Load and validate a RAR model file. Raises CheckpointError naming every problem found.

    `operations`: a namespace of layer classes to build with (operations.use_operations), e.g.
    ComfyUI's comfy.ops; with one, weights stored in fp8 stay so (its layers cast them), without
    one they are widened to the compute dtype. `dtype` casts every other floating tensor.
    """
    path = Path(path)
    meta = read_metadata(path)
    try:
        config = RARConfig.from_json(meta["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path.name}: unreadable config metadata ({e})") from e
    with_codec = meta.get("has_codec", "true") == "true"
    with torch.device("meta"):
        model = RAR(config, with_codec=with_codec)
    fp8_ok = fp8_keys(model)
    if operations is not None:
        use_operations(model, operations)
    expected = model.state_dict()

    problems = []
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        missing = sorted(set(expected) - keys)
        unexpected = sorted(keys - set(expected))
        if missing:
            problems.append(f"{len(missing)} missing tensors (first: {', '.join(missing[:5])})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected tensors (first: {', '.join(unexpected[:5])})")
        for k in sorted(keys & set(expected)):
            sl = f.get_slice(k)
            shape = tuple(sl.get_shape())
            if shape != tuple(expected[k].shape):
                problems.append(f"{k}: shape {shape}, expected {tuple(expected[k].shape)}")
            if sl.get_dtype() not in FLOAT_DTYPES and not (sl.get_dtype() in FP8_CODES and k in fp8_ok):
                problems.append(f"{k}: dtype {sl.get_dtype()}, expected a float type ({', '.join(FLOAT_DTYPES)}"
                                f"{', or fp8 for a linear weight' if sl.get_dtype() in FP8_CODES else ''})")
        if problems:
            raise CheckpointError(f"{path.name} does not match its config ({config.name}): " + "; ".join(problems[:12]))
        try:
            state = {k: f.get_tensor(k) for k in keys}
        except Exception as e:
            raise CheckpointError(f"{path.name}: tensor data unreadable ({e}); the file is truncated or corrupt") from e

    floats = [v.dtype for v in state.values() if v.is_floating_point() and v.dtype not in FP8_DTYPES]
    if operations is None:  # plain torch layers cannot compute with fp8 weights: widen them
        wide = floats[0] if floats else torch.bfloat16
        state = {k: v.to(wide) if v.dtype in FP8_DTYPES else v for k, v in state.items()}
    model.load_state_dict(state, assign=True)
    _rebuild_nonpersistent_buffers(model)
    model.to(device)
    if dtype is not None:
        cast_floats(model, dtype)
    elif torch.device(device).type == "cpu" and any(d in (torch.float16, torch.bfloat16) for d in floats):
        cast_floats(model, torch.float32)  # half-precision files (the shipped model) compute in fp32 on CPUs
    attach_tokenizer(model, meta.get("tokenizer"))
    return model.eval()


def _rebuild_nonpersistent_buffers(model: RAR) -> None:
    """Buffers that are computed, not stored (Llama's rotary inv_freq), are rebuilt for real."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    lm = model.lqa.lm.model
    lm.rotary_emb = LlamaRotaryEmbedding(config=lm.config)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(f"model tensors left uninitialised after loading: {left[:5]}")
