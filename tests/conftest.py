"""Shared fixtures for the core tests: a TINY RAR config and seeded random-weight models.

`make_tiny_config()` shrinks the compact preset to the smallest model that still exercises every
code path (2-level codec, 1-layer adapters / LM, 2-layer MMDiT). Building one takes ~0.1 s and a
full restore of a 64x64 image a fraction of a second on one CPU core, so tests can afford fresh
models. Reuse it from any test module through the fixtures below (`tiny_config`, `tiny_model`,
`tiny_model_path`, and `tiny_factory` for models with other seeds / configs).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `pytest tests` from a checkout that is not pip-installed
    sys.path.insert(0, str(REPO))

from rar_core.config import (  # noqa: E402
    AdapterConfig,
    CodecConfig,
    ConnectorConfig,
    LMConfig,
    RARConfig,
    UIRConfig,
)

# The test models are tiny: intra-op threads only add sync overhead, and on a loaded 2-core
# machine spinning OpenMP workers make every small op 10-100x slower. One thread is fastest.
torch.set_num_threads(1)


def make_tiny_config(**overrides) -> RARConfig:
    """The compact preset shrunk to test size. Pixel multiple 4 (2x codec x patch 2)."""
    cfg = RARConfig(
        name="tiny",
        codec=CodecConfig(
            latent_format="rar-compact",
            latent_channels=16,
            block_out_channels=(32, 32),
            layers_per_block=1,
            norm_num_groups=8,
        ),
        adapter=AdapterConfig(patch=2, width=32, layers=1, heads=2),
        lm=LMConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=1024,
            max_new_tokens=8,
        ),
        connector=ConnectorConfig(
            hidden_dim=32,
            layers=1,
            heads=2,
            num_query_tokens=8,
            num_input_tokens=400,
            clip_l_dim=16,
            clip_g_dim=16,
            t5_dim=64,
            pool_heads=2,
        ),
        uir=UIRConfig(
            patch_size=2,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            pos_embed_max_size=32,
            flow_shift=1.0,
            steps=2,
            tile=16,  # 32 latent px windows: the tiling tests cut small latents into several
        ),
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def make_tiny_model(seed: int = 0, config: RARConfig | None = None):
    from rar_core.checkpoint import build_model

    return build_model(config or make_tiny_config(), seed=seed).eval()


def sharpen_lqa(model, gain: float = 10.0):
    """Scale the LM's attention projections by `gain`, in place; returns the model.

    At random init the tiny LQA barely looks at the images: its both-orders verification log-odds
    are ~2e-5, a few float32 ulps of log-probs near -19, so their sign is rounding and differs
    between CPUs and batch layouts. x10 gives margins of 6e-3 to 5e-2, so tests of verification
    decisions test the code, not the rounding.
    """
    with torch.no_grad():
        for name, p in model.lqa.lm.model.layers.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")):
                p.mul_(gain)
    return model


@pytest.fixture(scope="session")
def load_script():
    """`load_script("calibrate_verify")` -> scripts/calibrate_verify.py as a module (scripts/ is not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load


@pytest.fixture
def tiny_config() -> RARConfig:
    """A fresh TINY RARConfig (mutable: each test gets its own)."""
    return make_tiny_config()


@pytest.fixture
def tiny_model(tiny_config):
    """A seeded random-weight RAR built from `tiny_config`, in eval mode."""
    return make_tiny_model(seed=0, config=tiny_config)


@pytest.fixture(scope="session")
def sharpen():
    """`sharpen(model)` -> `sharpen_lqa(model)`: verification margins far above float rounding."""
    return sharpen_lqa


@pytest.fixture(scope="session")
def tiny_factory():
    """`tiny_factory(seed=0, config=None)` -> a new seeded tiny RAR; `tiny_factory.config()` -> config."""

    def factory(seed: int = 0, config: RARConfig | None = None):
        return make_tiny_model(seed=seed, config=config)

    factory.config = make_tiny_config
    return factory


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A tiny random RAR saved once per session with save_rar (treat as read-only)."""
    from rar_core.checkpoint import save_rar

    path = tmp_path_factory.mktemp("models") / "tiny_rar.safetensors"
    save_rar(make_tiny_model(seed=0), path)
    return path
