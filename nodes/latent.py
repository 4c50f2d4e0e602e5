"""LATENT dicts <-> the normalised z that rar_core works on, with the checks that give clear errors.

LATENT samples stay in raw VAE space, like every core node expects (so an official-tier latent
goes straight into core VAE Decode or KSampler); RAR nodes normalise with the model's codec
shift/scale on the way in and undo it on the way out. A tag records which codec made the latent,
so a compact-codec latent is never fed to the official tier (both have 16 channels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import comfy.model_management as mm

from ..rar_core import image as rar_image
from ..rar_core.codec import denormalise, normalise
from .model import RARHandle

TAG = "rar_latent_format"   # which codec space the samples are in ("rar-compact", "sd3", ...)
SIZE = "rar_image_size"     # (H, W) of the image before padding, so RAR Latent Decode can crop
GATE = "rar_gate"           # RAR Verify Gate's per-image outcome {"improved": [...], "verdict": [...]}, read by RAR Iterate


class RARNodeError(ValueError):
    """A user-facing problem with the inputs (ComfyUI shows the message on the node)."""


def _codec(handle: RARHandle):
    return handle.config.codec


def check_latent(handle: RARHandle, latent: dict) -> torch.Tensor:
    """Refuse latents from another codec, wrong channel counts and sizes the model cannot patch."""
    samples = latent["samples"]
    cfg = _codec(handle)
    fmt = latent.get(TAG)
    if samples.ndim != 4:
        raise RARNodeError(f"RAR works on image latents [B,C,H,W]; got a {samples.ndim}-D latent.")
    if fmt is not None and fmt != cfg.latent_format:
        raise RARNodeError(
            f"This latent was made by the '{fmt}' codec but the RAR model '{handle.name}' works on "
            f"'{cfg.latent_format}' latents. Encode the image again with this model.")
    if fmt is None and not handle.official:
        raise RARNodeError(
            f"The compact RAR model '{handle.name}' has its own codec: make this latent with "
            "RAR Latent Encode, not VAE Encode.")
    if samples.shape[1] != cfg.latent_channels:
        raise RARNodeError(
            f"The RAR model '{handle.name}' expects {cfg.latent_channels}-channel latents "
            f"(SD3.5 VAE for the official tier); got {samples.shape[1]} channels. Use the matching VAE.")
    h, w = samples.shape[-2:]
    if h * cfg.downsample < rar_image.MIN_SIDE or w * cfg.downsample < rar_image.MIN_SIDE:
        raise RARNodeError(f"Latent {w}x{h} is too small: RAR needs images of at least {rar_image.MIN_SIDE} px a side.")
    return samples


def check_fits(handle: RARHandle, latent: dict) -> None:
    """Stage nodes work on the whole latent at once: refuse sizes beyond the restorer's grid."""
    f = handle.config.codec.downsample
    h, w = (s * f for s in latent["samples"].shape[-2:])
    if max(h, w) > handle.max_side:
        raise RARNodeError(
            f"A {w}x{h} px image is larger than the RAR model '{handle.name}' takes in one piece "
            f"({handle.max_side} px a side). Use RAR Loop or RAR Restore Image, which work in tiles.")


def to_z(handle: RARHandle, latent: dict, device: torch.device) -> torch.Tensor:
    """LATENT dict -> normalised float32 z on the compute device (rar_core casts to the model dtype).

    Sides that are not a multiple of the restorer's patch (e.g. an 8-px multiple from core VAE
    Encode) are padded by replication; from_z crops back to the input latent's size.
    """
    samples = check_latent(handle, latent)
    cfg = _codec(handle)
    z = normalise(samples.to(device, torch.float32), cfg)
    mult = handle.config.pixel_multiple // cfg.downsample
    ph, pw = (-z.shape[-2]) % mult, (-z.shape[-1]) % mult
    if ph or pw:
        z = F.pad(z, (0, pw, 0, ph), mode="replicate")
    return z


def from_z(handle: RARHandle, z: torch.Tensor, like: dict) -> dict:
    """Normalised z -> LATENT dict on intermediate_device(), cropped to and keeping the keys of `like`."""
    cfg = _codec(handle)
    h, w = like["samples"].shape[-2:]
    out = dict(like)
    out["samples"] = denormalise(z[..., :h, :w].float(), cfg).to(mm.intermediate_device())
    out[TAG] = cfg.latent_format
    return out


def to_bchw(images: torch.Tensor) -> torch.Tensor:
    """IMAGE [B,H,W,C] -> RGB [B,3,H,W], refusing shapes and sizes RAR cannot take."""
    if images.ndim != 4:
        raise RARNodeError(f"Expected an IMAGE batch [B,H,W,C]; got shape {tuple(images.shape)}.")
    x = rar_image.to_rgb(images.movedim(-1, 1).float())
    rar_image.check_size(*x.shape[-2:])
    return x


def pad_images(handle: RARHandle, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """IMAGE [B,H,W,C] -> RGB [B,3,H',W'] reflect-padded to the model's pixel multiple, and (H, W)."""
    return rar_image.pad_to_multiple(to_bchw(images), handle.config.pixel_multiple)


def check_vae(handle: RARHandle, vae) -> None:
    """The official tier encodes with the user's VAE: it must be there and make SD3.5 latents."""
    channels = handle.config.codec.latent_channels
    if vae is None:
        raise RARNodeError("The official RAR tier has no codec of its own: connect the SD3.5 VAE.")
    if getattr(vae, "latent_channels", None) != channels:
        raise RARNodeError(
            f"This VAE makes {getattr(vae, 'latent_channels', '?')}-channel latents; the RAR model "
            f"'{handle.name}' needs the SD3.5 VAE ({channels} channels).")


def crop_images(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Channels-first images -> IMAGE [B,H,W,C] on intermediate_device(), cropped to the original size."""
    if size is not None:
        x = x[..., : size[0], : size[1]]
    return x.movedim(1, -1).float().to(mm.intermediate_device())
