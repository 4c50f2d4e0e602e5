"""E3: held-out check for a model: clean inputs (synthetic flat/bright at seeds 500+, brightened
and plain training-pool crops from unused positions, example.png) and a few degraded crops;
3 fixed rounds, batched, with the gate's log-odds per round; the adaptive result is the prefix
the gate (verify_margin) accepts."""
import sys, json, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import *
from rar_core import degrade as D
from rar_core.model import Assessment

model = load(sys.argv[1] if sys.argv[1] != "-" else None)
tag = sys.argv[2]
R = 3
labels = list(model.config.labels)
rng = np.random.default_rng(11)
items = [("flat", f"{k}", synth(500, k), None) for k in KINDS]
items += [("flat", f"{k}b", synth(501, k), None) for k in ("flat_drawing", "sky")]
ex = example_crops()
items += [("example", "ex0", ex[0], None), ("example", "ex2", ex[2], None)]
pc = pool_crops(6, seed=4242)
items += [("bright", n[:14], brighten(a, rng), None) for n, a in pc[:3]]
items += [("pool", n[:14], a, None) for n, a in pc[3:5]]
# degraded: the clean reference is the crop; check the fix still restores
for (n, a), op in zip(pc[:3] + pc[3:6], ("haze", "snow", "noise", "defocus", "jpeg", "haze")):
    items.append(("degraded", f"{op}:{n[:10]}", a, op))
X, C = [], []
for g, n, a, op in items:
    C.append(a)
    X.append(a if op is None else D.apply(a, [op], 3, np.random.default_rng(len(X)))[0])
x = torch.from_numpy(np.stack(X)).permute(0, 3, 1, 2).contiguous()
c = torch.from_numpy(np.stack(C)).permute(0, 3, 1, 2)
t0 = time.time()
rows = [{"group": g, "name": n, "op": op, "in_psnr": psnr(X[i], C[i]) if op else float("inf"), "mean": float(C[i].mean()), "rounds": []}
        for i, (g, n, _, op) in enumerate(items)]
with torch.no_grad():
    z = model.encode(x)
    prev = x
    for r in range(R):
        ans = model.lqa.identify(model.lqa_view(z), labels)
        z1 = model.restore(z, Assessment(ans.text, ans.hidden))
        lo = model.verify_log_odds(z1, z)
        o = model.decode(z1)
        for i, row in enumerate(rows):
            oi, ci, pi = to_a(o[i:i+1]), C[i], to_a(prev[i:i+1])
            row["rounds"].append({"answer": ans.text[i], "lp_clean": float(ans.logprob[i, 0] - ans.logprob[i].max()), "gate": float(lo[i]),
                                  "psnr": psnr(oi, ci), "dpsnr": psnr(oi, ci) - psnr(pi, ci), "dlev": float(oi.mean() - ci.mean()),
                                  "dsat": sat(oi) - sat(ci), "blk8": blockiness(oi, 8)})
        z, prev = z1, o
        print(f"round {r+1} done ({time.time()-t0:.0f}s)", flush=True)
m = model.config.verify_margin
for row in rows:
    k = 0
    while k < R and row["rounds"][k]["gate"] > m:
        k += 1
    row["adaptive_rounds"] = k
    row["adaptive_psnr"] = row["in_psnr"] if k == 0 else row["rounds"][k - 1]["psnr"]
    row["adaptive_dlev"] = 0.0 if k == 0 else row["rounds"][k - 1]["dlev"]
(OUT / f"e3_{tag}.json").write_text(json.dumps(rows, indent=1))
for row in rows:
    print(f"{row['group']:8s} {row['name']:22s} m {row['mean']:.2f} in {row['in_psnr']:6.1f} | " + " | ".join(
        f"{q['answer'][:6]} lpC {q['lp_clean']:+.1f} g{q['gate']:+.1f} {q['psnr']:.1f}({q['dpsnr']:+.1f}) L{q['dlev']:+.3f} S{q['dsat']:+.3f} b8 {q['blk8']:.2f}"
        for q in row["rounds"]) + f" || adaptive {row['adaptive_rounds']} r, {row['adaptive_psnr']:.1f} dB, L{row['adaptive_dlev']:+.3f}")
# summary
def summ(sel, name):
    r1 = [r["rounds"][0] for r in sel]
    print(f"SUMMARY {tag} {name}: n={len(sel)} r1 psnr {np.mean([q['psnr'] for q in r1]):.2f} dlev {np.mean([q['dlev'] for q in r1]):+.3f} "
          f"dsat {np.mean([q['dsat'] for q in r1]):+.3f} b8 {np.mean([q['blk8'] for q in r1]):.2f}; r{R} psnr {np.mean([r['rounds'][-1]['psnr'] for r in sel]):.2f} "
          f"dlev {np.mean([r['rounds'][-1]['dlev'] for r in sel]):+.3f}; adaptive psnr {np.mean([min(r['adaptive_psnr'], 60) for r in sel]):.2f} "
          f"dlev {np.mean([r['adaptive_dlev'] for r in sel]):+.3f} rounds {np.mean([r['adaptive_rounds'] for r in sel]):.2f}; "
          f">=35dB adaptive {np.mean([r['adaptive_psnr'] >= 35 for r in sel]):.2f}; Clean answers {np.mean([q['answer']=='Clean' for q in r1]):.2f}")
clean = [r for r in rows if r["op"] is None]
summ(clean, "clean(all)")
summ([r for r in clean if r["mean"] > 0.6], "clean bright(>0.6)")
summ([r for r in clean if r["mean"] <= 0.6], "clean mid")
deg = [r for r in rows if r["op"]]
summ(deg, "degraded")
print(f"SUMMARY {tag} degraded: input {np.mean([r['in_psnr'] for r in deg]):.2f} -> r1 {np.mean([r['rounds'][0]['psnr'] for r in deg]):.2f} adaptive {np.mean([r['adaptive_psnr'] for r in deg]):.2f}")
g = [(q["gate"], q["dpsnr"]) for r in rows for q in r["rounds"] if np.isfinite(q["dpsnr"]) and abs(q["dpsnr"]) < 50]
g += [(r["rounds"][0]["gate"], -99) for r in clean]
worse = [lo for lo, d in g if d <= -0.5]; better = [lo for lo, d in g if d >= 0.5]
print(f"SUMMARY {tag} gate (margin {m}): worse-by-0.5dB rounds rejected {np.mean([lo <= m for lo in worse]):.2f} (n={len(worse)}, "
      f"median log-odds {np.median(worse):+.2f}); better-by-0.5dB accepted {np.mean([lo > m for lo in better]) if better else float('nan'):.2f} (n={len(better)})")
