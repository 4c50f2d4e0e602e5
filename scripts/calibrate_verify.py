"""Calibrate the verification margin and the "Clean" margin of a compact RAR on training photos
(never the eval set).

Runs 4 fixed rounds on crops of the training photos (a --clean share of them undegraded), and
records after each round the PSNR of the decoded result, the verifier's summed log-odds (round k
against round k-1) and the LQA's log-odds for "Clean" (log P(Clean) - the best other label's)
on each round it assesses. The adaptive loop with margin m stops at the first round whose
log-odds are <= m and keeps the round before (round 0: the input pixels, as restore_image does),
or, when it stops on "Clean", at the first round called clean; so every margin can be scored from
one pass. Prints, per margin, mean PSNR, rounds, and the gate's two rates: worse rounds (by 0.5 dB
or more) rejected and better ones accepted.

The verify margin: of the margins whose loop keeps at most --max-rounds rounds on average (2.5),
the best meets the gate's two targets (rejects at least --reject of the worse rounds and accepts
at least --accept of the better ones) with the highest mean PSNR, or, when none meets both, is
right most often on the two kinds of rounds: a verifier that likes every round cannot buy a few
hundredths of a dB with twice the compute or with harm to clean photos, and one that likes none
cannot win by restoring nothing.

The clean margin: the largest that still calls --clean-recall (90 %) of the clean crops clean
(none when not even 0 does: the LQA then answers greedily). The rounds are restored with it. With
a clean margin the loop stops on "Clean", and the verify margin is picked with that stop; what the
stop costs the degraded crops is printed, not weighed: a gate alone lets rounds through on clean
dark and text photos, a loss the degraded crops' mean does not show (BENCHMARKS.md, experiment
refine).
--write stores the margins, the stop and the LQA's view window (`lqa_view`, default: the compact
preset's, the largest training crop) in the model file.

    python scripts/calibrate_verify.py [--model M] [--samples 48] [--clean 0.33] [--write]
"""
import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core import degrade as D  # noqa: E402
from rar_core import train as T  # noqa: E402
from rar_core.checkpoint import default_model_path, load_rar, read_metadata, save_rar  # noqa: E402
from rar_core import prompts  # noqa: E402
from rar_core.loop import run  # noqa: E402
from rar_core.lqa import log_odds_over_rest  # noqa: E402
from rar_core.config import RARConfig  # noqa: E402

