"""Staged training of a RAR model (Sec. 6), sized so the compact recipe runs on 2 CPU cores.

    codec      the latent codec (L1 + MSE reconstruction), then the latent normalisation stats
    uir        the restorer alone on single degradations, degraded->clean flow loss (Eq. 4)
    lqa        A_I + the IQA LM on identification and A/B comparison questions (LM loss)
    connector  A_Q + restorer on single and composite degradations, LQA frozen (teacher forced)
    e2e        recurrent end-to-end training (Eq. 5-6): 4 rounds weighted (0.2, 0.3, 0.4, 1.0),
               each round's predicted clean latent feeds the next without a gradient cut
    decoder    decoder-only fine-tuning of the codec: the encoder (so every latent the other
               stages learned on) stays fixed, only the final decode gets sharper
    verify     the LQA alone on the pairs the loop asks about: the trained restorer's own rounds
               (K Euler steps, as at inference), ranked by PSNR against the clean photo, near-ties
               skipped, plus clean-vs-degraded pairs; the identification hidden states A_Q reads
               are held to a frozen copy's so the restorer's conditioning does not drift
               (optional, not in `all`: it is not part of the shipped recipe, BENCHMARKS.md)

Every stage reads the previous stage's model file and writes its own; training state (model,
optimiser, step) is checkpointed to safetensors so a stopped run resumes where it was. Random
draws depend on (seed, step) only, so a resumed run sees the same batches as an unbroken one.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from . import degrade as D
from . import prompts
from .checkpoint import build_model, load_rar, save_rar
from .config import PRESETS, RARConfig
from .loop import RAR
from .uir import flow_loss, sample_s

# The paper's order (Sec. 6.1): UIR pre-training, LQA stages, connector, end-to-end.
STAGES = ("codec", "uir", "lqa", "connector", "e2e", "decoder")
# Ours, after the paper's stages and outside `all`: the e2e stage's one-step rounds are not the loop's.
OPTIONAL = ("verify",)
PREVIOUS = {"codec": None, "uir": "codec", "lqa": "uir", "connector": "lqa", "e2e": "connector", "decoder": "e2e",
            "verify": "decoder"}
STAGE_SEED = {"codec": 0, "lqa": 1, "uir": 2, "connector": 3, "e2e": 4, "decoder": 5, "verify": 6}  # fixed, whatever the order
ROUND_WEIGHTS = (0.2, 0.3, 0.4, 1.0)
CLEAN = "Clean"


@dataclass
class StageConfig:
    steps: int
    batch: int
    crop: int
    lr: float
    log_every: int = 25
    save_every: int = 200
    # Mixed crop sides: each step draws one (so the LQA meets the token counts of inference);
    # the batch shrinks in proportion to the side to keep a step's cost near that at `crop`.
    crops: tuple[int, ...] = ()
    # Weight of the texture term of the codec's reconstruction loss (codec and decoder stages).
    # Off in the shipped recipe: it keeps more of the input's grain in the latent, but did not
    # yet lift identification (BENCHMARKS.md, "texture experiment").
    texture: float = 0.0
    # Weight of the verification (A/B comparison) loss in the e2e stage, against the flow loss.
    compare: float = 0.1
    # Share of identification batches in the LQA stage (the rest are A/B comparisons). Naming the
    # degradation takes far more samples to learn than comparing (BENCHMARKS.md, identification).
    identify: float = 0.5
    # e2e stage: take the identification LM loss on the input round only, not the mean over rounds
    # (off in the shipped recipe; BENCHMARKS.md, sixth session).
    identify_input_only: bool = False
    # e2e stage: label which of two successive rounds is better by pixel error against the clean
    # photo, round 0 being the input's own pixels (what the loop returns when it rejects round 1),
    # instead of latent distance to the clean latent. Noise hardly moves the latent, so by latent
    # distance a noisy input can beat a round that gained 7 dB (BENCHMARKS.md, seventh session).
    verify_pixels: bool = False
    # Verify stage: successive rounds closer than this (dB, decoded, against the clean photo) are
    # near-ties whose order the LQA cannot learn; such pairs are skipped.
    tie_db: float = 0.25
    # Verify stage: weight of the term holding the identification hidden states to the frozen
    # LQA's (relative MSE), so A_Q's input stays the one the restorer was trained with (a run at
    # 1 that also trained identification drifted 1 %, which cost the first round 0.13 dB).
    keep: float = 10.0
    # Verify stage: leave the LM's output head as it is, so the identification answers move only
    # as far as the hidden states `keep` holds.
    freeze_head: bool = False
    # Parts of the model the stage leaves as they are ("lqa", "connector", "uir"), e.g. an e2e
    # stage that adapts A_Q alone to a restorer and an LQA it must not disturb.
    freeze: tuple[str, ...] = ()
    # Forward arithmetic: "bf16" runs the step under torch.autocast (weights, optimizer and
    # gradients stay fp32). On a CPU with AMX or AVX512-BF16 a large matmul runs about four times
    # as fast as in fp32, a whole restorer stage 1.2 times (the data does not speed up); on a CPU
    # without, bf16 is emulated and slower. fp32 is the default until a bf16 stage is shown to
    # restore as well (BENCHMARKS.md, fifteenth session).
    precision: str = "fp32"

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """(crop side, batch size) of one step."""
        if not self.crops:
            return self.crop, self.batch
        side = int(self.crops[int(rng.integers(len(self.crops)))])
        return side, max(1, round(self.batch * self.crop / side))


# `rar train --stage all` on 2 CPU cores: 4 h 48 min, measured stage by stage (codec 34 min, uir
# 97, lqa 93, connector 16, e2e 44, decoder 4; BENCHMARKS.md); it makes the shipped model. The
# codec got 3.5x the steps of the one-hour recipe it replaced because every later stage learns its
# latent space. The restorer, the LQA and the connector train at the first GPU recipe's sizes
# (batches of 96, 128 and 96) because what they are shown, not how many steps they take, is what
# moved the eval set; on a CPU a restorer crop costs the same in a batch of 96 as in one of 16.
# The e2e stage draws crop sides up to 256 px, the bench's size (the first among them, 96, sets
# the batch scale; the order fixes the draws).
DEFAULTS = {
    "codec": StageConfig(steps=7000, batch=12, crop=64, lr=1e-3),
    "lqa": StageConfig(steps=1925, batch=128, crop=64, lr=5e-4, crops=(64, 128, 192, 256)),
    "uir": StageConfig(steps=1100, batch=96, crop=128, lr=4e-4),
    "connector": StageConfig(steps=200, batch=96, crop=128, lr=2e-4),
    "e2e": StageConfig(steps=2500, batch=6, crop=96, lr=1e-4, crops=(96, 64, 128, 192, 256)),
    "decoder": StageConfig(steps=1000, batch=8, crop=96, lr=5e-4),
    "verify": StageConfig(steps=1500, batch=8, crop=128, lr=1e-4, crops=(64, 128, 192, 256)),
}


# ----- data ---------------------------------------------------------------------------------
class PhotoPool:
    """Clean training photos in memory (train split of the fetched manifest only)."""

    def __init__(self, data: Path, max_side: int = 512):
        manifest = json.loads((data / "manifest.json").read_text())
        files = [data / i["file"] for i in manifest["images"] if i["split"] == "train"]
        if not files:
            raise SystemExit(f"no training images in {data}; run `python scripts/fetch_data.py --out {data}` first")
        self.images, self._pil = [], []
        for f in files:
            with Image.open(f) as im:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side), Image.LANCZOS)
                self._pil.append(im)
                self.images.append(np.asarray(im, dtype=np.float32) / 255.0)

    def crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        i = int(rng.integers(len(self.images)))
        img = self.images[i]
        h, w = img.shape[:2]
        # Random scale so the model sees textures at several sizes.
        s = rng.uniform(size / min(h, w), 1.0) if min(h, w) > size else size / min(h, w)
        if abs(s - 1.0) > 1e-3:
            # Resample only the window the crop comes from (a whole-image resize per crop made
            # the data loader, not the model, the bottleneck of GPU training).
            side = size / s
            y, x = rng.uniform(0, max(0.0, h - side)), rng.uniform(0, max(0.0, w - side))
            box = (x, y, min(w, x + side), min(h, y + side))
            out = np.asarray(self._pil[i].resize((size, size), Image.BICUBIC, box=box), dtype=np.float32) / 255
        else:
            y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
            out = img[y : y + size, x : x + size]
        if rng.random() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


def primary(labels: list[str]) -> str:
    """The degradation to name first: the outermost one (last applied, first to undo)."""
    return D.ANSWERS[labels[-1]] if labels else CLEAN


def degraded_sample(pool: PhotoPool, rng: np.random.Generator, size: int, composite_p: float, clean_p: float = 0.0):
    clean = pool.crop(rng, size)
    u = rng.random()
    if u < clean_p:
        return clean, clean, []
    s = D.random_composite(clean, rng) if u < clean_p + composite_p else D.random_single(clean, rng)
    return clean, s.image, s.labels


def to_tensor(arrs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


# ----- resumable state ----------------------------------------------------------------------
def save_state(path: Path, model: RAR, opt: torch.optim.Optimizer, step: int) -> None:
    """Model + optimiser state as safetensors (no pickle); param_groups go to the metadata."""
    tensors = {f"model/{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt/{pid}/{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).contiguous()
    meta = {"step": str(step), "param_groups": json.dumps(sd["param_groups"]), "config": model.config.to_json()}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_state(path: Path, model: RAR, opt: torch.optim.Optimizer) -> int:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        model.load_state_dict({k[6:]: f.get_tensor(k) for k in f.keys() if k.startswith("model/")})
        state: dict[int, dict] = {}
        for k in f.keys():
            if k.startswith("opt/"):
                _, pid, name = k.split("/", 2)
                state.setdefault(int(pid), {})[name] = f.get_tensor(k)
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"])


# ----- stages -------------------------------------------------------------------------------
FREEZABLE = ("lqa", "connector", "uir")  # parts `--freeze` may hold (RAR attributes)


def trainable(model: RAR, stage: str, freeze_head: bool = False, freeze: tuple[str, ...] = ()) -> list[torch.nn.Parameter]:
    """The parameters a stage trains, less the `freeze` parts."""
    unknown = set(freeze) - set(FREEZABLE)
    if unknown:
        raise SystemExit(f"--freeze names unknown parts {sorted(unknown)}; choose from {', '.join(FREEZABLE)}")
    for p in model.parameters():
        p.requires_grad_(False)
    parts = {
        "codec": [model.codec],
        "lqa": [model.lqa],
        "uir": [model.uir],
        "connector": [model.connector, model.uir],
        "e2e": [model.connector, model.uir, model.lqa],
        "decoder": [model.codec.vae.decoder, model.codec.vae.post_quant_conv],
        "verify": [model.lqa],
    }[stage]
    held = [getattr(model, name) for name in freeze]
    parts = [m for m in parts if m is not None and not any(m is h for h in held)]
    if not parts:
        raise SystemExit(f"--freeze {','.join(freeze)} leaves stage '{stage}' nothing to train")
    frozen = {id(p) for p in model.lqa.lm.lm_head.parameters()} if freeze_head and stage == "verify" else set()
    params = [p for m in parts for p in m.parameters() if id(p) not in frozen]
    for p in params:
        p.requires_grad_(True)
    return params


# Each stage is a batch maker (numpy, run in DataLoader workers; every random draw comes from the
# step's own rng) and a step (torch, on the training device).
def batch_images(pool, rng, batch, crop):
    """Clean and degraded photos alike: the codec must reconstruct whatever it is given, as the
    SD3.5 VAE does, since every latent the LQA and the restorer read is of a degraded image."""
    samples = [degraded_sample(pool, rng, crop, composite_p=0.15, clean_p=0.5) for _ in range(batch)]
    return {"x": to_tensor([s[1] for s in samples]), "labels": [s[2] for s in samples]}


def batch_lqa(pool, rng, batch, crop, identify: float = 0.5):
    """Identification (a share `identify` of the batches) or comparison; answers come from the labels."""
    if rng.random() < identify:
        samples = [degraded_sample(pool, rng, crop, composite_p=0.35, clean_p=0.12) for _ in range(batch)]
        return {"kind": "identify", "x": to_tensor([s[1] for s in samples]), "answers": [primary(s[2]) for s in samples],
                "q": int(rng.integers(len(prompts.IDENTIFY)))}
    better, worse = [], []
    for _ in range(batch):
        clean, deg, _ = degraded_sample(pool, rng, crop, composite_p=0.35)
        if rng.random() < 0.5:  # clean vs degraded
            better.append(clean)
        else:  # less vs more degraded: the same degradations, a partial blend towards clean
            a = rng.uniform(0.0, 0.6)
            better.append((a * clean + (1 - a) * deg).astype(np.float32) if rng.random() < 0.5 else clean)
        worse.append(deg)
    swap = rng.random(batch) < 0.5  # B is the better one
    first = [w if s else g for g, w, s in zip(better, worse, swap)]
    second = [g if s else w for g, w, s in zip(better, worse, swap)]
    return {"kind": "compare", "a": to_tensor(first), "b": to_tensor(second),
            "answers": ["Image B" if s else "Image A" for s in swap.tolist()],
            "q": int(rng.integers(len(prompts.COMPARE)))}


def batch_pairs(composite_p: float, clean_p: float = 0.0, rounds: int = 0):
    def make(pool, rng, batch, crop):
        samples = [degraded_sample(pool, rng, crop, composite_p=composite_p, clean_p=clean_p) for _ in range(batch)]
        out = {"hq": to_tensor([s[0] for s in samples]), "deg": to_tensor([s[1] for s in samples]),
               "answers": [primary(s[2]) for s in samples]}
        if rounds:  # e2e: a question per round and the A/B order of the verification pair
            out["qs"] = [int(rng.integers(len(prompts.IDENTIFY))) for _ in range(rounds)]
            out["swap"] = torch.from_numpy(rng.random(batch) < 0.5)
            out["pair"] = torch.from_numpy(rng.integers(0, rounds, batch))  # verify round k+1 against round k
        return out
    return make


def batch_verify(pool, rng, batch, crop):
    """Degraded photos for the verify stage; the pairs come from the restorer's rounds in the step.
    u[i] = (which image the clean photo is paired with, which round is identified) for sample i."""
    samples = [degraded_sample(pool, rng, crop, composite_p=0.6) for _ in range(batch)]
    return {"hq": to_tensor([s[0] for s in samples]), "deg": to_tensor([s[1] for s in samples]),
            "answers": [primary(s[2]) for s in samples], "q": int(rng.integers(len(prompts.IDENTIFY))),
            "cq": int(rng.integers(len(prompts.COMPARE))), "u": torch.from_numpy(rng.random((batch, 2)))}


def local_energy(x: torch.Tensor, window: int = 8) -> torch.Tensor:
    """Mean |high-pass| of x over windows: how much fine texture (noise, blocking, streaks) a
    region holds, whatever its phase."""
    hp = x - F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    return F.avg_pool2d(hp.abs(), window)


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, texture: float) -> torch.Tensor:
    """L1 + MSE, plus an optional texture term. Pixel losses alone teach the codec to drop what it
    cannot place exactly (noise, grain), so its latent keeps little of it; the SD3.5 VAE keeps it
    thanks to its perceptual and adversarial losses. Matching the local energy of the high
    frequencies is their cheap stand-in: it pays the latent to carry how much texture a region
    has, not where each grain sits."""
    rec = rec.float()  # the losses in fp32 under bf16 autocast
    loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
    return loss + texture * F.l1_loss(local_energy(rec), local_energy(x)) if texture else loss


def step_codec(model, b, gen, cfg):
    x = b["x"]
    dist = model.codec.vae.encode(x * 2 - 1).latent_dist
    rec = (model.codec.vae.decode(dist.sample(gen)).sample + 1) / 2
    kl = dist.kl().float().mean() / x[0].numel()
    loss = reconstruction_loss(rec, x, cfg.texture) + 1e-4 * kl
    return loss, {"psnr": psnr(rec, x)}


def psnr(rec: torch.Tensor, x: torch.Tensor) -> float:
    return -10 * math.log10(F.mse_loss(rec.detach().clamp(0, 1), x).item() + 1e-12)


@torch.no_grad()
def encode(model: RAR, x: torch.Tensor) -> torch.Tensor:
    return model.codec.encode(x).float()  # fp32 latents under bf16 autocast: flow targets are their differences


def step_lqa(model, b, gen, cfg):
    lqa = model.lqa
    if b["kind"] == "identify":
        prefix = lqa.prompt_embeds(prompts.identify_segments(prompts.IDENTIFY[b["q"]]), [encode(model, b["x"])])
        _, loss = lqa.teacher_forced(prefix, b["answers"])
        return loss, {"kind": 0.0}
    prefix = lqa.prompt_embeds(prompts.compare_segments(prompts.COMPARE[b["q"]]), [encode(model, b["a"]), encode(model, b["b"])])
    _, loss = lqa.teacher_forced(prefix, b["answers"])
    return loss, {"kind": 1.0}


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (x - ref).pow(2).mean() / ref.pow(2).mean()


def distil_condition(model: RAR, reference: RAR, z_hq: torch.Tensor, z_deg: torch.Tensor, answers: list[str]):
    """A_Q alone learns to give the frozen restorer the conditioning the reference's LQA and A_Q
    gave it, from this model's LQA: the relative squared error of A_Q's context and pooled vector
    on degraded latents and on clean ones (which stand in for the restored rounds the loop also
    assesses). Matching the restorer's flow velocity as well did worse (BENCHMARKS.md, eighth
    session): relative to the small velocities of mildly degraded crops it is mostly noise."""
    z = torch.cat((z_deg, z_hq))
    answers = answers + [CLEAN] * len(z_hq)
    seg = prompts.identify_segments(prompts.IDENTIFY[-1])  # the loop's question
    with torch.no_grad():
        hidden, _ = model.lqa.teacher_forced(model.lqa.prompt_embeds(seg, [z]), answers)
        ref_hidden, _ = reference.lqa.teacher_forced(reference.lqa.prompt_embeds(seg, [z]), answers)
        ref_context, ref_pooled = reference.connector.condition(ref_hidden)
    context, pooled = model.connector.condition(hidden)
    shift = relative_error(context, ref_context) + relative_error(pooled, ref_pooled)
    return shift, {"shift": float(shift.detach())}


def null_condition(model: RAR, batch: int, device=None):
    c = model.config.connector
    return (torch.zeros(batch, 2 * c.num_query_tokens, c.context_dim, device=device),
            torch.zeros(batch, c.pooled_dim, device=device))


def condition_teacher(model: RAR, z: torch.Tensor, answers: list[str], q: int) -> tuple:
    prefix = model.lqa.prompt_embeds(prompts.identify_segments(prompts.IDENTIFY[q]), [z])
    hidden, lm_loss = model.lqa.teacher_forced(prefix, answers)
    context, pooled = model.connector.condition(hidden)
    return context, pooled, lm_loss


def flow_times(model: RAR, batch: int, gen, device) -> torch.Tensor:
    return sample_s(batch, model.config.uir.flow_shift, gen).to(device)


def step_uir(model, b, gen, cfg):
    z_hq, z_deg = encode(model, b["hq"]), encode(model, b["deg"])
    context, pooled = null_condition(model, len(z_hq), z_hq.device)
    loss, _ = flow_loss(model.uir, z_hq, z_deg, flow_times(model, len(z_hq), gen, z_hq.device), context, pooled)
    return loss.mean(), {}


def step_connector(model, b, gen, cfg, reference: RAR | None = None):
    z_hq, z_deg = encode(model, b["hq"]), encode(model, b["deg"])
    if reference is not None:
        return distil_condition(model, reference, z_hq, z_deg, b["answers"])
    with torch.no_grad():
        prefix = model.lqa.prompt_embeds(prompts.identify_segments(prompts.IDENTIFY[-1]), [z_deg])
        hidden, _ = model.lqa.teacher_forced(prefix, b["answers"])
    context, pooled = model.connector.condition(hidden)
    loss, _ = flow_loss(model.uir, z_hq, z_deg, flow_times(model, len(z_hq), gen, z_hq.device), context, pooled)
    return loss.mean(), {}


def step_e2e(model, b, gen, cfg):
    """Recurrent rounds (Eq. 5-6); the LQA keeps its identification and learns to verify results.

    Every round is conditioned on the label teacher-forced, as the official e2e does. The LM loss
    that holds identification (0.1) is the mean over rounds in the shipped recipe; with
    `identify_input_only` it is the input's alone, since a restored round no longer shows the
    degradation it is asked to name (that kept more identification, BENCHMARKS.md, sixth session).
    """
    z_hq, z = encode(model, b["hq"]), encode(model, b["deg"])
    s = flow_times(model, len(z), gen, z.device)  # one time per sample, shared by rounds
    total, lm = 0.0, []
    zs = [z]
    for w, q in zip(ROUND_WEIGHTS, b["qs"]):
        context, pooled, lm_loss = condition_teacher(model, z, b["answers"], q)
        lm.append(lm_loss)
        loss, z = flow_loss(model.uir, z_hq, z, s, context, pooled)
        total = total + w * loss.mean()
        zs.append(z.detach())
    # Verification on the pairs the loop asks about: round k+1 against round k (k = 0: the input);
    # the one closer to z_hq (or, with `verify_pixels`, to the clean photo) is the better image.
    rounds = torch.stack(zs)  # [R+1, B, ...]
    k = b["pair"].to(z.device)
    idx = torch.arange(len(k), device=z.device)
    prev, cand = rounds[k, idx], rounds[k + 1, idx]
    with torch.no_grad():
        if cfg.verify_pixels:  # the images the loop would return: input pixels, then decoded rounds
            hq, later = b["hq"], k > 0
            e_prev = (b["deg"] - hq).pow(2).mean((1, 2, 3))  # round 0 is the input's pixels: nothing to decode
            if later.any():
                e_prev[later] = (model.decode(prev[later]) - hq[later]).pow(2).mean((1, 2, 3))
            cand_better = (model.decode(cand) - hq).pow(2).mean((1, 2, 3)) < e_prev
        else:
            cand_better = (cand - z_hq).pow(2).mean((1, 2, 3)) < (prev - z_hq).pow(2).mean((1, 2, 3))
    swap = b["swap"].to(z.device)
    A = torch.where(swap[:, None, None, None], prev, cand)
    B = torch.where(swap[:, None, None, None], cand, prev)
    a_better = cand_better ^ swap
    prefix = model.lqa.prompt_embeds(prompts.compare_segments(prompts.COMPARE[-1]), [A, B])
    _, cmp_loss = model.lqa.teacher_forced(prefix, ["Image A" if x else "Image B" for x in a_better.tolist()])
    lm_id = lm[0] if cfg.identify_input_only else sum(lm) / len(lm)
    return total + 0.1 * lm_id + cfg.compare * cmp_loss, {"flow": float(total.detach()), "cmp": float(cmp_loss.detach()),
                                                          "id": float(lm_id.detach())}


@torch.no_grad()
def loop_rounds(model: RAR, z: torch.Tensor, rounds: int) -> list[torch.Tensor]:
    """The loop's fixed-mode trajectory as at inference: [z_0 = z, z_1, ..., z_rounds]."""
    zs = [z]
    for _ in range(rounds):
        zs.append(model.restore(zs[-1], model.assess(zs[-1])))
    return zs


