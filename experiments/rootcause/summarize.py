import json, sys, numpy as np
from pathlib import Path
D = Path(__file__).parent
print("| model | clean bright: r1 PSNR / level / sat | 3 fixed rounds: PSNR / level | clean: round 1 rejected (input kept) | LQA log P(Clean)-max, median | worse-by-0.5 dB rounds rejected | better-by-0.5 dB accepted | degraded: input -> r1 / adaptive |")
print("|---|---|---|---|---|---|---|---|")
for tag in sys.argv[1:]:
    f = D / f"e3_{tag}.json"
    if not f.exists(): continue
    rows = json.loads(f.read_text())
    clean = [r for r in rows if r["op"] is None]; br = [r for r in clean if r["mean"] > 0.6]; deg = [r for r in rows if r["op"]]
    r1 = [r["rounds"][0] for r in br]
    g = [(q["gate"], q["dpsnr"]) for r in rows for q in r["rounds"] if abs(q["dpsnr"]) < 50] + [(r["rounds"][0]["gate"], -99) for r in clean]
    w = [lo <= 0.2 for lo, d in g if d <= -0.5]; b = [lo > 0.2 for lo, d in g if d >= 0.5]
    print(f"| {tag} | {np.mean([q['psnr'] for q in r1]):.2f} dB / {np.mean([q['dlev'] for q in r1]):+.3f} / {np.mean([q['dsat'] for q in r1]):+.3f} "
          f"| {np.mean([r['rounds'][-1]['psnr'] for r in br]):.2f} dB / {np.mean([r['rounds'][-1]['dlev'] for r in br]):+.3f} "
          f"| {sum(r['adaptive_rounds']==0 for r in clean)}/{len(clean)} "
          f"| {np.median([q['lp_clean'] for r in clean for q in r['rounds'][:1]]):+.1f} "
          f"| {100*np.mean(w):.0f} % (n={len(w)}) | {100*np.mean(b):.0f} % (n={len(b)}) "
          f"| {np.mean([r['in_psnr'] for r in deg]):.2f} -> {np.mean([r['rounds'][0]['psnr'] for r in deg]):.2f} / {np.mean([r['adaptive_psnr'] for r in deg]):.2f} dB |")
