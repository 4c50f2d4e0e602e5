"""Staged training of a RAR model (Sec. 6), sized so the compact recipe runs on 2 CPU cores.

    codec      the latent codec (L1 + MSE reconstruction), then the latent normalisation stats
    uir        the restorer alone on single degradations, degraded->clean flow loss (Eq. 4)
    lqa        A_I + the IQA LM on identification and A/B comparison questions (LM loss)
    connector  A_Q + restorer on single and composite degradations, LQA frozen (teacher forced)
    e2e        recurrent end-to-end training (Eq. 5-6): 4 rounds weighted (0.2, 0.3, 0.4, 1.0),
               each round's predicted clean latent feeds the next without a gradient cut
    decoder    decoder-only fine-tuning of the codec: the encoder (so every latent the other
               stages learned on) stays fixed, only the final decode gets sharper

Every stage reads the previous stage's model file and writes its own; training state (model,
optimiser, step) is checkpointed to safetensors so a stopped run resumes where it was. Random
draws depend on (seed, step) only, so a resumed run sees the same batches as an unbroken one.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from . import degrade as D
from . import prompts
from .checkpoint import build_model, load_rar, save_rar
from .config import RARConfig
from .loop import RAR
from .uir import flow_loss, sample_s

# The paper's order (Sec. 6.1): UIR pre-training, LQA stages, connector, end-to-end.
STAGES = ("codec", "uir", "lqa", "connector", "e2e", "decoder")
PREVIOUS = {"codec": None, "uir": "codec", "lqa": "uir", "connector": "lqa", "e2e": "connector", "decoder": "e2e"}
STAGE_SEED = {"codec": 0, "lqa": 1, "uir": 2, "connector": 3, "e2e": 4, "decoder": 5}  # fixed, whatever the order
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


DEFAULTS = {
    "codec": StageConfig(steps=2000, batch=12, crop=64, lr=1e-3),
    "lqa": StageConfig(steps=2000, batch=16, crop=64, lr=5e-4),
    "uir": StageConfig(steps=1000, batch=12, crop=96, lr=4e-4),
    "connector": StageConfig(steps=500, batch=12, crop=96, lr=2e-4),
    "e2e": StageConfig(steps=1750, batch=6, crop=96, lr=1e-4),
    "decoder": StageConfig(steps=600, batch=8, crop=96, lr=5e-4),
}


# ----- data ---------------------------------------------------------------------------------
class PhotoPool:
    """Clean training photos in memory (train split of the fetched manifest only)."""

    def __init__(self, data: Path, max_side: int = 512):
        manifest = json.loads((data / "manifest.json").read_text())
        files = [data / i["file"] for i in manifest["images"] if i["split"] == "train"]
        if not files:
            raise SystemExit(f"no training images in {data}; run `python scripts/fetch_data.py --out {data}` first")
        self.images = []
        for f in files:
            with Image.open(f) as im:
                im = im.convert("RGB")
                im.thumbnail((max_side, max_side), Image.LANCZOS)
                self.images.append(np.asarray(im, dtype=np.float32) / 255.0)

    def crop(self, rng: np.random.Generator, size: int) -> np.ndarray:
        img = self.images[int(rng.integers(len(self.images)))]
        h, w = img.shape[:2]
        # Random scale so the model sees textures at several sizes.
        s = rng.uniform(size / min(h, w), 1.0) if min(h, w) > size else size / min(h, w)
        if abs(s - 1.0) > 1e-3:
            nh, nw = max(size, round(h * s)), max(size, round(w * s))
            img = np.asarray(Image.fromarray((img * 255).astype(np.uint8)).resize((nw, nh), Image.BICUBIC), dtype=np.float32) / 255
            h, w = nh, nw
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
def trainable(model: RAR, stage: str) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    parts = {
        "codec": [model.codec],
        "lqa": [model.lqa],
        "uir": [model.uir],
        "connector": [model.connector, model.uir],
        "e2e": [model.connector, model.uir, model.lqa],
        "decoder": [model.codec.vae.decoder, model.codec.vae.post_quant_conv],
    }[stage]
    parts = [m for m in parts if m is not None]
    params = [p for m in parts for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def step_codec(model, pool, rng, cfg, gen):
    x = to_tensor([pool.crop(rng, cfg.crop) for _ in range(cfg.batch)])
    dist = model.codec.vae.encode(x * 2 - 1).latent_dist
    rec = (model.codec.vae.decode(dist.sample(gen)).sample + 1) / 2
    kl = dist.kl().mean() / x[0].numel()
    loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-4 * kl
    psnr = -10 * math.log10(F.mse_loss(rec.clamp(0, 1), x).item() + 1e-12)
    return loss, {"psnr": psnr}


@torch.no_grad()
def encode(model: RAR, x: torch.Tensor) -> torch.Tensor:
    return model.codec.encode(x)


def step_lqa(model, pool, rng, cfg, gen):
    """Half identification, half comparison; answers come from the known labels."""
    lqa = model.lqa
    if rng.random() < 0.5:
        batch = [degraded_sample(pool, rng, cfg.crop, composite_p=0.35, clean_p=0.12) for _ in range(cfg.batch)]
        z = encode(model, to_tensor([b[1] for b in batch]))
        q = prompts.IDENTIFY[int(rng.integers(len(prompts.IDENTIFY)))]
        prefix = lqa.prompt_embeds(prompts.identify_segments(q), [z])
        _, loss = lqa.teacher_forced(prefix, [primary(b[2]) for b in batch])
        return loss, {"kind": 0.0}
    better, worse = [], []
    for _ in range(cfg.batch):
        clean, deg, labels = degraded_sample(pool, rng, cfg.crop, composite_p=0.35)
        if rng.random() < 0.5:  # clean vs degraded
            better.append(clean)
            worse.append(deg)
        else:  # less vs more degraded: the same degradations, a partial blend towards clean
            a = rng.uniform(0.0, 0.6)
            better.append((a * clean + (1 - a) * deg).astype(np.float32) if rng.random() < 0.5 else clean)
            worse.append(deg)
    za, zb = encode(model, to_tensor(better)), encode(model, to_tensor(worse))
    swap = torch.from_numpy(rng.random(cfg.batch) < 0.5)
    A = torch.where(swap[:, None, None, None], zb, za)
    B = torch.where(swap[:, None, None, None], za, zb)
    answers = ["Image B" if s else "Image A" for s in swap.tolist()]
    q = prompts.COMPARE[int(rng.integers(len(prompts.COMPARE)))]
    prefix = lqa.prompt_embeds(prompts.compare_segments(q), [A, B])
    _, loss = lqa.teacher_forced(prefix, answers)
    return loss, {"kind": 1.0}


def null_condition(model: RAR, batch: int):
    c = model.config.connector
    return torch.zeros(batch, 2 * c.num_query_tokens, c.context_dim), torch.zeros(batch, c.pooled_dim)


def condition_teacher(model: RAR, z: torch.Tensor, answers: list[str], rng) -> tuple:
    q = prompts.IDENTIFY[int(rng.integers(len(prompts.IDENTIFY)))]
    prefix = model.lqa.prompt_embeds(prompts.identify_segments(q), [z])
    hidden, lm_loss = model.lqa.teacher_forced(prefix, answers)
    context, pooled = model.connector.condition(hidden)
    return context, pooled, lm_loss


def step_uir(model, pool, rng, cfg, gen):
    batch = [degraded_sample(pool, rng, cfg.crop, composite_p=0.0) for _ in range(cfg.batch)]
    z_hq, z_deg = encode(model, to_tensor([b[0] for b in batch])), encode(model, to_tensor([b[1] for b in batch]))
    s = sample_s(cfg.batch, model.config.uir.flow_shift, gen)
    context, pooled = null_condition(model, cfg.batch)
    loss, _ = flow_loss(model.uir, z_hq, z_deg, s, context, pooled)
    return loss.mean(), {}


def step_connector(model, pool, rng, cfg, gen):
    batch = [degraded_sample(pool, rng, cfg.crop, composite_p=0.5, clean_p=0.05) for _ in range(cfg.batch)]
    z_hq, z_deg = encode(model, to_tensor([b[0] for b in batch])), encode(model, to_tensor([b[1] for b in batch]))
    with torch.no_grad():
        q = prompts.IDENTIFY[-1]
        prefix = model.lqa.prompt_embeds(prompts.identify_segments(q), [z_deg])
        hidden, _ = model.lqa.teacher_forced(prefix, [primary(b[2]) for b in batch])
    context, pooled = model.connector.condition(hidden)
    s = sample_s(cfg.batch, model.config.uir.flow_shift, gen)
    loss, _ = flow_loss(model.uir, z_hq, z_deg, s, context, pooled)
    return loss.mean(), {}


def step_e2e(model, pool, rng, cfg, gen):
    """Recurrent rounds (Eq. 5-6); the LQA keeps its identification and learns to verify results."""
    batch = [degraded_sample(pool, rng, cfg.crop, composite_p=0.6) for _ in range(cfg.batch)]
    z_hq, z = encode(model, to_tensor([b[0] for b in batch])), encode(model, to_tensor([b[1] for b in batch]))
    answers = [primary(b[2]) for b in batch]
    s = sample_s(cfg.batch, model.config.uir.flow_shift, gen)  # one time per sample, shared by rounds
    total, lm_total = 0.0, 0.0
    z_in = z
    for w in ROUND_WEIGHTS:
        context, pooled, lm_loss = condition_teacher(model, z, answers, rng)
        loss, z = flow_loss(model.uir, z_hq, z, s, context, pooled)
        total = total + w * loss.mean()
        lm_total = lm_total + lm_loss / len(ROUND_WEIGHTS)
    # Verification on real restorations: the candidate closer to z_hq is the better image.
    with torch.no_grad():
        cand = z.detach()
        cand_better = (cand - z_hq).pow(2).mean((1, 2, 3)) < (z_in - z_hq).pow(2).mean((1, 2, 3))
    swap = torch.from_numpy(rng.random(cfg.batch) < 0.5)
    A = torch.where(swap[:, None, None, None], z_in, cand)
    B = torch.where(swap[:, None, None, None], cand, z_in)
    a_better = cand_better ^ swap
    prefix = model.lqa.prompt_embeds(prompts.compare_segments(prompts.COMPARE[-1]), [A, B])
    _, cmp_loss = model.lqa.teacher_forced(prefix, ["Image A" if b else "Image B" for b in a_better.tolist()])
    return total + 0.1 * lm_total + 0.1 * cmp_loss, {"flow": float(total.detach()), "cmp": float(cmp_loss.detach())}


def step_decoder(model, pool, rng, cfg, gen):
    x = to_tensor([pool.crop(rng, cfg.crop) for _ in range(cfg.batch)])
    with torch.no_grad():
        z = model.codec.encode(x)
    rec = (model.codec.vae.decode(model.codec.process_out(z)).sample + 1) / 2
    loss = F.l1_loss(rec, x) + F.mse_loss(rec, x)
    return loss, {"psnr": -10 * math.log10(F.mse_loss(rec.clamp(0, 1), x).item() + 1e-12)}


STEP = {"decoder": step_decoder, "codec": step_codec, "lqa": step_lqa, "uir": step_uir, "connector": step_connector, "e2e": step_e2e}


@torch.no_grad()
def calibrate_latents(model: RAR, pool: PhotoPool, seed: int, n: int = 48, crop: int = 128) -> None:
    """Set the codec's shift/scale so z has zero mean and unit std (as SD3's 0.0609 / 1.5305)."""
    rng = np.random.default_rng([seed, 999_999])
    model.codec.config.shift, model.codec.config.scale = 0.0, 1.0
    z = torch.cat([model.codec.encode(to_tensor([pool.crop(rng, crop) for _ in range(8)])) for _ in range(n // 8)])
    model.codec.config.shift = float(z.mean())
    model.codec.config.scale = float(1.0 / z.std())
    model.config.codec = model.codec.config


# ----- driver -------------------------------------------------------------------------------
def stage_path(out: Path, stage: str) -> Path:
    return out / f"stage-{stage}.safetensors"


def train_stage(stage: str, out: Path, data: Path, cfg: StageConfig, seed: int = 0, preset: str = "compact",
                init: Path | None = None, quiet: bool = False) -> Path:
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    prev = init or (stage_path(out, PREVIOUS[stage]) if PREVIOUS[stage] else None)
    if prev is not None:
        if not prev.is_file():
            raise SystemExit(f"stage '{stage}' starts from {prev}, which does not exist: run `rar train --stage {PREVIOUS[stage]}` first")
        model = load_rar(prev)
    else:
        model = build_model(RARConfig.preset(preset), seed=seed)
    model.train()
    params = trainable(model, stage)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    state_file = out / f"state-{stage}.safetensors"
    start = load_state(state_file, model, opt) if state_file.is_file() else 0
    if start:
        print(f"resuming stage '{stage}' at step {start}/{cfg.steps}")
    pool = PhotoPool(data)
    log = (out / f"log-{stage}.jsonl").open("a")
    warm = min(100, cfg.steps // 10 + 1)
    sched = lambda i: min(1.0, (i + 1) / warm) * (0.5 * (1 + math.cos(math.pi * min(i, cfg.steps) / cfg.steps)) * 0.9 + 0.1)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {stage}", disable=quiet)
    ema, t0 = None, time.time()
    for step in bar:
        rng = np.random.default_rng([seed, STAGE_SEED[stage], step])
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * sched(step)
        loss, info = STEP[stage](model, pool, rng, cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}", **{k: f"{v:.3f}" for k, v in info.items()})
        if (step + 1) % cfg.log_every == 0:
            log.write(json.dumps({"step": step + 1, "loss": loss.item(), "ema": ema, "seconds": time.time() - t0, **info}) + "\n")
            log.flush()
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save_state(state_file, model, opt, step + 1)
    model.eval()
    if stage == "codec":
        calibrate_latents(model, pool, seed)
    path = save_rar(model, stage_path(out, stage), {"stage": stage, "train": json.dumps(asdict(cfg))})
    print(f"stage '{stage}' done: {path}")
    return path


def add_train_subparser(sub) -> None:
    t = sub.add_parser("train", help="train a RAR model stage by stage (resumable)")
    t.add_argument("--stage", choices=STAGES + ("all",), required=True)
    t.add_argument("--data", default="data", help="folder written by scripts/fetch_data.py")
    t.add_argument("--out", default="runs/compact", help="stage models and resumable state")
    t.add_argument("--preset", default="compact")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch", type=int)
    t.add_argument("--crop", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--export", help="also copy the final model here (e.g. rar_core/weights/rar-compact.safetensors)")
    t.add_argument("-q", "--quiet", action="store_true")
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    stages = STAGES if args.stage == "all" else (args.stage,)
    path = None
    for stage in stages:
        base = DEFAULTS[stage]
        cfg = StageConfig(**{**asdict(base), **{k: getattr(args, k) for k in ("steps", "batch", "crop", "lr") if getattr(args, k) is not None}})
        path = train_stage(stage, Path(args.out), Path(args.data), cfg, args.seed, args.preset, quiet=args.quiet)
    if args.export and path is not None:
        model = load_rar(path)
        save_rar(model, args.export, {"stage": "final"}, dtype=torch.float16)  # half the bytes to ship
        print(f"exported {args.export}")
    return 0
