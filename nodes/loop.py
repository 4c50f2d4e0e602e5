"""The repetition: RAR Loop (rar_core's loop in one node), RAR Iterate (the same loop as graph
expansion of the stage nodes) and RAR Restore Image (image in, image out).

RAR Loop and RAR Restore Image call rar_core.loop.run, so they cannot drift from `rar restore`;
large images are rar_core's business too (one decision per image, the restorer and codec in tiles),
and the nodes only show its progress: one bar over rounds x tiles, interruptible between tiles.
RAR Iterate expands the stage nodes, which call the same rar_core methods run() calls, item for
item, and folds each round with rar_core's own rule and bookkeeping (loop.judge, LoopState.fold).
"""
from __future__ import annotations

import json
import logging

import torch
import torch.nn.functional as F
from PIL import Image

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import GraphBuilder

from ..rar_core.codec import denormalise, normalise
from ..rar_core.config import DEFAULT_ROUNDS, DEFAULT_STEPS, PROTOCOLS, ROUNDS_LIMIT
from ..rar_core.loop import CLEAN_TEXT, MODES, LoopState, Round, Verdict, judge, restore_image
from . import latent as L
from .model import RARHandle, is_oom
from .types import CATEGORY, RarModel
from .types import TIPS

ITERATE_MAX_ROUNDS = 32  # each round expands the graph again: ComfyUI's expansion overhead grows quadratically with depth
LOOP_MAX_ROUNDS = ROUNDS_LIMIT
PREVIEW_LATENT_SIDE = 32  # previews decode a latent pooled to at most this many latent pixels a side
STATE = "rar_iterate_state"  # private key: RAR Iterate's loop state, carried inside the latent dict between rounds


def trace_json(rounds: list[int], trace: list[list[dict]], tiles: int = 1) -> str:
    """Per-item rounds and per-round records (each for the whole image), plus the restorer's tile
    count when the image took more than one."""
    items = [{"item": i, "rounds": r, "trace": t} for i, (r, t) in enumerate(zip(rounds, trace))]
    if tiles > 1:
        for item in items:
            item["tiles"] = tiles
    return json.dumps(items, indent=1)


def summary(rounds: list[int], trace: list[list[dict]], tiles: int = 1) -> str:
    lines = []
    where = f" ({tiles} tiles)" if tiles > 1 else ""
    for i, (r, t) in enumerate(zip(rounds, trace)):
        steps = ", ".join(f"{d['answer']} -> {'accepted' if d['accepted'] else 'rejected'}" for d in t)
        lines.append(f"image {i}: {r} round(s) accepted{where}. {steps}")
    return "\n".join(lines)


def preview(handle: RARHandle, z: torch.Tensor):
    """A cheap preview of the first item for the progress bar: decode a pooled latent (compact) or
    use SD3's linear latent->RGB factors (official, whose VAE is not ours to run here)."""
    z0 = z[:1].float()
    while max(z0.shape[-2:]) > PREVIEW_LATENT_SIDE:
        z0 = F.avg_pool2d(z0, 2)
    with torch.inference_mode():
        if handle.official:
            fmt = comfy.latent_formats.SD3()
            raw = fmt.process_out(z0)
            factors = torch.tensor(fmt.latent_rgb_factors, device=raw.device)
            bias = torch.tensor(fmt.latent_rgb_factors_bias, device=raw.device)
            x = (torch.einsum("bchw,cr->brhw", raw, factors) + bias.view(1, 3, 1, 1) + 1) / 2
        else:
            x = handle.model.decode(z0)
    x = (x[0].clamp(0, 1).movedim(0, -1).cpu().numpy() * 255).astype("uint8")
    return ("JPEG", Image.fromarray(x), 512)


