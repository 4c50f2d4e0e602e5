"""Calibrate the verification margin of a compact RAR on training photos (never the eval set).

Runs 4 fixed rounds on degraded crops of the training photos, recording after each round the
PSNR of the decoded result and the verifier's summed log-odds (round k against round k-1). The
adaptive loop with margin m stops at the first round whose log-odds are <= m and keeps the round
before (round 0: the input pixels, as restore_image does), so every margin can be scored from one
pass. Prints mean PSNR and rounds per margin; --write stores the best margin in the model file,
with the LQA's view window (`lqa_view`, default: the compact preset's, the largest training crop).
The best margin is the one with the highest mean PSNR among those whose loop keeps at most
--max-rounds rounds on average (issue 3's budget, 2.5), so a verifier that likes every round
cannot buy a few hundredths of a dB with twice the compute.

    python scripts/calibrate_verify.py [--model M] [--samples 48] [--max-rounds 2.5] [--write]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core import degrade as D  # noqa: E402
from rar_core import train as T  # noqa: E402
from rar_core.checkpoint import default_model_path, load_rar, read_metadata, save_rar  # noqa: E402
from rar_core.loop import trajectory  # noqa: E402
from rar_core.config import RARConfig  # noqa: E402

MARGINS = (-2.0, -1.0, 0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


@torch.no_grad()
def record(model, pool, n, size, seed, rounds=4):
    """psnr[i][k] (k = 0: input) and log-odds[i][k-1] of round k against round k-1."""
    rng = np.random.default_rng([seed, 4242])  # a stream no training step draws from
    clean, deg = [], []
    for i in range(n):
        c = pool.crop(rng, size)
        s = D.random_composite(c, rng) if i % 2 else D.random_single(c, rng)
        clean.append(c)
        deg.append(s.image)
    x_hq, x = T.to_tensor(clean), T.to_tensor(deg)
    zs = trajectory(model, model.encode(x), rounds)
    lo = torch.stack([model.verify_log_odds(new, prev) for prev, new in zip(zs, zs[1:])], 1)
    return T.round_psnr(model, zs, x, x_hq).double().numpy(), lo.double().numpy()


def simulate(ps, lo, margin):
    """Mean PSNR and accepted rounds of the adaptive loop with this margin."""
    kept = [next((k for k in range(lo.shape[1]) if lo[i, k] <= margin), lo.shape[1]) for i in range(len(ps))]
    return float(np.mean([ps[i, k] for i, k in enumerate(kept)])), float(np.mean(kept))


def pick_margin(scores: dict[float, tuple[float, float]], max_rounds: float) -> float:
    """Highest mean PSNR (to 0.001 dB) among margins within the rounds budget; ties: the smallest
    change (|margin|). With no margin within budget, the one with the fewest rounds."""
    ok = [m for m, (_, r) in scores.items() if r <= max_rounds]
    if not ok:
        return min(scores, key=lambda m: (scores[m][1], abs(m)))
    return max(ok, key=lambda m: (round(scores[m][0], 3), -abs(m)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data", default="data")
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lqa-view", type=int, default=RARConfig.preset("compact").lqa_view,
                    help="latent side of the window the LQA looks at (0: the whole latent); stored with --write")
    ap.add_argument("--max-rounds", type=float, default=2.5,
                    help="mean accepted rounds the chosen margin may use on the calibration crops")
    ap.add_argument("--write", action="store_true", help="store the best margin (and --lqa-view) in the model file")
    args = ap.parse_args()
    path = Path(args.model or default_model_path())
    model = load_rar(path).eval()
    model.config.lqa_view = args.lqa_view
    if model.config.verify_orders != 2:
        raise SystemExit("the margin applies to verification in both orders (verify_orders = 2)")
    pool = T.PhotoPool(Path(args.data))
    ps, lo = [], []
    for start in range(0, args.samples, 8):
        p, l_ = record(model, pool, min(8, args.samples - start), args.size, args.seed + start)
        ps.append(p)
        lo.append(l_)
    ps, lo = np.concatenate(ps), np.concatenate(lo)
    print(f"{len(ps)} training crops: input {ps[:, 0].mean():.2f} dB, rounds 1-4 {ps[:, 1:].mean(0).round(2).tolist()}")
    oracle = ps.max(1)  # a verifier that always stopped at the best round (the headroom of the gate)
    print(f"oracle stop: {oracle.mean():.2f} dB at {ps.argmax(1).mean():.2f} rounds")
    gain = np.diff(ps, axis=1)  # round k against round k-1, as the verifier is asked
    tie_db = 0.25  # rounds closer than this (dB) are near-ties: their order is not counted
    clear = np.abs(gain) >= tie_db
    right = (lo > 0) == (gain > 0)
    print(f"successive rounds ranked right (log-odds sign, pairs >= {tie_db} dB apart): "
          f"{right[clear].mean():.1%} of {clear.sum()}; all pairs {right.mean():.1%}")
    for k in range(gain.shape[1]):
        c = clear[:, k]
        share = f"{right[c, k].mean():.0%}" if c.any() else "-"
        print(f"  round {k + 1} against {k}: {share} of {c.sum()} right, mean gain {gain[:, k].mean():+.2f} dB")
    print("margin | mean PSNR | rounds")
    scores = {m: simulate(ps, lo, m) for m in MARGINS}
    for m, (p, r) in scores.items():
        print(f"{m:6.2f} | {p:9.2f} | {r:.2f}")
    best = pick_margin(scores, args.max_rounds)
    print(f"best margin {best} within {args.max_rounds} rounds (was {model.config.verify_margin})")
    if args.write:
        model.config.verify_margin = float(best)
        meta = read_metadata(path)
        # load_rar computes in fp32 on a CPU; write the file back in the precision it was stored in
        with safe_open(str(path), framework="pt") as f:
            dtype = next(t.dtype for t in (f.get_tensor(k) for k in f.keys()) if t.is_floating_point())
        save_rar(model, path, {k: meta[k] for k in ("stage",) if k in meta}, dtype=dtype)
        print(f"wrote verify_margin = {best}, lqa_view = {args.lqa_view} into {path}")


if __name__ == "__main__":
    main()