@torch.no_grad()
def round_psnr(model: RAR, zs: list[torch.Tensor], x_deg: torch.Tensor, x_hq: torch.Tensor) -> torch.Tensor:
    """[B, rounds + 1] PSNR of each round's decoded image against the clean photo. Round 0 is
    the input's pixels: a loop that rejects its first round returns them, not their codec round
    trip (restore_image)."""
    decoded = [x_deg] + [model.decode(z) for z in zs[1:]]  # decode clamps to [0, 1]
    return torch.stack([-10 * torch.log10((x - x_hq).pow(2).mean((1, 2, 3)) + 1e-10) for x in decoded], 1)


def verify_pairs(ps: list[float], pick: float, tie_db: float) -> list[tuple[int, int]]:
    """(better, worse) pairs of one sample, as indices into [clean, z_0, ..., z_R] (ps[k] is the
    PSNR of z_k): every successive pair of rounds the loop may ask about that is not a near-tie,
    and the clean photo against the input or a round (`pick`). A sample's rounds cost far more
    than the LQA's pass over its pairs, so every usable pair is trained on."""
    pairs = [(k + 2, k + 1) if ps[k + 1] > ps[k] else (k + 1, k + 2)
             for k in range(len(ps) - 1) if abs(ps[k + 1] - ps[k]) >= tie_db]
    return pairs + [(0, 1 + min(int(pick * len(ps)), len(ps) - 1))]


