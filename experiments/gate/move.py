"""Does the restorer's own move tell whether a round helped? On training crops, as
scripts/calibrate_verify.py draws them (never the eval set): per round k of a fixed run, the PSNR
gain, the comparison's log-odds, the relative move d_k = |z_k - z_{k-1}| / |z_{k-1}| and the
look-ahead ratio d_{k+1} / d_k (round k+1 is what the loop runs next anyway). Prints each signal's
AUC at telling a round 0.5 dB better from one 0.5 dB worse, the AUC of the comparison plus a * log d_k,
and the adaptive loop that gate would give (degraded crops' mean PSNR, the two gate rates) per
margin. BENCHMARKS.md, experiment "restorer's move".

    python experiments/gate/move.py [--model M] [--data data] [--samples 144] [--seed 0]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(Path(__file__).resolve().parent)]
import calibrate_verify as C  # noqa: E402
from signals import auc  # noqa: E402

from rar_core import train as T  # noqa: E402
from rar_core.checkpoint import default_model_path, load_rar  # noqa: E402
from rar_core.loop import run  # noqa: E402


@torch.no_grad()
def moves(model, x_hq, x, rounds=4):
    """(psnr [B, rounds + 1], comparison log-odds [B, rounds], relative moves [B, rounds + 1]):
    one round more than the loop verifies, for the look-ahead."""
    zs = [model.encode(x)]
    run(model, zs[0], rounds + 1, mode="fixed", callback=lambda k, z: zs.append(z.clone()))
    lo = torch.stack([model.verify_log_odds(new, prev) for prev, new in zip(zs[:rounds], zs[1:])], 1)
    ps = T.round_psnr(model, zs[: rounds + 1], x, x_hq).double().clamp(max=C.PSNR_CAP)
    d = torch.stack([(b - a).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1) for a, b in zip(zs, zs[1:])], 1)
    return ps.numpy(), lo.double().numpy(), d.double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data", default="data")
    ap.add_argument("--samples", type=int, default=144)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_rar(Path(args.model or default_model_path())).eval()
    pool = T.PhotoPool(Path(args.data), cfg=C.recipe_pool("compact"))
    batches = [C.crops(pool, min(8, args.samples - s), 256, args.seed + s, 0.33) for s in range(0, args.samples, 8)]
    ps, lo, d = (np.concatenate(v) for v in zip(*(moves(model, b[0], b[1]) for b in batches)))
    deg = ~np.concatenate([b[2] for b in batches])
    for k in range(lo.shape[1]):
        gain = ps[:, k + 1] - ps[:, k]
        c = (np.abs(gain) >= C.GATE_DB) & deg
        y = gain[c] > 0
        print(f"round {k + 1}: {c.sum()} rounds ({y.sum()} better); AUC comparison {auc(y, lo[c, k]):.2f}, "
              f"move {auc(y, d[c, k]):.2f}, smaller look-ahead ratio {auc(y, -d[c, k + 1] / d[c, k]):.2f}")
    log_d = np.log(d[:, : lo.shape[1]])
    gain = ps[:, 1:] - ps[:, :-1]
    c = (np.abs(gain) >= C.GATE_DB) & deg[:, None]
    for a in (0.0, 0.5, 1.0, 2.0):
        score = lo + a * log_d
        print(f"comparison + {a} log d: AUC, all rounds {auc(gain[c] > 0, score[c]):.2f}")
        for m in np.arange(0.0, 5.01, 0.5) + a * np.median(log_d):
            rej, acc = C.gate_rates(ps[deg], score[deg], m)
            print(f"  margin {m:+5.2f}: degraded crops {C.simulate(ps[deg], score[deg], m)[0]:.2f} dB, "
                  f"rounds {C.simulate(ps, score, m)[1]:.2f}, worse rejected {rej:.0%}, better accepted {acc:.0%}")
    print(f"degraded crops: input {ps[deg, 0].mean():.2f} dB, the better of the input and round 1 "
          f"{np.maximum(ps[deg, 0], ps[deg, 1]).mean():.2f}, best round {ps[deg].max(1).mean():.2f}")


if __name__ == "__main__":
    main()
