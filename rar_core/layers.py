"""Building blocks shared by the LQA and the UIR."""

from __future__ import annotations

import torch
from torch import nn


class PatchConv(nn.Conv2d):
    """A patchify conv (kernel = stride) that autocast leaves in its weights' dtype.

    oneDNN's bf16 convolution on CPUs with AMX or AVX512-BF16 returns wrong values for the 4x4,
    stride-4 patches of 16 latent channels (relative error 1.2 with torch 2.13; pytorch#169688 is
    the same kind of bug, at stride 3). A stage trained under bf16 autocast learns around the
    error, and the model then fails in fp32 (BENCHMARKS.md, experiment "bf16 autocast", commit
    e56be19). One conv per forward, so fp32 costs nothing; without autocast this is a plain Conv2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        device = x.device.type  # autocast has no notion of some devices (meta): nothing to leave there
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return super().forward(x)
        return super().forward(x)