def step_verify(model, b, gen, cfg, reference):
    """Verification on the restorer's own rounds, identification held to the frozen `reference` LQA."""
    x_hq = b["hq"]
    z_hq, z = encode(model, x_hq), encode(model, b["deg"])
    zs = loop_rounds(model, z, len(ROUND_WEIGHTS))
    ps = round_psnr(model, zs, b["deg"], x_hq).tolist()
    u = b["u"].cpu().tolist()
    every = torch.stack([z_hq] + zs)  # [R+2, B, ...]
    pairs = [(g, w, i) for i, (p, ui) in enumerate(zip(ps, u)) for g, w in verify_pairs(p, ui[0], cfg.tie_db)]
    dev = z.device
    g, w, i = torch.tensor(pairs, device=dev).T
    better, worse = every[g, i], every[w, i]
    a_better = (torch.rand(len(pairs), generator=gen) < 0.5).to(dev)
    A = torch.where(a_better[:, None, None, None], better, worse)
    B = torch.where(a_better[:, None, None, None], worse, better)
    lqa = model.lqa
    prefix = lqa.prompt_embeds(prompts.compare_segments(prompts.COMPARE[b["cq"]]), [model.lqa_view(A), model.lqa_view(B)])
    _, cmp_loss = lqa.teacher_forced(prefix, ["Image A" if x else "Image B" for x in a_better.tolist()])

    # The hidden states A_Q reads (identification of a round the loop assesses), held in place;
    # identification itself is not trained here.
    idx = torch.arange(len(z), device=dev)
    k = torch.tensor([min(int(ui[1] * len(ROUND_WEIGHTS)), len(ROUND_WEIGHTS) - 1) for ui in u], device=dev)
    z_k = model.lqa_view(every[k + 1, idx])  # every[1 + k] is z_k
    seg = prompts.identify_segments(prompts.IDENTIFY[b["q"]])
    hidden, _ = lqa.teacher_forced(lqa.prompt_embeds(seg, [z_k]), b["answers"])
    with torch.no_grad():
        ref, _ = reference.teacher_forced(reference.prompt_embeds(seg, [z_k]), b["answers"])
    h, r = torch.cat(hidden), torch.cat(ref)
    keep = (h - r).pow(2).mean() / r.pow(2).mean()
    loss = cmp_loss + cfg.keep * keep
    return loss, {"cmp": float(cmp_loss.detach()), "keep": float(keep.detach()), "pairs": len(pairs) / len(z)}


