"""Staged training of a RAR model (Sec. 6), sized so the compact recipe runs on 2 CPU cores.

    codec      the latent codec (L1 + MSE reconstruction), then the latent normalisation stats
    uir        the restorer alone on single degradations, degraded->clean flow loss (Eq. 4)
    lqa        A_I + the IQA LM on identification and A/B comparison questions (LM loss)
    connector  A_Q + restorer on single and composite degradations, LQA frozen (teacher forced)
    e2e        recurrent end-to-end training (Eq. 5-6): 4 rounds weighted (0.2, 0.3, 0.4, 1.0),
               each round's predicted clean latent feeds the next without a gradient cut
    decoder    decoder-only fine-tuning of the codec: the encoder (so every latent the other
               stages learned on) stays fixed, only the final decode gets sharper
    refine     (a recipe's option) the e2e rounds again, on a photo pool of their own
    verify     (a recipe's option) the LQA alone, on the restorer's own rounds: the gate

A recipe (`RECIPES`) is data: the architecture the codec stage builds and every stage's sizes.
Every stage reads the previous stage's model file and writes its own; training state (model,
optimiser, step) is checkpointed to safetensors so a stopped run resumes where it was. Random
draws depend on (seed, step) only, so a resumed run sees the same batches as an unbroken one.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from . import prompts
from .checkpoint import build_model, load_rar, save_rar
from .config import RARConfig
from .loop import trajectory
from .model import RAR
from .uir import flow_loss, sample_s

# The paper's order (Sec. 6.1): UIR pre-training, LQA stages, connector, end-to-end.
STAGES = ("codec", "uir", "lqa", "connector", "e2e", "decoder")
OPTIONAL = ("refine", "verify")  # after the decoder, in this order, in the recipes that have them
# The stage each starts from when run alone; in a recipe, the one before it (Recipe.previous).
PREVIOUS = {"codec": None, "uir": "codec", "lqa": "uir", "connector": "lqa", "e2e": "connector", "decoder": "e2e",
            "refine": "decoder", "verify": "decoder"}
# Fixed, whatever the order. refine continues the e2e stage's rounds, so it draws as e2e does (its
# pool, not its draws, is what differs).
STAGE_SEED = {"codec": 0, "lqa": 1, "uir": 2, "connector": 3, "e2e": 4, "decoder": 5, "verify": 6, "refine": 4}
ROUND_WEIGHTS = (0.2, 0.3, 0.4, 1.0)
CLEAN = "Clean"


@dataclass(frozen=True)
class PoolConfig:
    """What the training photos are mixed with (every stage draws from the recipe's pool unless its
    StageConfig names its own)."""

    synthetic: int = 0  # flat graphics of each synthetic.KINDS added to the photos
    synthetic_p: float = 0.0  # share of crops taken from them
    bright_p: float = 0.0  # share of photo crops lifted to a bright exposure (a clean bright target)
    dark_p: float = 0.0  # share of photo crops lowered to a dark, low-key exposure (a clean dark target)
    # Dark exposures never get the low-light degradation: a dark photo is the target only of the
    # other degradations, so dimmed inputs are still to be lifted (BENCHMARKS.md, experiment
    # dark, not dimmed).
    dark_not_dimmed: bool = False
    # Colour variety the registry photos lack: a share of photo crops turned grey (scans, pages,
    # stone: a sixth of the bench's images are near-grey, 2 of the 49 photos) and a share with
    # their colour channels permuted (hues the photos do not have).
    grey_p: float = 0.0
    permute_p: float = 0.0
    # The photos of the manifest's extra split as well (scripts/fetch_data.py: people, texture,
    # objects indoors; added after the built-in model's earlier stages were trained).
    extra: bool = False
    # The images of its wide split as well: screenshots with text, night photos, people on stage.
    wide: bool = False


@dataclass(frozen=True)
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
    # Weight of the verification (A/B comparison) loss in the e2e stage, against the flow loss.
    compare: float = 0.1
    # Share of identification batches in the LQA stage (the rest are A/B comparisons).
    identify: float = 0.5
    # Share of clean->clean samples (target velocity 0, answer "Clean"): without them a clean
    # latent is never shown as one to keep (BENCHMARKS.md, "Why bright and flat content is harmed").
    clean_p: float = 0.0
    # e2e stage: the identification LM loss on the input round only; a restored round no longer
    # shows the degradation it would be asked to name, and labelling it so unlearns "Clean".
    identify_input_only: bool = False
    # Verify stage: successive rounds closer than this (dB, decoded, against the clean photo) are
    # near-ties whose order the LQA cannot learn; such pairs are skipped.
    tie_db: float = 0.25
    # Verify stage: rank every pair of a sample's rounds, not only successive ones. The loop asks
    # about successive rounds; the pairs further apart differ more, and teach the same ordering.
    all_pairs: bool = False
    # Verify stage: weight of the term holding the identification hidden states to the frozen
    # LQA's (relative MSE), so A_Q's input stays the one the restorer was trained with.
    keep: float = 10.0
    # Verify stage: weight of an identification loss on the input round whose answer is "Clean"
    # where the restorer's first round does not beat the input's own pixels (by tie_db), the true
    # label elsewhere: "Clean" then means "nothing worth restoring", and the loop stops where the
    # gate would roll its first round back.
    clean_answer: float = 0.0
    # This stage's photo pool when it is not the recipe's: the gate can be shown bright and flat
    # content that the restorer's stages were trained without.
    pool: PoolConfig | None = None

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """(crop side, batch size) of one step."""
        if not self.crops:
            return self.crop, self.batch
        side = int(self.crops[int(rng.integers(len(self.crops)))])
        return side, max(1, round(self.batch * self.crop / side))


@dataclass(frozen=True)
class Recipe:
    """A named way to train a model: the preset the codec stage builds, and each stage's config."""

    name: str
    preset: str
    codec: StageConfig
    uir: StageConfig
    lqa: StageConfig
    connector: StageConfig
    e2e: StageConfig
    decoder: StageConfig
    pool: PoolConfig = PoolConfig()
    refine: StageConfig | None = None  # the e2e rounds again after the decoder, on a pool of their own
    verify: StageConfig | None = None  # the gate on the restorer's own rounds, last

    def stage(self, name: str) -> StageConfig:
        return getattr(self, name)

    @property
    def stages(self) -> tuple[str, ...]:
        return STAGES + tuple(s for s in OPTIONAL if self.stage(s) is not None)

    def previous(self, stage: str) -> str | None:
        """The stage whose model `stage` starts from in this recipe."""
        i = self.stages.index(stage)
        return self.stages[i - 1] if i else None


