"""One node per RAR stage: load, encode, assess (LQA identify), restore (UIR), verify (LQA compare), decode.

Each node is a thin adapter: check inputs, prepare() the model, one call into rar_core, return
on intermediate_device(). rar_core.loop is the only place that knows the order of the stages.
"""
from __future__ import annotations

import os

import torch

import comfy.model_management as mm
import comfy.ops
from comfy_api.latest import io, ui

from ..rar_core import checkpoint, prompts
from ..rar_core.loop import CLEAN_TEXT
from ..rar_core.model import Assessment
from . import latent as L
from .model import DTYPES, RARHandle, model_choices, model_path, pick_dtype
from .types import CATEGORY, TIPS, RarAssessment, RarModel


def assessment_to(assessment: Assessment, device) -> Assessment:
    """The same assessment with its per-item LM hidden states on `device`."""
    return Assessment(list(assessment.answer), [h.to(device) for h in assessment.hidden])


def all_clean(handle: RARHandle, assessment) -> bool:
    """True when the model stops on clean images and the LQA called every item clean: restoring
    them would be wasted work (rar_core.loop.judge's rule)."""
    return handle.config.stop_when_clean and all(prompts.is_clean(a) for a in assessment.answer)


def gate_output(latent: dict, improved: list[bool], verdict: list[str]) -> tuple[dict, bool, str]:
    """RAR Verify Gate's outputs; the per-image outcome also rides in the latent for RAR Iterate."""
    latent = {**latent, L.GATE: {"improved": list(improved), "verdict": list(verdict)}}
    return latent, any(improved), "\n".join(verdict)


class RARModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RARModelLoader", display_name="RAR Model Loader", category=CATEGORY,
            description="Loads a RAR model (LQA assessor + UIR restorer) from models/rar, or the built-in compact model.",
            inputs=[
                io.Combo.Input("model_name", options=model_choices(),
                               tooltip="A .safetensors RAR model in ComfyUI/models/rar (the official tier comes from "
                                       "`rar convert`), or the compact CPU model that ships with the pack."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="Weight precision. auto: bf16 on GPUs that support it, else fp32 (fp16 can overflow "
                                       "the language model). The paper runs bf16."),
            ],
            outputs=[RarModel.Output(display_name="rar_model", tooltip=TIPS["rar_model_out"])],
        )

    @classmethod
    def validate_inputs(cls, model_name, dtype):
        # V3 combos are not checked server-side: fail at validation, not halfway through a run.
        if model_name not in model_choices():
            return f"RAR model '{model_name}' is not in models/rar (found: {model_choices() or 'none'})."
        return True

    @classmethod
    def fingerprint_inputs(cls, model_name, dtype):
        """Reload when the file on disk changes, not only when the name does."""
        try:
            st = os.stat(model_path(model_name))
            return (model_name, dtype, st.st_mtime, st.st_size)
        except (OSError, FileNotFoundError):
            return (model_name, dtype)

    @classmethod
    def execute(cls, model_name, dtype) -> io.NodeOutput:
        path = model_path(model_name)
        try:
            compute = pick_dtype(dtype, mm.get_torch_device())
            # ComfyUI's layers (comfy.ops), so that it may load the model in part and cast the rest
            # on the fly; they also compute with weights stored in fp8.
            checkpoint.read_metadata(path)  # a clear error for a file that is no RAR model, first
            ops = comfy.ops.pick_operations(checkpoint.stored_fp8(path) or compute, compute,
                                            load_device=mm.get_torch_device())
            model = checkpoint.load_rar(path, device=mm.unet_offload_device(), dtype=compute, operations=ops)
        except checkpoint.CheckpointError as e:
            raise L.RARNodeError(f"Cannot load RAR model '{model_name}': {e}") from None
        return io.NodeOutput(RARHandle(model, model_name))


class RARLatentEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RARLatentEncode", display_name="RAR Latent Encode", category=CATEGORY,
            description="Encodes an image for RAR: the compact model uses its own codec, the official tier the SD3.5 VAE. "
                        "Odd sizes are padded and cropped back by RAR Latent Decode.",
            inputs=[
                RarModel.Input("rar_model", tooltip=TIPS["rar_model"]),
                io.Image.Input("image", tooltip=TIPS["image"]),
                io.Vae.Input("vae", optional=True, tooltip=TIPS["vae"]),
            ],
            outputs=[io.Latent.Output(tooltip="The image in the model's latent space (raw VAE space, so core "
                                              "latent nodes accept it). It remembers the size before padding, "
                                              "so RAR Latent Decode crops back.")],
        )

    @classmethod
    def execute(cls, rar_model: RARHandle, image, vae=None) -> io.NodeOutput:
        x, size = L.pad_images(rar_model, image)
        cfg = rar_model.config.codec
        if rar_model.official:
            L.check_vae(rar_model, vae)
            raw = vae.encode(x.movedim(1, -1))
            out = {"samples": raw.to(mm.intermediate_device())}
        else:
            device = rar_model.prepare(*x.shape[:1], *x.shape[-2:], parts=("codec",))
            with torch.inference_mode():
                z = rar_model.model.encode(x.to(device))
            out = L.from_z(rar_model, z, {"samples": z})
        out[L.TAG] = cfg.latent_format
        out[L.SIZE] = size
        return io.NodeOutput(out)


class RARAssess(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RARAssess", display_name="RAR Assess", category=CATEGORY,
            description="LQA identification (paper Sec. 3.1): names the main degradation of each image in the latent.",
            inputs=[RarModel.Input("rar_model", tooltip=TIPS["rar_model"]),
                    io.Latent.Input("latent", tooltip=TIPS["latent"])],
            outputs=[RarAssessment.Output(display_name="assessment",
                                          tooltip="What the LQA read from each latent: its hidden states, which "
                                                  "condition RAR Restore through A_Q, and its answer."),
                     io.String.Output(display_name="degradation",
                                      tooltip="The LQA's answer, one line per image: the main degradation it "
                                              "sees (e.g. noise, blur, haze) or clean.")],
        )

    @classmethod
    def execute(cls, rar_model: RARHandle, latent) -> io.NodeOutput:
        L.check_fits(rar_model, latent)
        b, _, h, w = latent["samples"].shape
        f = rar_model.config.codec.downsample
        device = rar_model.prepare(b, h * f, w * f, parts=("lqa",))
        z = L.to_z(rar_model, latent, device)
        with torch.inference_mode():
            assessment = rar_model.model.assess(z)
        text = "\n".join(assessment.answer)
        return io.NodeOutput(assessment_to(assessment, mm.intermediate_device()), text, ui=ui.PreviewText(text))


class RARRestore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RARRestore", display_name="RAR Restore", category=CATEGORY,
            description="One UIR restoration pass (paper Sec. 3.2): K Euler steps of the degraded-to-clean flow, "
                        "conditioned on the assessment.",
            inputs=[
                RarModel.Input("rar_model", tooltip=TIPS["rar_model"]),
                io.Latent.Input("latent", tooltip=TIPS["latent"]),
                RarAssessment.Input("assessment", tooltip="RAR Assess's reading of this latent; its hidden states "
                                                          "condition the restorer."),
                io.Int.Input("steps", default=4, min=1, max=50, tooltip=TIPS["steps"]),
            ],
            outputs=[io.Latent.Output(tooltip="The latent after one restoration pass, not yet verified: feed it "
                                              "to RAR Verify Gate as the candidate.")],
        )

    @classmethod
    def execute(cls, rar_model: RARHandle, latent, assessment, steps) -> io.NodeOutput:
        b, _, h, w = latent["samples"].shape
        if len(assessment.answer) != b:
            raise L.RARNodeError(f"The assessment is for {len(assessment.answer)} images but the latent holds {b}.")
        L.check_fits(rar_model, latent)
        f = rar_model.config.codec.downsample
        device = rar_model.prepare(b, h * f, w * f, parts=("restorer",))
        z = L.to_z(rar_model, latent, device)
        with torch.inference_mode():
            z_new = rar_model.model.restore(z, assessment_to(assessment, device), steps)
        return io.NodeOutput(L.from_z(rar_model, z_new, latent))


