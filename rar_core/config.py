"""Configuration of a RAR model: one dataclass per module, two presets.

`compact` is the CPU-sized model the pack ships and trains; `sd35m` has the sizes of the
official release (SD3.5-Medium MMDiT-X restorer, Vicuna-7B LQA, 12-layer A_I, 8-layer Q-Former
A_Q) so converted official weights load into the very same classes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

# Labels the compact LQA answers with (the identification candidate set). The official release
# answers free text; its usual answers are listed in `OFFICIAL_LABELS`.
COMPACT_LABELS = (
    "Clean",
    "Noise",
    "Defocus blur",
    "Motion blur",
    "Haze",
    "Rain",
    "Low light",
    "JPEG compression",
    "Low resolution",
    "Snow",
)
OFFICIAL_LABELS = (
    "Noise",
    "Blur",
    "Haze",
    "Rain",
    "Low-Resolution",
    "Low-light",
    "Compression",
    "Saturation",
    "Snow",
)


@dataclass
class CodecConfig:
    """Latent codec: a diffusers AutoencoderKL plus the latent normalisation of Sec. 5.3.

    z = (E(x) - shift) * scale is what the LQA and the restorer see (SD3: 0.0609, 1.5305).
    """

    latent_format: str = "rar-compact"  # "sd3" for the official tier (SD3.5 VAE latents)
    latent_channels: int = 16
    # 16/32/64 channels: full-resolution convolutions dominate CPU time, so they stay narrow
    # (33.8 dB on held-out crops against 32.1 dB for 32/64/128 in the same GPU budget).
    block_out_channels: tuple[int, ...] = (16, 32, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    mid_block_add_attention: bool = False
    shift: float = 0.0
    scale: float = 1.0
    sample_posterior: bool = False  # official inference samples the posterior; we default to its mean

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class AdapterConfig:
    """Image adapter A_I (Eq. 1): latent -> LM token embeddings (official `FormerAbstractorModel`)."""

    patch: int = 4  # conv kernel = stride, in latent pixels (official: 2 on the 8x SD3 latent)
    width: int = 128
    layers: int = 2
    heads: int = 4


@dataclass
class LMConfig:
    """The IQA language model, in LlamaForCausalLM layout (Vicuna-7B-v1.5 for the official tier)."""

    vocab_size: int = 512
    hidden_size: int = 128
    intermediate_size: int = 352
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    # Text that closes an answer, as the official teacher-forced target "{ANSWER}\n </s>".
    answer_suffix: str = " </s>"
    max_new_tokens: int = 32


@dataclass
class ConnectorConfig:
    """Quality adapter A_Q (Eq. 2): a Q-Former from LM hidden states to restorer conditioning.

    Output mirrors SD3.5's: context = [pad(cat(L, G)) ; T5] tokens and pooled = cat(L, G).
    """

    hidden_dim: int = 128
    layers: int = 2
    heads: int = 4
    num_query_tokens: int = 16
    num_input_tokens: int = 400  # hidden states are left-padded / left-truncated to this length
    clip_l_dim: int = 64
    clip_g_dim: int = 128
    t5_dim: int = 256
    pool_heads: int = 4

    @property
    def context_dim(self) -> int:
        return self.t5_dim

    @property
    def pooled_dim(self) -> int:
        return self.clip_l_dim + self.clip_g_dim


@dataclass
class UIRConfig:
    """The restorer: diffusers SD3Transformer2DModel run as a degraded->clean flow (Sec. 5.4)."""

    patch_size: int = 4
    num_layers: int = 6
    attention_head_dim: int = 32
    num_attention_heads: int = 6
    pos_embed_max_size: int = 96
    dual_attention_layers: tuple[int, ...] = ()
    qk_norm: str | None = "rms_norm"
    flow_shift: float = 1.0
    steps: int = 4
    # The restorer runs on overlapping latent windows of at most `tile` x `tile` patches,
    # overlapping by `tile_overlap` patches (0: the whole latent). Compact: 32 patches of 4 = 512
    # px, the size the bench validated it at (BENCHMARKS.md, experiment "lqa view"); a 512 px image
    # stays one window, where 256 px windows would cost 2.2x the tokens (4.4 s against 3.0 s on 2
    # cores). The official preset sets 16, its 256 px training size.
    tile: int = 32
    tile_overlap: int = 4

    @property
    def width(self) -> int:
        return self.attention_head_dim * self.num_attention_heads


@dataclass
class RARConfig:
    name: str = "compact"
    codec: CodecConfig = field(default_factory=CodecConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    lm: LMConfig = field(default_factory=LMConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    uir: UIRConfig = field(default_factory=UIRConfig)
    labels: tuple[str, ...] = COMPACT_LABELS
    # Verification asks the comparison once (Image A = candidate, as the paper) or in both orders,
    # summing the log-odds so that a small LQA's preference for one position cancels out.
    verify_orders: int = 1
    # With both orders: the summed log-odds a candidate must win by to be accepted. 0 is the plain
    # majority; a positive margin, calibrated on training photos, stops the loop on rounds that
    # change little (scripts/calibrate_verify.py).
    verify_margin: float = 0.0
    # The LQA looks at the central window of at most this many latent pixels per side (0: the
    # whole latent). A small LQA trained on crops answers outside its training range on larger
    # latents (the compact one accepted every round at 512 px); a window, unlike a downscaled
    # view, keeps the per-pixel signature of noise, blur or JPEG blocks, and keeps the cost of
    # assessing and verifying flat in the image size.
    lqa_view: int = 0
    # Stop an item, restoring nothing, when the LQA calls it clean (adaptive and once modes). The
    # paper's loop restores whatever it is given and leaves stopping to verification; a model whose
    # codec round trip alone costs a clean photo a few dB must not touch one (BENCHMARKS.md).
    stop_when_clean: bool = False
    # The LQA answers "Clean" only when its log-probability beats every other label's by more than
    # this (None: the plain greedy answer). A small LQA taught "Clean" also gives it to inputs
    # that still need restoring; the margin is calibrated on training photos to keep most clean
    # ones (scripts/calibrate_verify.py).
    clean_margin: float | None = None

    @property
    def pixel_multiple(self) -> int:
        """Image sides must be a multiple of this (VAE downsampling x the coarser patch)."""
        return self.codec.downsample * max(self.uir.patch_size, self.adapter.patch)

    @staticmethod
    def preset(name: str) -> "RARConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[name]()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> "RARConfig":
        raw = json.loads(text)
        parts = {
            "codec": CodecConfig,
            "adapter": AdapterConfig,
            "lm": LMConfig,
            "connector": ConnectorConfig,
            "uir": UIRConfig,
        }
        kwargs = {}
        for key, value in raw.items():
            if key in parts:
                cls = parts[key]
                known = {f.name for f in dataclasses.fields(cls)}
                unknown = set(value) - known
                if unknown:
                    raise ValueError(f"config section {key!r} has unknown fields {sorted(unknown)}")
                value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
                kwargs[key] = cls(**value)
            elif key == "labels":
                kwargs[key] = tuple(value)
            elif key in ("name", "verify_orders", "verify_margin", "lqa_view", "stop_when_clean", "clean_margin"):
                kwargs[key] = value
            else:
                raise ValueError(f"config has unknown section {key!r}")
        return RARConfig(**kwargs)


# The LQA's image tokens a side at training (256 px crops, both tiers): lqa_view = this * A_I patch.
LQA_TOKENS_A_SIDE = 16


def compact() -> RARConfig:
    # lqa_view 64 latent px = 256 px, the largest crop the compact LQA trains on
    return RARConfig(verify_orders=2, lqa_view=64, stop_when_clean=True)


def compact_wide() -> RARConfig:
    """The first shipped compact model's codec (32/64/128 channels): 4x the FLOPs of `compact`'s."""
    return RARConfig(
        name="compact", codec=CodecConfig(block_out_channels=(32, 64, 128), norm_num_groups=32), verify_orders=2, lqa_view=64
    )


def sd35m() -> RARConfig:
    """Official sizes (rar-official-layout.md): SD3 latent, MMDiT-X 24x1536, Vicuna-7B, 1024-wide adapters.

    The LQA sees at most the 256 image tokens it was trained on (256 px: a 16 x 16 grid of A_I's
    2 x 2 latent patches): `lqa_view` = 16 * adapter patch.
    """
    adapter = AdapterConfig(patch=2, width=1024, layers=12, heads=16)
    return RARConfig(
        name="sd35m",
        codec=CodecConfig(
            latent_format="sd3",
            latent_channels=16,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            mid_block_add_attention=True,
            shift=0.0609,
            scale=1.5305,
            sample_posterior=True,
        ),
        adapter=adapter,
        lm=LMConfig(
            vocab_size=32000,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            answer_suffix="\n </s>",
            max_new_tokens=400,
        ),
        connector=ConnectorConfig(
            hidden_dim=1024,
            layers=8,
            heads=16,
            num_query_tokens=77,
            num_input_tokens=400,
            clip_l_dim=768,
            clip_g_dim=1280,
            t5_dim=4096,
            pool_heads=16,
        ),
        uir=UIRConfig(
            patch_size=2,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            pos_embed_max_size=384,
            tile=16,  # 256 px = 32 SD3 latent px, the size the official restorer trains at
            dual_attention_layers=tuple(range(13)),
            qk_norm="rms_norm",
            flow_shift=3.0,
            steps=4,
        ),
        labels=OFFICIAL_LABELS,
        lqa_view=LQA_TOKENS_A_SIDE * adapter.patch,
    )


PRESETS = {"compact": compact, "compact-wide": compact_wide, "sd35m": sd35m}

# The loop's settings, read by the CLI, the nodes and the bench: the paper's 4 rounds of
# `UIRConfig.steps` (4) Euler steps, and the most rounds any mode may run (fixed mode restores
# every one of them).
DEFAULT_ROUNDS = 4
DEFAULT_STEPS = UIRConfig.steps
ROUNDS_LIMIT = 100
MODES = ("adaptive", "fixed", "once")  # the loop's modes (loop.run)
PROTOCOLS = ("demo", "paper-eval")  # whose loop: the official demo's or the paper's evaluation (loop.run)