# `compact` is the shipped model's recipe: `rar train --stage all` on 2 CPU cores, 6 h 4 min
# (codec 34 min, uir 97, lqa 93, connector 16, e2e 44, decoder 4, refine 18, verify 59;
# docs/training.md).
# The codec gets many steps because every later stage learns its latent space. The restorer, the
# LQA and the connector train in large batches (96, 128 and 96) because what they are shown, not
# how many steps they take, is what moved the eval set (BENCHMARKS.md, experiments); on a CPU a
# restorer crop costs the same in a batch of 96 as in one of 16. The e2e stage draws crop sides up to
# 256 px, the bench's size (the first among them, 96, sets the batch scale; the order fixes the
# draws).
_E2E = StageConfig(steps=2500, batch=6, crop=96, lr=1e-4, crops=(96, 64, 128, 192, 256))
RECIPES = {
    "compact": Recipe(
        name="compact",
        preset="compact",
        codec=StageConfig(steps=7000, batch=12, crop=64, lr=1e-3),
        uir=StageConfig(steps=1100, batch=96, crop=128, lr=4e-4),
        lqa=StageConfig(steps=1925, batch=128, crop=64, lr=5e-4, crops=(64, 128, 192, 256), clean_p=0.12),
        connector=StageConfig(steps=200, batch=96, crop=128, lr=2e-4, clean_p=0.05),
        e2e=_E2E,
        decoder=StageConfig(steps=1000, batch=8, crop=96, lr=5e-4),
        # The e2e rounds again, shown bright exposures and flat graphics that the earlier stages
        # were trained without: later rounds stop drifting, first rounds gain more (BENCHMARKS.md,
        # experiment refine). Dark exposures here would teach it to leave low-light inputs dark.
        refine=replace(_E2E, steps=1000, pool=PoolConfig(synthetic=12, synthetic_p=0.12, bright_p=0.2)),
        # The gate on the restorer's own rounds, shown bright and dark exposures and flat graphics
        # that the restorer's stages were trained without, and "Clean" taught where the first
        # round would not help (BENCHMARKS.md, experiments compact-verify-dark and
        # compact-verify-clean).
        verify=StageConfig(steps=1200, batch=8, crop=128, lr=1e-4, crops=(64, 128, 192, 256), clean_p=0.33,
                           clean_answer=0.5, pool=PoolConfig(synthetic=12, synthetic_p=0.12, bright_p=0.3, dark_p=0.2)),
    ),
}


