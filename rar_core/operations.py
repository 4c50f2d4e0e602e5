"""Operations injection: a host's layer classes in place of torch.nn's, and fp8 weight storage.

rar_core's parts come from diffusers, transformers and torch.nn, whose constructors take no
operations argument, so `use_operations` swaps the class of every plain torch layer for the
same-named class of an operations namespace after construction. Such a class subclasses the torch
layer (ComfyUI's comfy.ops do), so weights, keys and the forward stay; ComfyUI can then load a
model in part and cast the rest of its weights to the compute device on the fly (lowvram), and
keep them in fp8. rar_core never imports the host: plain torch is the default, and a layer the
namespace lacks stays a torch layer.

fp8 is storage only: `fp8_keys` names the weights that may be stored so (those of the linear
layers, the bulk of every part), and the model computes in `compute_dtype`, the dtype of its
other floating parameters.
"""

from __future__ import annotations

import torch
from torch import nn

LAYERS = ("Linear", "Conv1d", "Conv2d", "Embedding", "LayerNorm", "GroupNorm")
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def use_operations(model: nn.Module, operations) -> int:
    """Make every exact torch.nn layer of LAYERS an instance of `operations`' class of that name
    (when it has one that subclasses it); the number of layers swapped. Subclasses with a forward
    of their own (layers.PatchConv) keep their class.

    For a model about to receive its weights (built on the meta device, as load_rar does): each
    swapped layer's reset_parameters runs as its constructor would have run it (comfy.ops set
    attributes there and leave the weights alone)."""
    swapped = 0
    for module in model.modules():
        for name in LAYERS:
            base = getattr(nn, name)
            cls = getattr(operations, name, None)
            if type(module) is base and cls is not None and issubclass(cls, base):
                module.__class__ = cls
                module.reset_parameters()
                swapped += 1
    return swapped


def fp8_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the weights that may be stored in fp8: those of the plain linear layers
    of a model built with torch.nn (the ones use_operations swaps). Not the subclasses:
    nn.MultiheadAttention reads its out_proj's weight directly, which no layer could cast."""
    return {f"{name}.weight" for name, m in model.named_modules() if type(m) is nn.Linear}


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a module computes in: its floating parameters', fp8 storage aside."""
    for p in module.parameters():
        if p.is_floating_point() and p.dtype not in FP8_DTYPES:
            return p.dtype
    return torch.bfloat16


def compute_device(module: nn.Module) -> torch.device:
    """Where a module computes: the host's choice (`rar_compute_device`, set when the host keeps
    some weights elsewhere and casts them on the fly), else where its parameters are."""
    device = getattr(module, "rar_compute_device", None)
    return device if device is not None else next(module.parameters()).device


def cast_floats(model: nn.Module, dtype: torch.dtype) -> None:
    """model.to(dtype) for every floating parameter and buffer but those stored in fp8."""
    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() and t.dtype not in FP8_DTYPES else t

    model._apply(cast)
