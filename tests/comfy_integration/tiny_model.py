"""A tiny random-weight RAR model for tests: the compact architecture at toy sizes.

Used until the packaged compact weights exist, and for speed on 2 CPU cores. Weights are
seeded, so every test run sees the same model (and the same LQA answers).
"""
from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_config(official: bool = False):
    if REPO not in sys.path:
        sys.path.append(REPO)  # appended: ComfyUI has its own top-level `nodes`
    from rar_core.config import (AdapterConfig, CodecConfig, ConnectorConfig, LMConfig, RARConfig,
                                 UIRConfig)
    return RARConfig(
        name="tiny",
        codec=(CodecConfig(latent_format="sd3", shift=0.0609, scale=1.5305, block_out_channels=(8, 16, 32, 32),
                           norm_num_groups=8) if official else
               CodecConfig(block_out_channels=(8, 16, 32), norm_num_groups=8)),
        adapter=AdapterConfig(width=32, layers=1, heads=2),
        lm=LMConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2),
        connector=ConnectorConfig(hidden_dim=32, layers=1, heads=2, num_query_tokens=4, num_input_tokens=64,
                                  clip_l_dim=16, clip_g_dim=16, t5_dim=32, pool_heads=2),
        uir=UIRConfig(num_layers=1, attention_head_dim=16, num_attention_heads=2, pos_embed_max_size=64,
                      tile=16),  # small windows, so small test images take several
    )


def write_tiny_model(path: str, seed: int = 0, official: bool = False) -> str:
    """Build the tiny model with seeded random weights and save it with rar_core's save_rar.

    official=True gives the official tier's layout (SD3.5 VAE latents, no codec of its own)."""
    config = tiny_config(official)
    from rar_core.checkpoint import build_model, save_rar
    save_rar(build_model(config, seed=seed), path)
    return path


if __name__ == "__main__":
    print(write_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny_rar.safetensors"))
