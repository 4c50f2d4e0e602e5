"""How much of each degradation reaches the codec's latent? (BENCHMARKS.md, identification)

For clean training crops and the same crops degraded (one degradation at a time, several
severities), prints the pixel MSE the degradation adds, the relative change it makes to the latent
(||z_deg - z_clean||^2 / ||z_clean||^2), and the median ratio of the latent's high-pass energy
(z minus its 3x3 mean) degraded / clean. A degradation with a large pixel MSE but a small latent
change is one the LQA, which only sees the latent, cannot name however long it trains.

    python scripts/latent_sensitivity.py [--model M] [--crops 64] [--size 64]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core import degrade as D  # noqa: E402
from rar_core import train as T  # noqa: E402
from rar_core.checkpoint import default_model_path, load_rar  # noqa: E402


def high_pass_energy(z: torch.Tensor) -> torch.Tensor:
    return (z - F.avg_pool2d(z, 3, 1, 1, count_include_pad=False)).pow(2).mean((1, 2, 3))


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data", default="data")
    ap.add_argument("--crops", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--severities", default="1,3,5")
    args = ap.parse_args()
    model = load_rar(args.model or default_model_path()).eval()
    pool = T.PhotoPool(Path(args.data))
    rng = np.random.default_rng(5)
    clean = [pool.crop(rng, args.size) for _ in range(args.crops)]
    x_clean = T.to_tensor(clean)
    z_clean = model.encode(x_clean)
    hp_clean = high_pass_energy(z_clean)
    print("degradation | severity | pixel MSE | latent change | latent high-pass energy, degraded / clean")
    for name in D.LABELS:
        for sev in (int(s) for s in args.severities.split(",")):
            x = T.to_tensor([D.degrade(c, [name], [sev], rng).image for c in clean])
            z = model.encode(x)
            change = ((z - z_clean).pow(2).mean((1, 2, 3)) / z_clean.pow(2).mean((1, 2, 3))).mean().item()
            ratio = (high_pass_energy(z) / hp_clean).median().item()
            print(f"{name:8s} | {sev} | {(x - x_clean).pow(2).mean().item():.4f} | {change:.4f} | {ratio:.2f}")


if __name__ == "__main__":
    main()
