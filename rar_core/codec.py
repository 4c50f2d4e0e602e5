"""Latent codec E / D: every RAR stage works on z = process_in(E(x)); we decode once at the end.

Backed by diffusers' AutoencoderKL. The compact tier ships its own small codec; the official
tier uses the SD3.5 VAE (in ComfyUI the user's, loaded by core VAELoader).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn

from .config import CodecConfig

# The codec's convolutions run in NHWC: oneDNN is 25-35 % faster on it than on NCHW on CPU
# (BENCHMARKS.md, experiment "codec NHWC"); what the codec returns is in the usual layout.
NHWC = torch.channels_last


def normalise(latent: torch.Tensor, config: CodecConfig) -> torch.Tensor:
    """The codec's raw latent -> the z every RAR stage reads (zero mean, unit std; SD3's shift and
    scale for the official tier). The one place this is written: the nodes use it for latents
    that ComfyUI's VAE made."""
    return (latent - config.shift) * config.scale


def denormalise(z: torch.Tensor, config: CodecConfig) -> torch.Tensor:
    """z -> the codec's raw latent (what a VAE decodes)."""
    return z / config.scale + config.shift


class LatentCodec(nn.Module):
    def __init__(self, config: CodecConfig):
        super().__init__()
        self.config = config
        n = len(config.block_out_channels)
        self.vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            latent_channels=config.latent_channels,
            norm_num_groups=config.norm_num_groups,
            mid_block_add_attention=config.mid_block_add_attention,
            use_quant_conv=config.latent_format != "sd3",
            use_post_quant_conv=config.latent_format != "sd3",
        )

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return normalise(latent, self.config)

    def process_out(self, z: torch.Tensor) -> torch.Tensor:
        return denormalise(z, self.config)

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """image: [B,3,H,W] in [0,1] -> normalised latent z [B,C,H/f,W/f]."""
        dist = self.vae.encode((image * 2.0 - 1.0).contiguous(memory_format=NHWC)).latent_dist
        latent = dist.sample(generator) if self.config.sample_posterior else dist.mode()
        return self.process_in(latent).contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """normalised latent z -> image [B,3,H,W] in [0,1]."""
        x = self.vae.decode(self.process_out(z).contiguous(memory_format=NHWC)).sample
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0).contiguous()