# ----- data ---------------------------------------------------------------------------------
def train_files(data: Path, extra: bool = False, wide: bool = False) -> list[Path]:
    """The photos of the train split of `data`/manifest.json (and of the extra and wide splits),
    or a clear error."""
    path = data / "manifest.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found; run `python scripts/fetch_data.py --out {data}` "
                         "or list your own photos in it (docs/training.md)")
    images = json.loads(path.read_text())["images"]
    files = [data / i["file"] for i in images if i["split"] == "train"]
    if not files:
        raise SystemExit(f"no training images in {data}; run `python scripts/fetch_data.py --out {data}` first")
    for split, asked in (("extra", extra), ("wide", wide)):
        if not asked:
            continue
        more = [data / i["file"] for i in images if i["split"] == split]
        if not more:
            raise SystemExit(f"this recipe trains on the {split} images too, and {path} lists none; "
                             f"run `python scripts/fetch_data.py --out {data}` again to fetch them")
        files += more
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"{len(missing)} training photo(s) listed in {path} are missing, e.g. {missing[0]}")
    return files


class PhotoPool:
    """Clean training photos in memory (train split of the fetched manifest only), with the
    recipe's flat graphics and bright and dark exposures mixed in."""

    def __init__(self, data: Path, max_side: int = 512, cfg: PoolConfig = PoolConfig()):
        from . import synthetic

        self.cfg = cfg
        self.images, self._pil = [], []
        pictures = [Image.open(f) for f in train_files(data, cfg.extra, cfg.wide)]
        self.photos = len(pictures)
        for im in pictures + synthetic.pool(cfg.synthetic):
            with im:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side), Image.LANCZOS)
                self._pil.append(im)
                self.images.append(np.asarray(im, dtype=np.float32) / 255.0)

    def crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return self.draw(rng, size)[0]

    def draw(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, str]:
        """A clean crop and its exposure: "bright", "dark" or "" (as taken, or a flat graphic)."""
        c = self.cfg
        if c.synthetic and rng.random() < c.synthetic_p:
            return self._crop(rng, size, self.photos + int(rng.integers(len(self.images) - self.photos))), ""
        out = self._crop(rng, size, int(rng.integers(self.photos)))
        if c.grey_p or c.permute_p:
            out = recolour(out, rng, c.grey_p, c.permute_p)
        if c.bright_p or c.dark_p:
            u = rng.random()
            if u < c.bright_p:
                return brighten(out, rng), "bright"
            if u < c.bright_p + c.dark_p:
                return darken(out, rng), "dark"
        return out, ""

    def _crop(self, rng: np.random.Generator, size: int, i: int) -> np.ndarray:
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


