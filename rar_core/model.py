"""The RAR model: its four parts (codec, LQA, A_Q, UIR) and the stages the loop calls.

    encode: x -> z        assess: LQA.identify(z)        restore: A_Q -> UIR, K Euler steps
    verify: LQA.compare(A = z_new, B = z_prev)           decode: z -> x

The order of the stages is loop.py's business. At any image size each stage makes one decision
per image: the LQA reads a bounded view of the whole latent (`lqa_view`), the restorer's velocity
and the codec run on overlapping tiles of the sizes they were trained at (tiling.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import prompts, tiling
from .codec import LatentCodec
from .config import DEFAULT_ROUNDS, RARConfig
from .connector import QualityAdapter
from .lqa import LQA, Answer
from .operations import compute_device, compute_dtype
from .uir import FlowEuler, Restorer

OnTile = tiling.OnTile


class LatentError(ValueError):
    """A latent this model cannot read (wrong channels, size, NaNs)."""


@dataclass
class Assessment:
    """LQA output for a batch: the named degradation and the hidden states A_Q reads."""

    answer: list[str]
    hidden: list[torch.Tensor]

    def select(self, idx: list[int]) -> "Assessment":
        return Assessment([self.answer[i] for i in idx], [self.hidden[i] for i in idx])


class RAR(nn.Module):
    """codec (None for the official tier: the SD3.5 VAE lives outside), lqa, connector (A_Q), uir."""

    # The parts a stage needs, so a host (ComfyUI) can load only those: the official LQA (7 B)
    # and restorer (2.5 B) need not be resident together.
    STAGE_PARTS = {"encode": "codec", "decode": "codec", "assess": "lqa", "verify": "lqa", "restore": "restorer"}

    def __init__(self, config: RARConfig, with_codec: bool | None = None):
        super().__init__()
        self.config = config
        # Called as stage_hook(part) before each stage; hosts use it to load that part's weights.
        self.stage_hook: Callable[[str], None] | None = None
        c = config.codec.latent_channels
        if with_codec is None:
            with_codec = config.codec.latent_format != "sd3"
        self.codec = LatentCodec(config.codec) if with_codec else None
        self.lqa = LQA(config.adapter, config.lm, c)
        self.connector = QualityAdapter(config.connector, config.lm.hidden_size)
        self.uir = Restorer(config.uir, c, config.connector)
        # Host settings, not model properties: windows per restorer forward, and the largest
        # image side (px) the codec encodes or decodes in one piece (memory grows with its area).
        self.tile_batch = 8
        self.codec_tile = 512

    # ----- helpers ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the loop keeps its latents: the restorer's device."""
        return compute_device(self.uir)

    def _enter(self, stage: str) -> None:
        if self.stage_hook is not None:
            self.stage_hook(self.STAGE_PARTS[stage])

    @staticmethod
    def _device_of(module: nn.Module) -> torch.device:
        return compute_device(module)

    def check_latent(self, z: torch.Tensor) -> None:
        c = self.config.codec.latent_channels
        if z.dim() != 4 or z.shape[1] != c:
            raise LatentError(
                f"latent has shape {tuple(z.shape)}, but this RAR model ({self.config.name}, latent format "
                f"'{self.config.codec.latent_format}') needs [batch, {c}, h, w]; encode with the matching codec"
            )
        m = max(self.config.uir.patch_size, self.config.adapter.patch)
        if z.shape[-1] % m or z.shape[-2] % m:
            raise LatentError(f"latent size {tuple(z.shape[-2:])} must be a multiple of {m}; pad the image first")
        if not torch.isfinite(z).all():
            raise LatentError("latent contains NaN or infinite values; the input or the codec produced invalid numbers")

    def encode(self, image: torch.Tensor, generator: torch.Generator | None = None,
               on_tile: OnTile | None = None, tile: int | None = None) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> z, in tiles of `tile` px (default `codec_tile`) above that size."""
        if self.codec is None:
            raise RuntimeError("this RAR model has no codec of its own; encode with the SD3.5 VAE")
        self._enter("encode")
        f = self.config.codec.downsample
        x = image.to(self._device_of(self.codec), self._dtype(self.codec))
        return tiling.blend(x, lambda t, _: self.codec.encode(t, generator), *self._codec_grid(f, tile),
                            multiple=f, scale=1 / f, batch=1, on_tile=on_tile).float()

    def decode(self, z: torch.Tensor, on_tile: OnTile | None = None, tile: int | None = None) -> torch.Tensor:
        """z -> [B,3,H,W] in [0,1], in tiles of `tile` px (default `codec_tile`) above that size."""
        if self.codec is None:
            raise RuntimeError("this RAR model has no codec of its own; decode with the SD3.5 VAE")
        self._enter("decode")
        f = self.config.codec.downsample
        side, overlap = (n // f for n in self._codec_grid(f, tile))
        z = z.to(self._device_of(self.codec), self._dtype(self.codec))
        return tiling.blend(z, lambda t, _: self.codec.decode(t), side, overlap, scale=f, batch=1,
                            on_tile=on_tile).float()

    def _codec_grid(self, f: int, tile: int | None = None) -> tuple[int, int]:
        """(tile, overlap) in px for the codec: an eighth of the tile overlaps, on the latent grid."""
        tile = max((tile or self.codec_tile) // (8 * f) * 8 * f, 8 * f)
        return tile, tile // 8

    @staticmethod
    def _dtype(module: nn.Module) -> torch.dtype:
        return compute_dtype(module)

    # ----- the three stages ------------------------------------------------------------
    def lqa_view(self, z: torch.Tensor) -> torch.Tensor:
        """The central window of z the LQA looks at: at most `config.lqa_view` latent pixels a side
        (all of z when the setting is 0 or z fits in it)."""
        v = self.config.lqa_view
        h, w = z.shape[-2:]
        if v <= 0 or (h <= v and w <= v):
            return z
        top, left = max(h - v, 0) // 2, max(w - v, 0) // 2
        return z[..., top : top + v, left : left + v]

    @torch.no_grad()
    def assess(self, z: torch.Tensor, question: str | None = None, free: bool = False) -> Assessment:
        """Identify the main degradation of z (Eq. 1), seen through `lqa_view`; a clean label is
        answered only past `config.clean_margin`."""
        self.check_latent(z)
        self._enter("assess")
        m = self.config.clean_margin
        margins = None if m is None else {label: m for label in self.config.labels if prompts.is_clean(label)}
        a = self.lqa.identify(self.lqa_view(z).to(self._device_of(self.lqa)), self.config.labels, question, free, margins)
        return Assessment(a.text, a.hidden)

    def restore_tiles(self, h: int, w: int) -> tuple[int, int]:
        """(tile, overlap) of the restorer's windows over an h x w latent, in latent px."""
        p, uir = self.config.uir.patch_size, self.config.uir
        if not uir.tile:
            return max(h, w), 0
        tile = min(uir.tile, uir.pos_embed_max_size)  # never beyond the position grid
        return tile * p, min(uir.tile_overlap, (tile - 1) // 2) * p

    def restore_grid(self, h: int, w: int) -> tiling.Grid:
        return tiling.Grid.over(h, w, *self.restore_tiles(h, w), self.config.uir.patch_size)

    @torch.no_grad()
    def restore(self, z: torch.Tensor, assessment: Assessment, steps: int | None = None,
                on_tile: OnTile | None = None) -> torch.Tensor:
        """A_Q(assessment) -> one conditioning per item; K Euler steps of the degraded->clean flow
        from z. Each step's velocity is computed on the restorer's windows (`tile_batch` per
        forward, each window with its item's conditioning) and blended, so all windows follow one
        trajectory. `on_tile(done, total)` counts windows x steps."""
        self.check_latent(z)
        self._enter("restore")
        device = self._device_of(self.uir)
        context, pooled = self.connector.condition([h.to(device) for h in assessment.hidden])
        k = steps or self.config.uir.steps
        flow = FlowEuler(k, self.config.uir.flow_shift)
        tile, overlap = self.restore_tiles(*z.shape[-2:])
        n = len(self.restore_grid(*z.shape[-2:]))
        step = [0]

        def tick(done: int, total: int) -> None:
            if on_tile is not None:
                on_tile(step[0] * n + done, k * n)
            step[0] += done == total

        def velocity(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
            return tiling.blend(x, lambda t, i: self.uir(t, s[i], context[i], pooled[i]), tile, overlap,
                                multiple=self.config.uir.patch_size, batch=self.tile_batch, on_tile=tick)

        return flow.sample(velocity, z.to(device).float())

    @torch.no_grad()
    def verify(self, z_new: torch.Tensor, z_prev: torch.Tensor, question: str | None = None) -> tuple[torch.Tensor, list[str]]:
        """Quality verification (Sec. 5.6): Image A = new, Image B = previous; "Image B" means stop.

        Both latents are seen through the same `lqa_view` window.

        With `config.verify_orders == 2` the pair is also asked swapped (one batched pass) and the
        candidate wins when the summed log-odds exceed `config.verify_margin`.
        """
        self.check_latent(z_new)
        self._enter("verify")
        if self.config.verify_orders != 2:
            device = self._device_of(self.lqa)
            a: Answer = self.lqa.compare(self.lqa_view(z_new).to(device), self.lqa_view(z_prev).to(device), question)
            return torch.tensor([prompts.is_improvement(t) for t in a.text]), a.text
        margin = self.verify_log_odds(z_new, z_prev, question)
        improved = margin > self.config.verify_margin
        verdict = [f"{prompts.COMPARE_ANSWERS[0 if ok else 1]} (both orders, log-odds {m:+.2f})"
                   for ok, m in zip(improved.tolist(), margin.tolist())]
        return improved, verdict

    @torch.no_grad()
    def verify_log_odds(self, z_new: torch.Tensor, z_prev: torch.Tensor, question: str | None = None) -> torch.Tensor:
        """log P(new better) - log P(previous better), summed over both orders, in one batched pass."""
        device = self._device_of(self.lqa)
        z_new, z_prev = self.lqa_view(z_new).to(device), self.lqa_view(z_prev).to(device)
        B = z_new.shape[0]
        a = self.lqa.compare(torch.cat((z_new, z_prev)), torch.cat((z_prev, z_new)), question)
        lp = a.logprob.float().cpu()  # [2B, (Image A, Image B)]
        return (lp[:B, 0] - lp[:B, 1]) + (lp[B:, 1] - lp[B:, 0])

    # ----- the loop --------------------------------------------------------------------
    def run(self, z: torch.Tensor, max_rounds: int = DEFAULT_ROUNDS, steps: int | None = None, mode: str = "adaptive",
            callback: Callable[[int, torch.Tensor], None] | None = None, on_tile: OnTile | None = None,
            protocol: str = "demo", seed: int = 0):
        """The Restore-Assess-Repeat loop on z (loop.run)."""
        from .loop import run

        return run(self, z, max_rounds, steps, mode, callback, on_tile, protocol, seed)