class RARVerifyGate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RARVerifyGate", display_name="RAR Verify Gate", category=CATEGORY,
            description="LQA comparison (paper Sec. 3.3): keeps the candidate where the LQA prefers it, else the previous "
                        "latent. Given an assessment that calls every image clean, the candidate (and the restore that "
                        "makes it) is never computed.",
            inputs=[
                RarModel.Input("rar_model", tooltip=TIPS["rar_model"]),
                io.Latent.Input("previous", lazy=True, tooltip="The latent before this round; kept where the LQA "
                                                               "prefers it (the paper's rollback)."),
                io.Latent.Input("candidate", lazy=True, tooltip="The restored latent from RAR Restore; computed "
                                                                "only when some image is not clean."),
                RarAssessment.Input("assessment", optional=True,
                                    tooltip="The assessment of `previous`; lets the gate skip clean images."),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Per image, the candidate where the LQA "
                                                                     "prefers it, else the previous latent."),
                     io.Boolean.Output(display_name="improved", tooltip="True when at least one image took its "
                                                                        "candidate."),
                     io.String.Output(display_name="verdict", tooltip="The LQA's comparison of candidate and "
                                                                      "previous, one line per image.")],
        )

    @classmethod
    def check_lazy_status(cls, rar_model, previous=None, candidate=None, assessment=None):
        if assessment is not None and all_clean(rar_model, assessment):
            return ["previous"] if previous is None else []
        return [name for name, v in (("previous", previous), ("candidate", candidate)) if v is None]

    @classmethod
    def execute(cls, rar_model: RARHandle, previous, candidate=None, assessment=None) -> io.NodeOutput:
        if candidate is None:  # everything was clean: nothing to compare
            b = previous["samples"].shape[0]
            return io.NodeOutput(*gate_output(previous, [False] * b, [CLEAN_TEXT] * b))
        if candidate["samples"].shape != previous["samples"].shape:
            raise L.RARNodeError(f"Candidate {tuple(candidate['samples'].shape)} and previous "
                                 f"{tuple(previous['samples'].shape)} latents differ in shape.")
        L.check_fits(rar_model, previous)
        b, _, h, w = previous["samples"].shape
        f = rar_model.config.codec.downsample
        device = rar_model.prepare(2 * b, h * f, w * f, parts=("lqa",))
        z_prev = L.to_z(rar_model, previous, device)
        z_new = L.to_z(rar_model, candidate, device)
        with torch.inference_mode():
            improved, verdict = rar_model.model.verify(z_new, z_prev)
        keep = improved.to(device).view(-1, 1, 1, 1)
        z = torch.where(keep, z_new, z_prev)
        return io.NodeOutput(*gate_output(L.from_z(rar_model, z, previous), improved.tolist(), verdict))


class RARLatentDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RARLatentDecode", display_name="RAR Latent Decode", category=CATEGORY,
            description="Decodes a compact-model latent with its codec. Official-tier latents decode with core VAE Decode.",
            inputs=[RarModel.Input("rar_model", tooltip=TIPS["rar_model"]),
                    io.Latent.Input("latent", tooltip="A compact-model latent from RAR Latent Encode, RAR Loop, "
                                                      "RAR Iterate or the stage nodes.")],
            outputs=[io.Image.Output(tooltip="The decoded image, cropped back to its size before padding.")],
        )

    @classmethod
    def execute(cls, rar_model: RARHandle, latent) -> io.NodeOutput:
        if rar_model.official:
            raise L.RARNodeError("The official RAR tier decodes with the SD3.5 VAE: use core VAE Decode.")
        b, _, h, w = latent["samples"].shape
        f = rar_model.config.codec.downsample
        device = rar_model.prepare(b, h * f, w * f, parts=("codec",))
        z = L.to_z(rar_model, latent, device)
        with torch.inference_mode():
            x = rar_model.model.decode(z)
        x = x[..., : h * f, : w * f]
        return io.NodeOutput(L.crop_images(x, latent.get(L.SIZE)))