class Progress:
    """One progress bar for a node's whole run: max_rounds x the restorer's tiles x Euler steps
    (rar_core's `on_tile(done, total)`), an interrupt check between any tiles (the codec's too),
    and a preview after each round."""

    def __init__(self, handle: RARHandle, max_rounds: int, steps: int, latent_hw: tuple[int, int], node_id=None):
        self.handle, self.round = handle, 0
        self.per_round = len(handle.model.restore_grid(*latent_hw)) * steps
        self.pbar = comfy.utils.ProgressBar(max_rounds * self.per_round, node_id=node_id)

    def on_tile(self, done: int, total: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        if total == self.per_round:  # the restorer's tiles; the codec's only check for interrupts
            self.pbar.update_absolute(self.round * total + done)

    def callback(self, n: int, z_now: torch.Tensor) -> None:
        mm.throw_exception_if_processing_interrupted()
        self.round = n
        self.pbar.update_absolute(n * self.per_round, preview=preview(self.handle, z_now))


def work_size(handle: RARHandle, h: int, w: int) -> tuple[int, int]:
    """The largest piece (px) one forward sees, for the memory estimate: rar_core tiles the rest."""
    cfg, model = handle.config, handle.model
    side = max(model.codec_tile, cfg.uir.tile * cfg.uir.patch_size * cfg.codec.downsample) if cfg.uir.tile else max(h, w)
    return min(h, side), min(w, side)


def with_oom_fallback(model, work):
    """work(), once more with one restorer tile per forward if the device runs out of memory."""
    try:
        return work()
    except Exception as e:
        if not is_oom(e):
            raise
        logging.warning("RAR: out of memory; retrying with one tile per forward")
        mm.soft_empty_cache()
    saved, model.tile_batch = model.tile_batch, 1
    try:
        return work()
    finally:
        model.tile_batch = saved


def loop_settings(max_rounds: int) -> list:
    """The widgets every loop node shares, in their shipped order: max_rounds, steps, mode."""
    return [io.Int.Input("max_rounds", default=DEFAULT_ROUNDS, min=1, max=max_rounds,
                         tooltip=TIPS["max_rounds"].format(max=max_rounds)),
            io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=50, tooltip=TIPS["steps"]),
            io.Combo.Input("mode", options=list(MODES), default="adaptive", tooltip=TIPS["mode"])]


def protocol_input():
    """Appended after the shipped inputs of RAR Loop and RAR Restore Image (widget order is append-only)."""
    return io.Combo.Input("protocol", options=list(PROTOCOLS), default="demo", optional=True, tooltip=TIPS["protocol"])


def loop_outputs() -> list:
    """RAR Loop's and RAR Iterate's outputs (fresh objects: a schema owns its outputs)."""
    return [io.Latent.Output(tooltip=TIPS["latent_out"]),
            io.Int.Output(display_name="rounds", tooltip=TIPS["rounds"]),
            io.String.Output(display_name="trace", tooltip=TIPS["trace"])]


class RARLoop(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RARLoop", display_name="RAR Loop", category=CATEGORY,
            description="Restore, Assess, Repeat in one node: assess, restore, verify, repeat until the LQA rejects a "
                        "round or max_rounds. Every image of a batch stops on its own.",
            inputs=[
                RarModel.Input("rar_model", tooltip=TIPS["rar_model"]),
                io.Latent.Input("latent", tooltip=TIPS["latent"]),
                *loop_settings(LOOP_MAX_ROUNDS),
                protocol_input(),
            ],
            outputs=loop_outputs(),
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, rar_model: RARHandle, latent, max_rounds, steps, mode, protocol="demo") -> io.NodeOutput:
        b, _, h, w = latent["samples"].shape
        f = rar_model.config.codec.downsample
        size = work_size(rar_model, h * f, w * f)
        device = rar_model.prepare(2 * b, *size, parts=("restorer",))
        z = L.to_z(rar_model, latent, device)
        bar = Progress(rar_model, max_rounds, steps, (h, w), cls.hidden.unique_id if cls.hidden is not None else None)

        def work():
            with torch.inference_mode():
                return rar_model.model.run(z, max_rounds=max_rounds, steps=steps, mode=mode, callback=bar.callback,
                                           on_tile=bar.on_tile, protocol=protocol)

        with rar_model.staged_loading(2 * b, *size):
            res = with_oom_fallback(rar_model.model, work)
        return io.NodeOutput(L.from_z(rar_model, res.latent, latent), max(res.rounds),
                             trace_json(res.rounds, res.trace, res.tiles),
                             ui=ui.PreviewText(summary(res.rounds, res.trace, res.tiles)))