MARGINS = (-2.0, -1.0, 0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
CLEAN_MARGINS = tuple(float(m) for m in np.arange(0.0, 8.01, 0.25))
PSNR_CAP = 60.0  # a round identical to the clean photo (a clean input's round 0) counts as 60 dB
GATE_DB = 0.5  # a round this much worse (better) than its predecessor should be rejected (accepted)


@torch.no_grad()
def clean_log_odds(model, z: torch.Tensor) -> torch.Tensor:
    """[B] log P(Clean) - max log P(other label) of the LQA's identification of z (no margin)."""
    labels = list(model.config.labels)
    i = next(j for j, label in enumerate(labels) if prompts.is_clean(label))
    return log_odds_over_rest(model.lqa.identify(model.lqa_view(z), labels).logprob.float().cpu(), i)


def crops(pool, n, size, seed, clean_share=0.0):
    """n training crops (x_hq) and the loop's inputs (x: degraded, or a clean_share of them left
    undegraded), and which are undegraded."""
    rng = np.random.default_rng([seed, 4242])  # a stream no training step draws from
    clean, deg, undegraded = [], [], []
    for i in range(n):
        c = pool.crop(rng, size)
        undegraded.append(rng.random() < clean_share)
        deg.append(c if undegraded[-1] else (D.random_composite(c, rng) if i % 2 else D.random_single(c, rng)).image)
        clean.append(c)
    return T.to_tensor(clean), T.to_tensor(deg), np.array(undegraded)


def has_clean_label(model) -> bool:
    return any(prompts.is_clean(label) for label in model.config.labels)


@torch.no_grad()
def record(model, x_hq, x, z, rounds=4):
    """psnr[i][k] (k = 0: input, capped at PSNR_CAP), log-odds[i][k-1] of round k against round
    k-1, and clean[i][k]: the "Clean" log-odds of round k (k < rounds; NaN without a clean label),
    from the inputs x and their latents z."""
    zs = [z]
    run(model, zs[0], rounds, mode="fixed", callback=lambda k, z: zs.append(z.clone()))
    lo = torch.stack([model.verify_log_odds(new, prev) for prev, new in zip(zs, zs[1:])], 1)
    if has_clean_label(model):
        cl = torch.stack([clean_log_odds(model, z) for z in zs[:rounds]], 1).double().numpy()
    else:
        cl = np.full((len(x), rounds), np.nan)
    ps = T.round_psnr(model, zs, x, x_hq).double().clamp(max=PSNR_CAP).numpy()
    return ps, lo.double().numpy(), cl


def pick_clean_margin(clean_log_odds_of_clean: np.ndarray, recall: float) -> float | None:
    """The largest of CLEAN_MARGINS at which at least `recall` of the clean crops are called clean
    (log-odds above it); None when not even 0 does. The margins are never negative: a margin holds
    "Clean" back where the LQA gives it too freely, never pushes it on inputs."""
    ok = [m for m in CLEAN_MARGINS if np.mean(clean_log_odds_of_clean > m) >= recall]
    return max(ok) if ok else None


def choose_gate(ps, lo, called, degraded, max_rounds, reject, accept):
    """The verify margin (pick_margin) of the loop that stops on `called` (None: never), and the
    degraded crops' mean PSNR with it."""
    stop = called is not None
    scores = {m: simulate(ps, lo, m, called, stop) for m in MARGINS}
    rates = {m: gate_rates(ps, lo, m, called, stop) for m in MARGINS}
    # a kind of round the crops never gave cannot be got wrong
    best = pick_margin(scores, max_rounds, {m: tuple(np.nan_to_num(v, nan=1.0)) for m, v in rates.items()}, reject, accept)
    return best, simulate(ps[degraded], lo[degraded], best, None if called is None else called[degraded], stop)[0], scores, rates


def stops(lo, margin, clean=None, stop_when_clean=False):
    """The round each sample's adaptive loop keeps: before the first rejected round, or the first
    round called clean (kept as it is). `margin`: the verify margin, or one for each round."""
    R = lo.shape[1]
    margin = np.broadcast_to(np.asarray(margin, dtype=float), (R,))
    out = []
    for i in range(len(lo)):
        k = 0
        while k < R and not (stop_when_clean and clean is not None and clean[i, k]) and lo[i, k] > margin[k]:
            k += 1
        out.append(k)
    return out


def simulate(ps, lo, margin, clean=None, stop_when_clean=False):
    """Mean PSNR and accepted rounds of the adaptive loop with this margin."""
    kept = stops(lo, margin, clean, stop_when_clean)
    return float(np.mean([ps[i, k] for i, k in enumerate(kept)])), float(np.mean(kept))


def gate_rates(ps, lo, margin, clean=None, stop_when_clean=False):
    """Of the rounds the adaptive loop verifies (up to its stop), the share of those GATE_DB worse
    than their predecessor that it rejects, and of those GATE_DB better that it accepts (NaN: none)."""
    kept = stops(lo, margin, clean, stop_when_clean)
    worse, better = [], []
    for i, k in enumerate(kept):
        asked = k + 1 if k < lo.shape[1] and not (stop_when_clean and clean is not None and clean[i, k]) else k
        for j in range(asked):
            gain = ps[i, j + 1] - ps[i, j]
            if gain <= -GATE_DB:
                worse.append(lo[i, j] <= margin)
            elif gain >= GATE_DB:
                better.append(lo[i, j] > margin)
    rate = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return rate(worse), rate(better)


def recipe_pool(name: str) -> T.PoolConfig:
    """The photo pool the gate of a training recipe learnt on (its verify stage's, else the
    recipe's), the shipped ones' or an experiment's."""
    recipes = dict(T.RECIPES)
    from experiments.recipes import EXPERIMENTS

    recipes.update(EXPERIMENTS)
    if name not in recipes:
        raise SystemExit(f"unknown recipe {name!r}; choose one of {', '.join(sorted(recipes))}")
    r = recipes[name]
    return r.verify.pool if r.verify is not None and r.verify.pool is not None else r.pool


def pick_margin(scores: dict[float, tuple[float, float]], max_rounds: float,
                rates: dict[float, tuple[float, float]] | None = None, reject: float = 0.95, accept: float = 0.80) -> float:
    """The margin of a gate that meets both its targets on the calibration crops (`rates[m]`: the
    share of rounds GATE_DB worse than their predecessor it rejects, at least `reject`, and of
    those GATE_DB better it accepts, at least `accept`): among those within the rounds budget, the
    highest mean PSNR (to 0.001 dB). When no margin meets both, the one right most often on the
    two kinds of rounds (the mean of the two rates): the mean PSNR alone, with a third of the crops
    clean at the 60 dB cap, rewards a gate that restores nothing. Ties: the higher mean PSNR, then
    the smallest change (|margin|). Without rates, the highest mean PSNR; with no margin within
    the budget, the one with the fewest rounds."""
    ok = [m for m, (_, r) in scores.items() if r <= max_rounds]
    if not ok:
        return min(scores, key=lambda m: (scores[m][1], abs(m)))
    psnr = lambda m: round(scores[m][0], 3)  # noqa: E731
    if rates is None:
        return max(ok, key=lambda m: (psnr(m), -abs(m)))
    meets = [m for m in ok if rates[m][0] >= reject and rates[m][1] >= accept]
    if meets:
        return max(meets, key=lambda m: (psnr(m), -abs(m)))
    return max(ok, key=lambda m: (round(sum(rates[m]) / 2, 3), psnr(m), -abs(m)))


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
    ap.add_argument("--recipe", default="compact",
                    help="whose photo pool to draw from (bright exposures, flat graphics): a recipe of rar train "
                         "or experiments/recipes.py (default compact)")
    ap.add_argument("--clean", type=float, default=0.33, help="share of undegraded crops (default 0.33)")
    ap.add_argument("--reject", type=float, default=0.95,
                    help=f"share of rounds {GATE_DB} dB worse than their predecessor the gate should reject (default 0.95)")
    ap.add_argument("--accept", type=float, default=0.80,
                    help=f"share of rounds {GATE_DB} dB better than their predecessor the gate should accept (default 0.80)")
    ap.add_argument("--clean-recall", type=float, default=0.9,
                    help="share of the clean crops the LQA must still call clean past its clean margin (default 0.9)")
    ap.add_argument("--write", action="store_true",
                    help="store the margins, the stop on Clean and --lqa-view in the model file")
    args = ap.parse_args()
    path = Path(args.model or default_model_path())
    model = load_rar(path).eval()
    was = replace(model.config)
    model.config.lqa_view = args.lqa_view
    if model.config.verify_orders != 2:
        raise SystemExit("the margin applies to verification in both orders (verify_orders = 2)")
    pool = T.PhotoPool(Path(args.data), cfg=recipe_pool(args.recipe))
    batches = [crops(pool, min(8, args.samples - s), args.size, args.seed + s, args.clean) for s in range(0, args.samples, 8)]
    undegraded = np.concatenate([b[2] for b in batches])
    with torch.no_grad():
        z0 = [model.encode(b[1]) for b in batches]
    clean_margin = None
    if has_clean_label(model) and undegraded.any():
        # round 0 only: its answer does not depend on the margin, the rounds after do
        cl0 = np.concatenate([clean_log_odds(model, z).double().numpy() for z in z0])
        clean_margin = pick_clean_margin(cl0[undegraded], args.clean_recall)
        print(f"the LQA's greedy answer calls {np.mean(cl0[undegraded] > 0):.0%} of the clean crops clean and "
              f"{np.mean(cl0[~undegraded] > 0):.0%} of the degraded ones; clean margin for {args.clean_recall:.0%} "
              f"of the clean: {clean_margin}")
    model.config.clean_margin = clean_margin
    ps, lo, cl = (np.concatenate(v) for v in zip(*(record(model, b[0], b[1], z) for b, z in zip(batches, z0))))
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
    degraded = ~undegraded
    gates = {"never": choose_gate(ps, lo, None, degraded, args.max_rounds, args.reject, args.accept)}
    if clean_margin is not None:
        called = cl > clean_margin
        gates["on Clean"] = choose_gate(ps, lo, called, degraded, args.max_rounds, args.reject, args.accept)
        print(f"with the margin the LQA calls {called[undegraded, 0].mean():.0%} of the clean crops clean "
              f"and {called[degraded, 0].mean():.0%} of the degraded ones")
    for name, (best, deg_psnr, scores, rates) in gates.items():
        print(f"the loop stops {name}: margin | mean PSNR | rounds | worse by {GATE_DB} dB rejected | better by {GATE_DB} dB accepted")
        for m, (p, r) in scores.items():
            print(f"{m:6.2f} | {p:9.2f} | {r:6.2f} | {rates[m][0]:.0%} | {rates[m][1]:.0%}")
        print(f"  best margin {best} within {args.max_rounds} rounds: degraded crops {deg_psnr:.2f} dB "
              f"(input {ps[degraded, 0].mean():.2f})")
    stop = "on Clean" in gates
    best = gates["on Clean" if stop else "never"][0]
    print(f"verify margin {best} (was {was.verify_margin}), clean margin {clean_margin} "
          f"(was {was.clean_margin}), stop on Clean: {stop} (was {was.stop_when_clean})")
    if args.write:
        model.config.verify_margin = float(best)
        model.config.stop_when_clean = bool(stop)
        meta = read_metadata(path)
        # load_rar computes in fp32 on a CPU; write the file back in the precision it was stored in
        with safe_open(str(path), framework="pt") as f:
            dtype = next(t.dtype for t in (f.get_tensor(k) for k in f.keys()) if t.is_floating_point())
        save_rar(model, path, {k: meta[k] for k in ("stage",) if k in meta}, dtype=dtype)
        print(f"wrote verify_margin = {best}, clean_margin = {clean_margin}, stop_when_clean = {stop}, "
              f"lqa_view = {args.lqa_view} into {path}")


if __name__ == "__main__":
    main()