def recolour(x: np.ndarray, rng: np.random.Generator, grey_p: float, permute_p: float) -> np.ndarray:
    """A photo crop turned grey (Rec. 601 luma in every channel) with probability grey_p, else
    with its channels in a random non-identity order with probability permute_p."""
    u = rng.random()
    if u < grey_p:
        y = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.ascontiguousarray(np.repeat(y[..., None], 3, axis=-1), dtype=np.float32)
    if u < grey_p + permute_p:
        order = [(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)][int(rng.integers(5))]
        return np.ascontiguousarray(x[..., order])
    return x


def brighten(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A clean photo as a bright one: a gamma lift (pale, airy) or an overexposure that clips
    highlights to white. Snow, sky and white walls are then something to keep, not to undo."""
    if rng.random() < 0.5:
        return np.ascontiguousarray(x ** rng.uniform(0.35, 0.75), dtype=np.float32)
    return np.ascontiguousarray(np.clip(x * rng.uniform(1.3, 2.0) + rng.uniform(0.0, 0.1), 0, 1), dtype=np.float32)


def darken(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A clean photo as a dark one (night, dim interiors, dark themes): a low-key gamma that keeps
    the highlights near their level, unlike the low-light degradation's gain, which dims them
    too. Rounds that lift such a photo are then worse, not better."""
    y = x ** rng.uniform(1.6, 2.8) * rng.uniform(0.8, 1.0)
    return np.ascontiguousarray(y, dtype=np.float32)


def primary(labels: list[str]) -> str:
    """The degradation to name first: the outermost one (last applied, first to undo)."""
    from . import degrade as D  # scipy, imported when data is made rather than with the CLI

    return D.ANSWERS[labels[-1]] if labels else CLEAN


def degraded_sample(pool: PhotoPool, rng: np.random.Generator, size: int, composite_p: float, clean_p: float = 0.0):
    from . import degrade as D

    clean, exposure = pool.draw(rng, size)
    u = rng.random()
    if u < clean_p:
        return clean, clean, []
    names = D.LABELS
    if exposure == "dark" and pool.cfg.dark_not_dimmed:
        names = tuple(n for n in D.LABELS if n != "dark")
    s = D.random_composite(clean, rng, names=names) if u < clean_p + composite_p else D.random_single(clean, rng, names=names)
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
def trainable(model: RAR, stage: str) -> list[torch.nn.Parameter]:
    """The parameters a stage trains; every other one is frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    parts = {
        "codec": [model.codec],
        "lqa": [model.lqa],
        "uir": [model.uir],
        "connector": [model.connector, model.uir],
        "e2e": [model.connector, model.uir, model.lqa],
        "refine": [model.connector, model.uir, model.lqa],
        "decoder": [model.codec.vae.decoder, model.codec.vae.post_quant_conv],
        "verify": [model.lqa],
    }[stage]
    params = [p for m in parts if m is not None for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


# Each stage is a batch maker (numpy, run in DataLoader workers; every random draw comes from the
# step's own rng) and a step (torch, on the training device).
def batch_images(pool, rng, batch, crop, cfg):
    """Clean and degraded photos alike: the codec must reconstruct whatever it is given, as the
    SD3.5 VAE does, since every latent the LQA and the restorer read is of a degraded image."""
    samples = [degraded_sample(pool, rng, crop, composite_p=0.15, clean_p=0.5) for _ in range(batch)]
    return {"x": to_tensor([s[1] for s in samples]), "labels": [s[2] for s in samples]}


def batch_lqa(pool, rng, batch, crop, cfg):
    """Identification (a share `cfg.identify` of the batches) or comparison; answers come from the labels."""
    if rng.random() < cfg.identify:
        samples = [degraded_sample(pool, rng, crop, composite_p=0.35, clean_p=cfg.clean_p) for _ in range(batch)]
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


def batch_pairs(composite_p: float, rounds: int = 0):
    def make(pool, rng, batch, crop, cfg):
        samples = [degraded_sample(pool, rng, crop, composite_p=composite_p, clean_p=cfg.clean_p) for _ in range(batch)]
        out = {"hq": to_tensor([s[0] for s in samples]), "deg": to_tensor([s[1] for s in samples]),
               "answers": [primary(s[2]) for s in samples]}
        if rounds:  # e2e: a question per round and the A/B order of the verification pair
            out["qs"] = [int(rng.integers(len(prompts.IDENTIFY))) for _ in range(rounds)]
            out["swap"] = torch.from_numpy(rng.random(batch) < 0.5)
            out["pair"] = torch.from_numpy(rng.integers(0, rounds, batch))  # verify round k+1 against round k
        return out
    return make


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + MSE, as pixel reconstruction losses go."""
    return F.l1_loss(rec, x) + F.mse_loss(rec, x)


def step_codec(model, b, gen, cfg):
    x = b["x"]
    dist = model.codec.vae.encode(x * 2 - 1).latent_dist
    rec = (model.codec.vae.decode(dist.sample(gen)).sample + 1) / 2
    kl = dist.kl().float().mean() / x[0].numel()
    loss = reconstruction_loss(rec, x) + 1e-4 * kl
    return loss, {"psnr": psnr(rec, x)}


def psnr(rec: torch.Tensor, x: torch.Tensor) -> float:
    return -10 * math.log10(F.mse_loss(rec.detach().clamp(0, 1), x).item() + 1e-12)


@torch.no_grad()
def encode(model: RAR, x: torch.Tensor) -> torch.Tensor:
    return model.codec.encode(x).float()


def step_lqa(model, b, gen, cfg):
    lqa = model.lqa
    if b["kind"] == "identify":
        prefix = lqa.prompt_embeds(prompts.identify_segments(prompts.IDENTIFY[b["q"]]), [encode(model, b["x"])])
        _, loss = lqa.teacher_forced(prefix, b["answers"])
        return loss, {"kind": 0.0}
    prefix = lqa.prompt_embeds(prompts.compare_segments(prompts.COMPARE[b["q"]]), [encode(model, b["a"]), encode(model, b["b"])])
    _, loss = lqa.teacher_forced(prefix, b["answers"])
    return loss, {"kind": 1.0}


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


def step_connector(model, b, gen, cfg):
    z_hq, z_deg = encode(model, b["hq"]), encode(model, b["deg"])
    with torch.no_grad():
        prefix = model.lqa.prompt_embeds(prompts.identify_segments(prompts.IDENTIFY[-1]), [z_deg])
        hidden, _ = model.lqa.teacher_forced(prefix, b["answers"])
    context, pooled = model.connector.condition(hidden)
    loss, _ = flow_loss(model.uir, z_hq, z_deg, flow_times(model, len(z_hq), gen, z_hq.device), context, pooled)
    return loss.mean(), {}


def step_e2e(model, b, gen, cfg):
    """Recurrent rounds (Eq. 5-6); the LQA keeps its identification and learns to verify results.

    Every round is conditioned on the label teacher-forced, as the official e2e does; the LM loss
    that holds identification (weight 0.1) is the mean over rounds, or with `identify_input_only`
    the input round's alone.
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
    # the one closer to z_hq is the better image.
    rounds = torch.stack(zs)  # [R+1, B, ...]
    k = b["pair"].to(z.device)
    idx = torch.arange(len(k), device=z.device)
    prev, cand = rounds[k, idx], rounds[k + 1, idx]
    with torch.no_grad():
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
def round_psnr(model: RAR, zs: list[torch.Tensor], x_deg: torch.Tensor, x_hq: torch.Tensor) -> torch.Tensor:
    """[B, rounds + 1] PSNR of each round's decoded image against the clean photo. Round 0 is
    the input's pixels: a loop that rejects its first round returns them, not their codec round
    trip (restore_image)."""
    decoded = [x_deg] + [model.decode(z) for z in zs[1:]]  # decode clamps to [0, 1]
    return torch.stack([-10 * torch.log10((x - x_hq).pow(2).mean((1, 2, 3)) + 1e-10) for x in decoded], 1)


def tint(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x darker and more saturated, or lighter and paler: what a bad round does to a clean photo
    (BENCHMARKS.md, "Why bright and flat content is harmed"), for the gate to learn to refuse."""
    lum = x.mean(-1, keepdims=True)
    if rng.random() < 0.5:
        shift, sat = -rng.uniform(0.02, 0.08), rng.uniform(1.05, 1.3)
    else:
        shift, sat = rng.uniform(0.02, 0.08), rng.uniform(0.7, 0.95)
    return np.clip(lum + (x - lum) * sat + shift, 0, 1).astype(np.float32)


def batch_verify(pool, rng, batch, crop, cfg):
    """Clean and degraded photos for the verify stage; the pairs come from the restorer's rounds in
    the step. A clean photo also comes tinted (its pair with the clean one). u[i] = (which round the
    clean photo is paired with, which round is identified) for sample i."""
    samples = [degraded_sample(pool, rng, crop, composite_p=0.6, clean_p=cfg.clean_p) for _ in range(batch)]
    return {"hq": to_tensor([s[0] for s in samples]), "deg": to_tensor([s[1] for s in samples]),
            "tint": to_tensor([tint(s[0], rng) for s in samples]),
            "clean": torch.tensor([not s[2] for s in samples]),
            "answers": [primary(s[2]) for s in samples], "q": int(rng.integers(len(prompts.IDENTIFY))),
            "cq": int(rng.integers(len(prompts.COMPARE))), "u": torch.from_numpy(rng.random((batch, 2)))}


def verify_pairs(ps: list[float], tie_db: float, all_pairs: bool = False) -> list[tuple[int, int]]:
    """(better, worse) pairs of successive rounds of one sample (every pair of rounds with
    `all_pairs`), as indices into ps (ps[k]: the PSNR of round k, k = 0 the input), leaving out
    near-ties whose order cannot be learnt."""
    n = len(ps)
    ks = [(j, k) for j in range(n) for k in range(j + 1, n if all_pairs else min(j + 2, n))]
    return [(k, j) if ps[k] > ps[j] else (j, k) for j, k in ks if abs(ps[k] - ps[j]) >= tie_db]


def step_verify(model, b, gen, cfg, reference):
    """Verification on the restorer's own rounds, ranked by the pixels the loop would return
    (round 0: the input's own), plus the clean photo against a round (or, for a clean input,
    against its tinted self); identification held to the frozen `reference` LQA (`keep`)."""
    x_hq, R = b["hq"], len(ROUND_WEIGHTS)
    z_hq, z_tint = encode(model, x_hq), encode(model, b["tint"])
    zs = trajectory(model, encode(model, b["deg"]), R)
    ps = round_psnr(model, zs, b["deg"], x_hq).tolist()
    every = torch.stack(zs + [z_hq, z_tint])  # rows 0..R: rounds, R + 1: clean, R + 2: tinted clean
    pairs = []
    for i, (p, (pick, _)) in enumerate(zip(ps, b["u"].tolist())):
        pairs += [(g, w, i) for g, w in verify_pairs(p, cfg.tie_db, cfg.all_pairs)]
        pairs.append((R + 1, R + 2, i) if b["clean"][i] else (R + 1, min(int(pick * (R + 1)), R), i))
    dev = z_hq.device
    g, w, i = torch.tensor(pairs, device=dev).T
    better, worse = every[g, i], every[w, i]
    a_better = (torch.rand(len(pairs), generator=gen) < 0.5).to(dev)
    A = torch.where(a_better[:, None, None, None], better, worse)
    B = torch.where(a_better[:, None, None, None], worse, better)
    lqa = model.lqa
    prefix = lqa.prompt_embeds(prompts.compare_segments(prompts.COMPARE[b["cq"]]), [model.lqa_view(A), model.lqa_view(B)])
    _, cmp_loss = lqa.teacher_forced(prefix, ["Image A" if x else "Image B" for x in a_better.tolist()])

    # The hidden states A_Q reads (identification of a round the loop assesses), held in place.
    idx = torch.arange(len(z_hq), device=dev)
    k = torch.tensor([min(int(u * R), R - 1) for _, u in b["u"].tolist()], device=dev)
    z_k = model.lqa_view(every[k, idx])
    seg = prompts.identify_segments(prompts.IDENTIFY[b["q"]])
    hidden, _ = lqa.teacher_forced(lqa.prompt_embeds(seg, [z_k]), b["answers"])
    with torch.no_grad():
        ref, _ = reference.teacher_forced(reference.prompt_embeds(seg, [z_k]), b["answers"])
    h, r = torch.cat(hidden), torch.cat(ref)
    keep = (h - r).pow(2).mean() / r.pow(2).mean()
    loss = cmp_loss + cfg.keep * keep
    info = {"cmp": float(cmp_loss.detach()), "keep": float(keep.detach()), "pairs": len(pairs) / len(z_hq)}
    if cfg.clean_answer:
        worth = [p[1] > p[0] + cfg.tie_db for p in ps]
        targets = [a if w else CLEAN for a, w in zip(b["answers"], worth)]
        _, id_loss = lqa.teacher_forced(lqa.prompt_embeds(seg, [model.lqa_view(zs[0])]), targets)
        loss = loss + cfg.clean_answer * id_loss
        info |= {"id": float(id_loss.detach()), "worth": sum(worth) / len(worth)}
    return loss, info


def step_decoder(model, b, gen, cfg):
    x = b["x"]
    with torch.no_grad():
        z = model.codec.encode(x)
    rec = (model.codec.vae.decode(model.codec.process_out(z)).sample + 1) / 2
    loss = reconstruction_loss(rec, x)
    return loss, {"psnr": psnr(rec, x)}


BATCH = {
    "codec": batch_images,
    "decoder": batch_images,
    "lqa": batch_lqa,
    "uir": batch_pairs(composite_p=0.0),
    "connector": batch_pairs(composite_p=0.5),
    "e2e": batch_pairs(composite_p=0.6, rounds=len(ROUND_WEIGHTS)),
    "verify": batch_verify,
}
BATCH["refine"] = BATCH["e2e"]
STEP = {"codec": step_codec, "uir": step_uir, "lqa": step_lqa, "connector": step_connector, "e2e": step_e2e,
        "decoder": step_decoder, "refine": step_e2e, "verify": step_verify}


class StageBatches(torch.utils.data.Dataset):
    """Batch `step` of a stage; it depends on (seed, stage, step) only, so a resumed run, or one
    with any number of loader workers, sees exactly the batches of an unbroken one."""

    def __init__(self, stage: str, pool: PhotoPool, cfg: StageConfig, seed: int):
        self.stage, self.pool, self.cfg, self.seed = stage, pool, cfg, seed
        self.make = BATCH[stage]

    def __len__(self) -> int:
        return self.cfg.steps

    def __getitem__(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, STAGE_SEED[self.stage], step])
        crop, batch = self.cfg.draw(rng)
        return self.make(self.pool, rng, batch, crop, self.cfg)


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