def step_decoder(model, b, gen, cfg):
    x = b["x"]
    with torch.no_grad():
        z = model.codec.encode(x)
    rec = (model.codec.vae.decode(model.codec.process_out(z)).sample + 1) / 2
    loss = reconstruction_loss(rec, x, cfg.texture)
    return loss, {"psnr": psnr(rec, x)}


BATCH = {
    "codec": batch_images,
    "decoder": batch_images,
    "lqa": batch_lqa,
    "uir": batch_pairs(composite_p=0.0),
    "connector": batch_pairs(composite_p=0.5, clean_p=0.05),
    "e2e": batch_pairs(composite_p=0.6, rounds=len(ROUND_WEIGHTS)),
    "verify": batch_verify,
}
STEP = {"decoder": step_decoder, "codec": step_codec, "lqa": step_lqa, "uir": step_uir, "connector": step_connector, "e2e": step_e2e,
        "verify": step_verify}


class StageBatches(torch.utils.data.Dataset):
    """Batch `step` of a stage; it depends on (seed, stage, step) only, so a resumed run, or one
    with any number of loader workers, sees exactly the batches of an unbroken one."""

    def __init__(self, stage: str, pool: PhotoPool, cfg: StageConfig, seed: int):
        self.stage, self.pool, self.cfg, self.seed = stage, pool, cfg, seed
        self.make = partial(batch_lqa, identify=cfg.identify) if stage == "lqa" else BATCH[stage]

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, STAGE_SEED[self.stage], step])
        crop, batch = self.cfg.draw(rng)
        return self.make(self.pool, rng, batch, crop)


