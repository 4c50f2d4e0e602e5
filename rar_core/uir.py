"""Unified Image Restoration (UIR, Sec. 5.4): a noise-free degraded -> clean flow.

The network is diffusers' SD3Transformer2DModel (the MMDiT of SD3.5). Instead of noise -> clean,
the degraded latent is the flow's source (Eq. 3, official convention with s = sigma):

    x_s = (1 - s) * z_hq + s * z_deg,     v = z_deg - z_hq          (s = 1: degraded, s = 0: clean)

so every intermediate latent is a plausible image the LQA can read. `FlowEuler` is the sampler,
kept apart from the network as in diffusers' models/schedulers split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from torch import nn

from .config import ConnectorConfig, UIRConfig
from .layers import PatchConv
from .operations import compute_dtype


class Restorer(nn.Module):
    """v_theta(x_s, Q, s): the MMDiT predicting the flow velocity z_deg - z_hq."""

    def __init__(self, config: UIRConfig, latent_channels: int, cond: ConnectorConfig):
        super().__init__()
        self.config = config
        self.transformer = SD3Transformer2DModel(
            sample_size=config.pos_embed_max_size,
            patch_size=config.patch_size,
            in_channels=latent_channels,
            out_channels=latent_channels,
            num_layers=config.num_layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
            joint_attention_dim=cond.context_dim,
            caption_projection_dim=config.width,
            pooled_projection_dim=cond.pooled_dim,
            pos_embed_max_size=config.pos_embed_max_size,
            dual_attention_layers=tuple(config.dual_attention_layers),
            qk_norm=config.qk_norm,
        )
        # The same weights and keys; only autocast's handling changes (PatchConv says why).
        # The class is swapped, not the module rebuilt, so building the model draws the same
        # random numbers as before and a seeded run still gives the same weights.
        self.transformer.pos_embed.proj.__class__ = PatchConv

    def forward(self, x: torch.Tensor, s: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(self.transformer)
        v = self.transformer(
            hidden_states=x.to(dtype),
            encoder_hidden_states=context.to(dtype),
            pooled_projections=pooled.to(dtype),
            # The timestep is on the 0..1000 scale and stays fp32, as in the official MMDiT: the
            # sinusoidal projection runs in fp32 and is cast to the model dtype after it (in bf16,
            # 857.69 would round to 856 before it).
            timestep=s.float() * 1000,
            return_dict=False,
        )[0]
        return v


class FlowEuler:
    """K Euler steps from s = 1 (the current latent) to s = 0 with the flow shift.

    Sigmas come from diffusers' FlowMatchEulerDiscreteScheduler (shift 3.0 for SD3.5-M), exactly
    as the official sampler; each round runs the full trajectory from its current latent.
    """

    def __init__(self, steps: int, shift: float):
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
        sched.set_timesteps(steps)
        self.sigmas = sched.sigmas.to(torch.float32)  # [steps + 1], 1.0 ... 0.0

    @torch.no_grad()
    def sample(self, velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        x = z.float()
        for s, s_next in zip(self.sigmas[:-1], self.sigmas[1:]):
            v = velocity(x, s.expand(x.shape[0]).to(x.device)).float()
            x = x + (s_next - s) * v
        return x.to(z.dtype)


def flow_pair(z_hq: torch.Tensor, z_deg: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_s, target v) of Eq. 3-4 for per-sample s in [0, 1]."""
    s_ = s.view(-1, *([1] * (z_hq.dim() - 1)))
    return (1 - s_) * z_hq + s_ * z_deg, z_deg - z_hq


def sample_s(batch: int, shift: float, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Logit-normal(0, 1) training times with the flow shift, as the official `linear_flow`."""
    u = torch.sigmoid(torch.randn(batch, generator=generator, device=device))
    return shift * u / (1 + (shift - 1) * u)


def flow_loss(model: Restorer, z_hq, z_deg, s, context, pooled) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 per-sample MSE, plus the one-step clean estimate z_deg - v_hat (Eq. 5; the official
    `pred_x0`), which feeds the next round in recurrent training."""
    x_s, v = flow_pair(z_hq, z_deg, s)
    v_hat = model(x_s, s, context, pooled)
    loss = F.mse_loss(v_hat.float(), v.float(), reduction="none").mean(dim=tuple(range(1, v.dim())))
    z_pred = z_deg - v_hat.to(z_deg.dtype)
    return loss, z_pred