def train_step(model: RAR, step_fn, batch: dict, gen, cfg: StageConfig, opt: torch.optim.Optimizer, params) -> tuple:
    """One update: the stage's forward, then a clipped AdamW step."""
    loss, info = step_fn(model, batch, gen, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss, info


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def train_stage(stage: str, out: Path, data: Path, cfg: StageConfig, seed: int = 0, preset: str = "compact",
                init: Path | None = None, quiet: bool = False, device: str = "auto", workers: int | None = None,
                budget_s: float | None = None, pool: PoolConfig = PoolConfig(), after: str | None = None) -> Path:
    """Train one stage from the model of stage `after` (by default PREVIOUS[stage]) or `init`,
    resuming any saved state.

    The codec stage builds a fresh model of `preset` unless `init` gives one. `budget_s` fits the
    run to a time budget: the rate measured early on (CALIB) caps the step count (the log and the
    model's metadata record the count used, so `--steps N` repeats it).
    """
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    after = after or PREVIOUS[stage]
    prev = init or (stage_path(out, after) if after else None)
    if prev is not None:
        if not prev.is_file():
            raise SystemExit(f"stage '{stage}' starts from {prev}, which does not exist: "
                             f"run `rar train --stage {after}` first")
        model = load_rar(prev)
    else:
        model = build_model(RARConfig.preset(preset), seed=seed)
    model.to(dev).train()
    step_fn = STEP[stage]
    if stage == "verify":  # the stage's starting LQA (a resumed run's too: copied before the state loads), frozen
        step_fn = partial(step_verify, reference=copy.deepcopy(model.lqa).requires_grad_(False))
    params = trainable(model, stage)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    state_file = out / f"state-{stage}.safetensors"
    start = load_state(state_file, model, opt) if state_file.is_file() else 0
    if start:
        print(f"resuming stage '{stage}' at step {start}/{cfg.steps}")
    pool = PhotoPool(data, cfg=pool)
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
    used = replace(cfg, steps=total)
    path = save_rar(model, stage_path(out, stage), {"stage": stage, "train": json.dumps(asdict(used)), "device": dev.type})
    print(f"stage '{stage}' done ({total} steps): {path}")
    return path


def add_train_subparser(sub) -> None:
    t = sub.add_parser("train", help="train a RAR model stage by stage (resumable)",
                       description="Train a RAR model on your photos, stage by stage, with a named recipe. "
                                   "Rerun the same command to resume a stopped run.")
    t.add_argument("--stage", choices=STAGES + OPTIONAL + ("all",), required=True,
                   help="one stage (it starts from the previous stage's model in --out) or all of the recipe's in order")
    t.add_argument("--recipe", default="compact", choices=sorted(RECIPES),
                   help="stage sizes and architecture (default: compact, the built-in model's recipe)")
    t.add_argument("--data", default="data", help="folder written by scripts/fetch_data.py (its manifest's train split)")
    t.add_argument("--out", default="runs/compact", help="folder for the stage models, logs and resumable state")
    t.add_argument("--export", help="also write the final model here in fp16, ready for --model or models/rar")
    t.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda[:N]")
    t.add_argument("--steps", type=int, help="steps of every stage run (default: the recipe's)")
    t.add_argument("--budget-s", type=float, help="cap each stage's steps to what fits this many seconds")
    t.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0, the built-in model's)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)


def stage_config(recipe: Recipe, stage: str, steps: int | None = None) -> StageConfig:
    """The recipe's config for `stage`, with `steps` (when given) in place of its step count."""
    cfg = recipe.stage(stage)
    return cfg if steps is None else replace(cfg, steps=steps)


def cmd_train(args) -> int:
    if args.steps is not None and args.steps < 1 or args.budget_s is not None and args.budget_s <= 0:
        raise SystemExit("--steps and --budget-s must be positive")
    recipe = RECIPES[args.recipe]
    if args.stage not in recipe.stages + ("all",):
        raise SystemExit(f"recipe '{recipe.name}' has no {args.stage} stage; its stages: {', '.join(recipe.stages)}")
    train_files(Path(args.data))  # before any work: a missing photo folder is the likeliest mistake
    stages = recipe.stages if args.stage == "all" else (args.stage,)
    path = None
    for stage in stages:
        path = train_stage(stage, Path(args.out), Path(args.data), stage_config(recipe, stage, args.steps), args.seed,
                           recipe.preset, quiet=args.quiet, device=args.device, budget_s=args.budget_s,
                           pool=recipe.stage(stage).pool or recipe.pool, after=recipe.previous(stage))
    if args.export and path is not None:
        model = load_rar(path)
        save_rar(model, args.export, {"stage": "final"}, dtype=torch.float16)  # half the bytes to ship
        print(f"exported {args.export}")
    return 0