def to_device(b: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in b.items()}


@torch.no_grad()
def calibrate_latents(model: RAR, pool: PhotoPool, seed: int, n: int = 48, crop: int = 128) -> None:
    """Set the codec's shift/scale so z has zero mean and unit std (as SD3's 0.0609 / 1.5305)."""
    rng = np.random.default_rng([seed, 999_999])
    model.codec.config.shift, model.codec.config.scale = 0.0, 1.0
    device = model._device_of(model.codec)
    z = torch.cat([model.codec.encode(to_tensor([pool.crop(rng, crop) for _ in range(8)]).to(device)) for _ in range(n // 8)])
    model.codec.config.shift = float(z.mean())
    model.codec.config.scale = float(1.0 / z.std())
    model.config.codec = model.codec.config


# ----- driver -------------------------------------------------------------------------------
def stage_path(out: Path, stage: str) -> Path:
    return out / f"stage-{stage}.safetensors"


CALIB = (100, 200)  # steps (after a start or resume) between which a budgeted run times itself


def fit_budget(total: int, cap: int, start: int, done: int, elapsed: float, budget_s: float, rate_from, bar) -> int:
    """The step count that fits `budget_s`: measured over steps CALIB (loader prefetch is spent
    by then), fixed once, and cut short only if the run still overruns by 15 %."""
    if done - start == CALIB[1] and rate_from is not None:
        rate = (CALIB[1] - CALIB[0]) / (time.time() - rate_from)
        total = min(cap, done + int(rate * max(0.0, budget_s - elapsed)))
        bar.total = total
        bar.write(f"{rate:.1f} steps/s: {total} steps fit the {budget_s:.0f} s budget")
    if elapsed > 1.15 * budget_s:
        total = min(total, done)
    return total


def check_same_restorer(model: RAR, reference: RAR, path: Path) -> None:
    """Distillation holds the conditioning of one restorer on one codec's latents: both must be
    the reference's (to fp16 rounding, so a shipped fp16 file serves as the reference)."""
    for part in ("codec", "uir"):
        mine, theirs = getattr(model, part), getattr(reference, part)
        same = (mine is None) == (theirs is None) and (mine is None or all(
            a.shape == b.shape and torch.allclose(a.float(), b.float().to(a.device), rtol=2e-3, atol=1e-4)
            for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True)))
        if not same:
            raise SystemExit(f"--reference {path}: its {'restorer' if part == 'uir' else part} differs from this model's; "
                             "distillation needs the same codec and restorer (start from that model with another LQA)")


def train_step(model: RAR, step_fn, batch: dict, gen, cfg: StageConfig, opt: torch.optim.Optimizer, params) -> tuple:
    """One update: the stage's forward (autocast to bf16 when `cfg.precision` says so; the backward
    follows the forward's dtypes), then a clipped AdamW step on the fp32 weights."""
    device = next(iter(params)).device.type
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        loss, info = step_fn(model, batch, gen, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss, info


def native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware; torch.cpu's probe is private, so a missing one reads as no."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(probe and probe())


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def train_stage(stage: str, out: Path, data: Path, cfg: StageConfig, seed: int = 0, preset: str = "compact",
                init: Path | None = None, quiet: bool = False, device: str = "auto", workers: int | None = None,
                budget_s: float | None = None, reference: Path | None = None) -> Path:
    """Train one stage from the previous stage's model (or `init`), resuming any saved state.

    `budget_s` fits the run to a time budget: the rate measured early on (CALIB) caps the step
    count (the log and the model's metadata record the count used, so `--steps N` repeats it).
    `reference` (connector stage): distil instead. A_Q alone learns to turn this model's LQA
    states into the conditioning the reference model gave the same restorer, so an LQA retrained
    for identification and verification needs no restorer catch-up (`distil_condition`).
    """
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.precision not in ("fp32", "bf16"):
        raise SystemExit(f"precision '{cfg.precision}' is not one of fp32, bf16")
    if cfg.precision == "bf16" and dev.type == "cpu" and not native_bf16():
        print(f"note: this CPU has no native bf16 (AVX512-BF16 or AMX), so the bf16 stage '{stage}' runs emulated and "
              "slower; `--precision fp32` is faster here (its results differ slightly)")
    prev = init or (stage_path(out, PREVIOUS[stage]) if PREVIOUS[stage] else None)
    if prev is not None:
        if not prev.is_file():
            raise SystemExit(f"stage '{stage}' starts from {prev}, which does not exist: run `rar train --stage {PREVIOUS[stage]}` first")
        model = load_rar(prev)
    else:
        model = build_model(RARConfig.preset(preset), seed=seed)
    model.to(dev).train()
    step_fn = STEP[stage]
    if stage == "verify":  # the stage's starting LQA (a resumed run too), frozen
        step_fn = partial(step_verify, reference=copy.deepcopy(model.lqa).requires_grad_(False))
    if reference is not None and stage != "connector":
        raise SystemExit("--reference applies to the connector stage (distillation) only")
    freeze = cfg.freeze
    if reference is not None:  # distillation: A_Q alone, the restorer it serves frozen
        ref = load_rar(reference)
        check_same_restorer(model, ref, reference)
        step_fn = partial(step_connector, reference=ref.to(dev).eval().requires_grad_(False))
        freeze = tuple(dict.fromkeys((*freeze, "uir")))
    params = trainable(model, stage, cfg.freeze_head, freeze)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    state_file = out / f"state-{stage}.safetensors"
    start = load_state(state_file, model, opt) if state_file.is_file() else 0
    if start:
        print(f"resuming stage '{stage}' at step {start}/{cfg.steps}")
    pool = PhotoPool(data)
    if workers is None:  # on a CPU the cores are busy with the model; on a GPU they make the data
        workers = min(8, max(0, (os.cpu_count() or 1) - 2)) if dev.type == "cuda" else 0
    loader = torch.utils.data.DataLoader(
        StageBatches(stage, pool, cfg, seed), batch_size=None, sampler=range(start, cfg.steps), num_workers=workers,
        prefetch_factor=4 if workers else None, pin_memory=dev.type == "cuda")
    log = (out / f"log-{stage}.jsonl").open("a")
    total = cfg.steps
    warm = min(100, cfg.steps // 10 + 1)
    sched = lambda i: min(1.0, (i + 1) / warm) * (0.5 * (1 + math.cos(math.pi * min(i, total) / total)) * 0.9 + 0.1)
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {stage}", disable=quiet)
    ema, t0, rate_from = None, time.time(), None
    for step, batch in enumerate(loader, start):
        if step >= total:
            break
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * sched(step)
        loss, info = train_step(model, step_fn, to_device(batch, dev), gen, cfg, opt, params)
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.4f}", **{k: f"{v:.3f}" for k, v in info.items()})
        done = step + 1
        if budget_s is not None:
            total = fit_budget(total, cfg.steps, start, done, time.time() - t0, budget_s, rate_from, bar)
            if done - start == CALIB[0]:
                rate_from = time.time()
        if done % cfg.log_every == 0:
            log.write(json.dumps({"step": done, "loss": loss.item(), "ema": ema, "seconds": time.time() - t0, **info}) + "\n")
            log.flush()
        if done % cfg.save_every == 0 or done == total:
            save_state(state_file, model, opt, done)
    bar.close()
    log.close()
    model.eval()
    if stage == "codec":
        calibrate_latents(model, pool, seed)
    model.to("cpu")
    used = StageConfig(**{**asdict(cfg), "steps": total})
    path = save_rar(model, stage_path(out, stage), {"stage": stage, "train": json.dumps(asdict(used)), "device": dev.type})
    print(f"stage '{stage}' done ({total} steps): {path}")
    return path


def add_train_subparser(sub) -> None:
    t = sub.add_parser("train", help="train a RAR model stage by stage (resumable)")
    t.add_argument("--stage", choices=STAGES + OPTIONAL + ("all",), required=True)
    t.add_argument("--data", default="data", help="folder written by scripts/fetch_data.py")
    t.add_argument("--out", default="runs/compact", help="stage models and resumable state")
    t.add_argument("--preset", default="compact", choices=sorted(PRESETS), help="architecture of a model built from scratch (codec stage)")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch", type=int)
    t.add_argument("--crop", help="crop side, or several comma-separated sides drawn per step (e.g. 64,128,256)")
    t.add_argument("--lr", type=float)
    t.add_argument("--texture", type=float, help="weight of the codec's texture loss term (codec, decoder; 0 turns it off)")
    t.add_argument("--compare", type=float, help="weight of the verification loss in the e2e stage (default 0.1)")
    t.add_argument("--identify", type=float, help="share of identification batches in the lqa stage (default 0.5)")
    t.add_argument("--identify-input-only", action="store_true", default=None,
                   help="e2e stage: the identification loss on the input round only, not the mean over the 4 rounds")
    t.add_argument("--verify-pixels", action="store_true", default=None,
                   help="e2e stage: rank successive rounds by pixel error (input pixels as round 0), not latent distance")
    t.add_argument("--tie-db", type=float, help="verify stage: skip successive rounds closer than this (dB, default 0.25)")
    t.add_argument("--keep", type=float, help="verify stage: weight of the term holding A_Q's input in place (default 10)")
    t.add_argument("--freeze-head", action="store_true", default=None, help="verify stage: leave the LM's output head as it is")
    t.add_argument("--freeze", help="comma-separated parts the stage leaves as they are: lqa, connector, uir "
                                    "(e.g. --stage e2e --freeze lqa,uir adapts A_Q alone)")
    t.add_argument("--reference", help="connector stage: distil; A_Q alone learns to give the restorer the conditioning this "
                                       "model (same codec and restorer, another LQA) gave it")
    t.add_argument("--precision", choices=("fp32", "bf16"),
                   help="forward arithmetic: bf16 autocasts the step, fp32 weights and optimizer (default fp32)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    t.add_argument("--workers", type=int, help="data loader processes (default: 0 on cpu, up to 8 on cuda)")
    t.add_argument("--budget-s", type=float, help="cap each stage's steps to what fits this many seconds")
    t.add_argument("--init", help="start the (single) stage from this model file instead of the previous stage's")
    t.add_argument("--export", help="also copy the final model here (e.g. rar_core/weights/rar-compact.safetensors)")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_train)


def stage_config(stage: str, args) -> StageConfig:
    over = {k: getattr(args, k) for k in ("steps", "batch", "lr", "texture", "compare", "identify", "identify_input_only", "verify_pixels",
                                      "tie_db", "keep", "freeze_head", "precision") if getattr(args, k, None) is not None}
    if getattr(args, "freeze", None):
        over["freeze"] = tuple(x.strip() for x in args.freeze.split(",") if x.strip())
    if args.crop:
        sides = tuple(int(c) for c in str(args.crop).split(","))
        over["crop"], over["crops"] = sides[0], (sides if len(sides) > 1 else ())
    return StageConfig(**{**asdict(DEFAULTS[stage]), **over})


def cmd_train(args) -> int:
    stages = STAGES if args.stage == "all" else (args.stage,)
    if args.init and len(stages) > 1:
        raise SystemExit("--init starts one stage: name it with --stage")
    path = None
    for stage in stages:
        path = train_stage(stage, Path(args.out), Path(args.data), stage_config(stage, args), args.seed, args.preset,
                           init=Path(args.init) if args.init else None, quiet=args.quiet, device=args.device, workers=args.workers, budget_s=args.budget_s,
                           reference=Path(args.reference) if args.reference else None)
    if args.export and path is not None:
        model = load_rar(path)
        save_rar(model, args.export, {"stage": "final"}, dtype=torch.float16)  # half the bytes to ship
        print(f"exported {args.export}")
    return 0
