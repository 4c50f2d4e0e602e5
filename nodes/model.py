"""The RAR_MODEL handle, the models/rar folder and the device discipline every node shares.

ComfyUI owns memory: the handle wraps the RAR module in a ModelPatcher, nodes call
`prepare()` (load_models_gpu with an estimate from the input size) before every forward and
return tensors on intermediate_device(). There is no module-level model cache; the loader
node's cached output is the only reference ComfyUI keeps.
"""
from __future__ import annotations

import contextlib
import os

import torch

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

from ..rar_core.operations import compute_dtype

FOLDER = "rar"
BUILTIN = "rar-compact (built-in)"


def register_folder():
    """Register models/rar, keeping paths from extra_model_paths.yaml and the .pt/.safetensors filter.

    add_model_folder_path alone would give a new folder an empty filter (every file listed).
    """
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    paths = list(paths)
    if default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(folder_paths.supported_pt_extensions))


def model_choices() -> list[str]:
    """Files in models/rar, with the packaged compact model first when its weights exist."""
    from ..rar_core import checkpoint
    files = folder_paths.get_filename_list(FOLDER)
    return ([BUILTIN] if checkpoint.builtin_available() else []) + list(files)


def model_path(name: str) -> str:
    """Resolve a combo value to a file, with errors that say where to put the file."""
    from ..rar_core import checkpoint
    if name == BUILTIN:
        return checkpoint.default_model_path()
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise FileNotFoundError(
            f"RAR model '{name}' not found in {folder_paths.get_folder_paths(FOLDER)}. "
            f"Put .safetensors files in ComfyUI/models/{FOLDER} (or a 'rar:' entry of extra_model_paths.yaml).")
    return path


DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    """auto: bf16 where the device supports it well, else fp32 (fp16 can overflow the LM)."""
    if DTYPES.get(choice) is not None:
        return DTYPES[choice]
    if device.type != "cpu" and mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float32


def is_oom(err: BaseException) -> bool:
    """True for real out-of-memory errors only (mm.OOM_EXCEPTION is plain Exception on CPU builds)."""
    oom = getattr(torch, "OutOfMemoryError", None)
    return (oom is not None and isinstance(err, oom)) or "out of memory" in str(err).lower()


class _Patchable(torch.nn.Module):
    """ModelPatcher writes bookkeeping attributes (device, model_lowvram, ...) onto the module it
    manages; it manages this container of RAR parts instead of the RAR module itself."""

    def __init__(self, **parts: torch.nn.Module):
        super().__init__()
        for name, module in parts.items():
            setattr(self, name, module)


ALL_PARTS = ("codec", "lqa", "restorer")


def pin_uncastable(patcher) -> int:
    """After a partial load: move to the load device every weight and buffer that no comfy.ops
    layer casts on the fly (norms of diffusers and transformers, A_Q's query tokens, patchify
    convs, rotary tables), which ModelPatcher loads only while they fit; they are small. The
    number of tensors moved."""
    device, moved = patcher.load_device, 0
    for module in patcher.model.modules():
        if getattr(module, "comfy_cast_weights", False):
            continue
        for store in (module._parameters, module._buffers):
            for key, t in store.items():
                if t is not None and t.device != device:
                    store[key] = torch.nn.Parameter(t.to(device), requires_grad=False) if store is module._parameters else t.to(device)
                    moved += 1
    return moved


class RARHandle:
    """What a RAR_MODEL socket carries: the RAR module, its ModelPatcher and its file name."""

    def __init__(self, model: torch.nn.Module, name: str):
        self.model = model.eval()
        self.name = name
        # One patcher per part (codec, LQA, A_Q + restorer), so each stage loads only what it uses
        # and ComfyUI may offload the rest: the official LQA (7 B) and restorer (2.5 B) need not
        # be resident together on a 24 GB GPU.
        parts = {
            "codec": {"codec": model.codec} if model.codec is not None else None,
            "lqa": {"lqa": model.lqa},
            "restorer": {"connector": model.connector, "uir": model.uir},
        }
        self.patchers = {
            name: comfy.model_patcher.ModelPatcher(
                _Patchable(**mods), load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
            for name, mods in parts.items() if mods is not None
        }

    @property
    def config(self):
        return self.model.config

    @property
    def official(self) -> bool:
        """The official tier has no codec of its own: it works on the user's SD3.5 VAE latents."""
        return self.model.codec is None

    @property
    def max_side(self) -> int:
        """Largest image side (px) the restorer's position grid covers in one piece; larger
        images go through RAR Loop / RAR Restore Image, which tile."""
        uir = self.config.uir
        return uir.pos_embed_max_size * uir.patch_size * self.config.codec.downsample

    @property
    def dtype(self) -> torch.dtype:
        return compute_dtype(self.model)  # fp8 is storage (rar_core/operations.py)

    def estimate_memory(self, batch: int, height: int, width: int) -> int:
        """Rough activation bytes for a batch of height x width images (weights excluded).

        The large terms: the codec's full-resolution feature maps (compact tier only) and the
        restorer's tokens and attention matrix. A heuristic with a 2x margin, not a measurement;
        load_models_gpu adds ComfyUI's own reserve on top.
        """
        cfg = self.config
        elem = torch.finfo(self.dtype).bits // 8
        codec = 0 if self.official else cfg.codec.block_out_channels[0] * height * width * 6
        grid = cfg.codec.downsample * cfg.uir.patch_size
        tokens = max(1, height // grid) * max(1, width // grid)
        uir = tokens * cfg.uir.width * 16 + tokens * tokens * cfg.uir.num_attention_heads
        return int(2 * batch * (codec + uir) * elem)

    def prepare(self, batch: int, height: int, width: int, parts=ALL_PARTS) -> torch.device:
        """Ask ComfyUI to load the weights of `parts` (evicting other models if needed); the device.

        The model's layers are comfy.ops (RARModelLoader), so on a card too small for a part
        ComfyUI loads what fits and casts the rest on the fly (lowvram); `pin_uncastable` then
        loads the few small weights no comfy.ops layer holds.
        """
        patchers = [self.patchers[p] for p in parts if p in self.patchers]
        mm.load_models_gpu(patchers, memory_required=self.estimate_memory(batch, height, width))
        for patcher in patchers:
            if patcher.model.model_lowvram:
                pin_uncastable(patcher)
            for module in patcher.model.children():  # rar_core computes where ComfyUI loaded
                module.rar_compute_device = patcher.load_device
        return patchers[0].load_device

    @contextlib.contextmanager
    def staged_loading(self, batch: int, height: int, width: int):
        """While inside, each stage of RAR.run first loads just its part (rar_core's stage hook)."""
        self.model.stage_hook = lambda part: self.prepare(batch, height, width, (part,))
        try:
            yield
        finally:
            self.model.stage_hook = None