def _select(latent: dict, idx: list[int]) -> dict:
    """The active items of a LATENT batch (keys other than samples are per-batch metadata)."""
    out = dict(latent)
    out["samples"] = latent["samples"][idx]
    out.pop("noise_mask", None)
    out.pop("batch_index", None)
    out.pop(L.GATE, None)  # an earlier gate's outcome, not this round's
    return out


class RARIterate(io.ComfyNode):
    """Tail-recursive graph expansion: each round expands RAR Assess -> RAR Restore -> RAR Verify Gate
    on the still-active items, followed by another RAR Iterate that merges the round's result."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RARIterate", display_name="RAR Iterate", category=CATEGORY,
            description="The RAR loop as a graph: expands the stage nodes once per round, so each stage runs (and is "
                        f"cached, interrupted and timed) as its own node. At most {ITERATE_MAX_ROUNDS} rounds; use "
                        "RAR Loop for more.",
            inputs=[
                RarModel.Input("rar_model", tooltip=TIPS["rar_model"]),
                io.Latent.Input("latent", tooltip=TIPS["latent"]),
                *loop_settings(ITERATE_MAX_ROUNDS),
            ],
            outputs=loop_outputs(),
            enable_expand=True,
        )

    @classmethod
    def execute(cls, rar_model: RARHandle, latent, max_rounds, steps, mode,
                round_latent=None, round_assessment=None) -> io.NodeOutput:
        """Round inputs arrive as links from the previous expansion (undeclared inputs that are links are
        resolved by the executor); the loop state rides along in the latent dict under STATE."""
        if mode not in MODES:
            raise L.RARNodeError(f"mode must be one of {MODES}, got {mode!r}")
        max_rounds = min(max_rounds, ITERATE_MAX_ROUNDS)
        latent = dict(latent)
        state: LoopState | None = latent.pop(STATE, None)
        latent.pop(L.GATE, None)  # a gate's outcome describes the latent it came out of, not this loop's
        if state is None:
            L.check_latent(rar_model, latent)
            L.check_fits(rar_model, latent)
            state = LoopState.start(latent["samples"].clone(), mode)
        else:
            state = cls._merge(rar_model, state, round_latent, round_assessment)
            latent["samples"] = state.z
            latent[L.TAG] = round_latent.get(L.TAG, latent.get(L.TAG))
        # One bar per run: each expansion reports the rounds done so far (ComfyUI shows an expanded
        # node's progress on the RAR Iterate node the user placed), with a preview of the latent.
        comfy.utils.ProgressBar(max_rounds).update_absolute(state.n, max_rounds, preview(rar_model, latent["samples"]))
        if state.done(max_rounds):
            return io.NodeOutput(latent, max(state.rounds), trace_json(state.rounds, state.trace),
                                 ui=ui.PreviewText(summary(state.rounds, state.trace)))

        g = GraphBuilder()
        sub = _select(latent, state.active)
        links = {}
        if mode == "once" and state.assessment is not None:
            assessment = state.assessment
        else:
            assessment = g.node("RARAssess", rar_model=rar_model, latent=sub).out(0)
            links["round_assessment"] = assessment
        restore = g.node("RARRestore", rar_model=rar_model, latent=sub, assessment=assessment, steps=steps)
        if mode == "fixed":
            links["round_latent"] = restore.out(0)
        else:
            gate = g.node("RARVerifyGate", rar_model=rar_model, previous=sub, candidate=restore.out(0),
                          assessment=assessment)
            links["round_latent"] = gate.out(0)
        nxt = g.node("RARIterate", rar_model=rar_model, latent={**latent, STATE: state}, max_rounds=max_rounds,
                     steps=steps, mode=mode, **links)
        return io.NodeOutput(nxt.out(0), nxt.out(1), nxt.out(2), expand=g.finalize())

    @staticmethod
    def _merge(rar_model: RARHandle, state: LoopState, round_latent: dict, round_assessment) -> LoopState:
        """Fold one round into a copy of the state with rar_core's own rule (loop.judge) and
        bookkeeping (LoopState.fold), as RAR.run does; the gate's outcome rides in its latent."""
        state = state.copy()
        assessment = state.assessment if state.assessment is not None else round_assessment
        gate = round_latent.get(L.GATE) if state.mode != "fixed" else None
        improved = gate["improved"] if gate is not None else None
        verdicts = judge(state.mode, assessment.answer, improved, rar_model.config.stop_when_clean)
        texts = [CLEAN_TEXT if v is Verdict.CLEAN else gate["verdict"][j] if gate is not None else v.value
                 for j, v in enumerate(verdicts)]
        state.fold(Round(list(assessment.answer), verdicts, texts, round_latent["samples"], assessment))
        return state


