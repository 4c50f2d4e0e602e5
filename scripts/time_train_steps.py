"""Seconds per training step of each stage, in fp32 and in bf16 autocast (BENCHMARKS.md, training).

Each stage makes the `DEFAULTS` batches of its first steps (timed apart: on a CPU `rar train` makes
data in its own process, so this adds to every step) and runs them through `train.train_step` from
the same starting model in both precisions; the first step warms up and is not counted. The losses
are printed so one can see that the two precisions compute the same thing. Run it on an idle machine.

    python scripts/time_train_steps.py [--model M] [--data data] [--stages uir,lqa] [--steps 3]
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core import train as T  # noqa: E402
from rar_core.checkpoint import default_model_path, load_rar  # noqa: E402


def make_batches(pool: T.PhotoPool, stage: str, steps: int) -> tuple[list[dict], float]:
    """The stage's first batches and the mean seconds one took to make (on a CPU, in the training
    process: `rar train` uses no loader workers there, so this adds to every step)."""
    maker = T.StageBatches(stage, pool, T.DEFAULTS[stage], seed=0)
    t = time.perf_counter()
    batches = [maker[i] for i in range(steps + 1)]
    return batches, (time.perf_counter() - t) / (steps + 1)


def time_stage(model_path: Path, batches: list[dict], stage: str, precision: str) -> tuple[float, list[float]]:
    """Mean seconds per step after the first, and every step's loss."""
    cfg = replace(T.DEFAULTS[stage], precision=precision)
    model = load_rar(model_path).float().train()
    params = T.trainable(model, stage)
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    seconds, losses = [], []
    for i, batch in enumerate(batches):
        t = time.perf_counter()
        loss, _ = T.train_step(model, T.STEP[stage], batch, torch.Generator().manual_seed(i), cfg, opt, params)
        seconds.append(time.perf_counter() - t)
        losses.append(loss.item())
    return sum(seconds[1:]) / (len(seconds) - 1), losses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(default_model_path()), help="starting model (any stage file)")
    p.add_argument("--data", default="data")
    p.add_argument("--stages", default=",".join(T.STAGES))
    p.add_argument("--steps", type=int, default=3, help="timed steps per stage and precision (after one warm-up)")
    args = p.parse_args(argv)
    pool = T.PhotoPool(Path(args.data))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16: {T.native_bf16()}")
    print("| stage | batch x crop | data s/step | fp32 s/step | bf16 s/step | speed-up | losses fp32 / bf16 |")
    print("|---|---|---:|---:|---:|---:|---|")
    for stage in args.stages.split(","):
        cfg = T.DEFAULTS[stage]
        batches, data_s = make_batches(pool, stage, args.steps)
        (t32, l32), (t16, l16) = (time_stage(Path(args.model), batches, stage, prec) for prec in ("fp32", "bf16"))
        sides = f"{cfg.crop} px" + (f", sides {min(cfg.crops)}-{max(cfg.crops)}" if cfg.crops else "")
        fmt = lambda ls: " ".join(f"{x:.3f}" for x in ls)  # noqa: E731
        print(f"| {stage} | {cfg.batch} x {sides} | {data_s:.2f} | {t32:.2f} | {t16:.2f} | {t32 / t16:.2f}x | {fmt(l32)} / {fmt(l16)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
