"""How much of the degradation label can be read off the latents at all? (BENCHMARKS.md, identification)

Trains A_I plus a linear head directly on labelled latents of single degradations of the training
photos, and reports held-out accuracy per label. If this probe, with no language model in the
way, stays low, identification is limited by the data rather than by the LQA's training.

    python scripts/probe_identification.py [--model M] [--crop 64] [--train 3000] [--steps 2000] [--severity 3] [--pixels]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core import degrade as D  # noqa: E402
from rar_core import train as T  # noqa: E402
from rar_core.checkpoint import default_model_path, load_rar  # noqa: E402
from rar_core.lqa import ImageAdapter  # noqa: E402


def latents(model, pool, n, seed, crop, severity=None, pixels=False):
    rng, labels = np.random.default_rng(seed), list(model.config.labels)
    xs, ys = [], []
    for _ in range(n):
        s = D.random_single(pool.crop(rng, crop), rng, severity)
        xs.append(s.image)
        ys.append(labels.index(T.primary(s.labels)))
    if pixels:  # lossless: the pixels rearranged to the latent's grid
        return torch.nn.functional.pixel_unshuffle(T.to_tensor(xs) * 2 - 1, model.config.codec.downsample), torch.tensor(ys)
    with torch.no_grad():
        z = torch.cat([model.encode(T.to_tensor(xs[i:i + 64])) for i in range(0, n, 64)])
    return z, torch.tensor(ys)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data", default="data")
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--train", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--severity", type=int, help="one severity for every sample (default: the training mix)")
    ap.add_argument("--without-ln-pre", action="store_true",
                    help="drop A_I's per-token LayerNorm (does it hide the energy that tells noise and blur apart?)")
    ap.add_argument("--pixels", action="store_true",
                    help="probe the pixels instead of the latents (pixel unshuffle + a 1x1 conv to the latent's channels): "
                         "is the codec what hides the label?")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_rar(args.model or default_model_path()).eval()
    labels = list(model.config.labels)
    pool = T.PhotoPool(Path(args.data))
    z_tr, y_tr = latents(model, pool, args.train, 1, args.crop, args.severity, args.pixels)
    z_te, y_te = latents(model, pool, 400, 2, args.crop, args.severity, args.pixels)
    c = model.config.codec.latent_channels
    stem = torch.nn.Conv2d(z_tr.shape[1], c, 1) if args.pixels else torch.nn.Identity()
    adapter = ImageAdapter(model.config.adapter, c)
    if args.without_ln_pre:
        adapter.ln_pre = torch.nn.Identity()
    head = torch.nn.Linear(model.config.adapter.width, len(labels))
    opt = torch.optim.AdamW([*stem.parameters(), *adapter.parameters(), *head.parameters()], lr=5e-4)
    classify = lambda z: head(adapter(stem(z)).mean(1))  # noqa: E731
    for step in range(args.steps):
        i = torch.randint(0, len(z_tr), (64,))
        loss = torch.nn.functional.cross_entropy(classify(z_tr[i]), y_tr[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0:
            with torch.no_grad():
                acc = (classify(z_te).argmax(1) == y_te).float().mean().item()
            print(f"step {step + 1}: train loss {loss.item():.3f}, held-out accuracy {acc:.1%}")
    with torch.no_grad():
        pred = classify(z_te).argmax(1)
    for k, name in enumerate(labels):
        sel = y_te == k
        if sel.any():
            print(f"{name:18s} {(pred[sel] == k).float().mean().item():.0%}")


if __name__ == "__main__":
    main()