class RARRestoreImage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RARRestoreImage", display_name="RAR Restore Image", category=CATEGORY,
            description="Image in, restored image out: encode, RAR loop, decode in one node. Pads odd sizes and crops "
                        "back; falls back to tiles when the image does not fit in memory.",
            inputs=[
                RarModel.Input("rar_model", tooltip=TIPS["rar_model"]),
                io.Image.Input("image", tooltip=TIPS["image"]),
                *loop_settings(LOOP_MAX_ROUNDS),
                io.Vae.Input("vae", optional=True, tooltip=TIPS["vae"]),
                protocol_input(),
            ],
            outputs=[io.Image.Output(tooltip="The restored image(s), the same size as the input."),
                     io.String.Output(display_name="trace", tooltip=TIPS["trace"])],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, rar_model: RARHandle, image, max_rounds, steps, mode, vae=None, protocol="demo") -> io.NodeOutput:
        x = L.to_bchw(image)
        if rar_model.official:
            L.check_vae(rar_model, vae)
        b, _, h, w = x.shape
        size = work_size(rar_model, h, w)
        device = rar_model.prepare(2 * b, *size, parts=("restorer",))
        m = rar_model.config.pixel_multiple
        f = rar_model.config.codec.downsample
        latent_hw = (-(-h // m) * m // f, -(-w // m) * m // f)
        bar = Progress(rar_model, max_rounds, steps, latent_hw, cls.hidden.unique_id if cls.hidden is not None else None)

        # Exactly what `rar restore` runs; the official tier swaps in the user's SD3.5 VAE as codec.
        codec = vae_codec(rar_model, vae) if rar_model.official else {}
        x = x.to(mm.intermediate_device() if rar_model.official else device)

        def work():
            with torch.inference_mode():
                return restore_image(rar_model.model, x, max_rounds, steps, mode, callback=bar.callback,
                                     on_tile=bar.on_tile, protocol=protocol, **codec)

        with rar_model.staged_loading(2 * b, *size):
            res = with_oom_fallback(rar_model.model, work)
        return io.NodeOutput(res.image.movedim(1, -1).float().to(mm.intermediate_device()),
                             trace_json(res.rounds, res.trace, res.tiles),
                             ui=ui.PreviewText(summary(res.rounds, res.trace, res.tiles)))


def vae_codec(handle: RARHandle, vae) -> dict:
    """encode/decode for restore_image from the user's SD3.5 VAE (ComfyUI manages its memory)."""
    cfg = handle.config.codec

    def encode(x):
        return normalise(vae.encode(x.movedim(1, -1)).float(), cfg)

    def decode(z):
        return vae.decode(denormalise(z.float(), cfg).to(mm.intermediate_device())).movedim(-1, 1).float()

    return {"encode": encode, "decode": decode}
