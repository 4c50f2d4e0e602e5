"""Which of the LQA's answers tells whether the next round will help: the A/B comparison of the
new round against the old one (the gate), or the "Clean" log-odds of the round before it is
restored (the stop). On training crops, as scripts/calibrate_verify.py draws them (never the eval
set), two seeds; prints per round the AUC of each signal at telling a round 0.5 dB better from
one 0.5 dB worse, and the degraded crops' mean PSNR when the rounds after the first get their own
clean margin (at most the calibrated one) and verify margin; and, for rounds 1-3, the AUC of how
much more "Clean" the new round looks than the old. BENCHMARKS.md, experiments "stop signals" and
"Clean rise".

    python experiments/gate/signals.py [--model M] [--data data] [--samples 144] [--seeds 0 5000]
"""
import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import calibrate_verify as C  # noqa: E402
from rar_core import train as T  # noqa: E402
from rar_core.checkpoint import default_model_path, load_rar  # noqa: E402


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Probability that a positive scores above a negative (ties count half)."""
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(np.mean((pos[:, None] > neg[None]) + 0.5 * (pos[:, None] == neg[None])))


def kept(lo, cl, clean, verify):
    """The round each crop's loop keeps: `clean[k]` / `verify[k]` are round k's stop margins."""
    return np.array(C.stops(lo, verify, cl > np.asarray(clean)[None], stop_when_clean=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data", default="data")
    ap.add_argument("--samples", type=int, default=144)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 5000])
    args = ap.parse_args()
    model = load_rar(Path(args.model or default_model_path())).eval()
    c0, v0 = model.config.clean_margin, model.config.verify_margin
    if c0 is None or not model.config.stop_when_clean:
        raise SystemExit("the model does not stop on a calibrated \"Clean\": run scripts/calibrate_verify.py --write first")
    pool = T.PhotoPool(Path(args.data), cfg=C.recipe_pool("compact"))
    for seed in args.seeds:
        batches = [C.crops(pool, min(8, args.samples - s), 256, seed + s, 0.33) for s in range(0, args.samples, 8)]
        deg = ~np.concatenate([b[2] for b in batches])
        with torch.no_grad():
            ps, lo, cl = (np.concatenate(v) for v in zip(*(C.record(model, b[0], b[1], model.encode(b[1])) for b in batches)))
        print(f"seed {seed}: {deg.sum()} degraded crops, input {ps[deg, 0].mean():.2f} dB, "
              f"best round {ps[deg].max(1).mean():.2f} dB")
        for k in range(cl.shape[1]):
            gain = ps[:, k + 1] - ps[:, k]
            c = (np.abs(gain) >= C.GATE_DB) & deg
            rise = ""  # how much more "Clean" the new round looks than the old (z_k's log-odds are recorded up to round 3)
            if k + 1 < cl.shape[1]:
                d = cl[c, k + 1] - cl[c, k]
                rise = (f", Clean rise {auc(gain[c] > 0, d):.2f} (correlation with the comparison "
                        f"{np.corrcoef(d, lo[c, k])[0, 1]:.2f}; sum {auc(gain[c] > 0, lo[c, k] + d):.2f})")
            print(f"  round {k + 1}: {c.sum()} rounds ({(gain[c] > 0).sum()} better); AUC comparison "
                  f"{auc(gain[c] > 0, lo[c, k]):.2f}, not-Clean before it {auc(gain[c] > 0, -cl[c, k]):.2f}{rise}")
        R = lo.shape[1]
        rows = []
        for cl_later, v_later in itertools.product(np.arange(-3.0, c0 + 0.01, 0.5), C.MARGINS):
            k = kept(lo, cl, [c0] + [cl_later] * (R - 1), [v0] + [v_later] * (R - 1))
            rows.append((ps[np.arange(len(ps)), k][deg].mean(), cl_later, v_later))
        base = ps[np.arange(len(ps)), kept(lo, cl, [c0] * R, [v0] * R)][deg].mean()
        best = max(rows)
        print(f"  degraded crops: calibrated margins {base:.2f} dB; best later-round margins "
              f"(clean {best[1]:.1f}, verify {best[2]}) {best[0]:.2f} dB")


if __name__ == "__main__":
    main()
