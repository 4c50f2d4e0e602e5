"""What a gate that knows the clean photo would give: from rounds.py's JSON, per kind, the
adaptive loop's PSNR against going on while the next round is better (greedy), the best round,
and the better of the input and round 1. BENCHMARKS.md, experiment "oracle gate".

    python experiments/gate/oracle.py rounds.json
"""
import json
import sys

import numpy as np

rows = json.load(open(sys.argv[1]))
def greedy(seq, margin=0.0):
    k = 0
    while k < 4 and seq[k+1] > seq[k] + margin: k += 1
    return seq[k], k
for key in ("std", "res"):
    print(key)
    for kind in ["clean", "A", "B", "C", "single", "ext"]:
        rs = [r for r in rows if r["kind"] == kind]
        inp = np.mean([r["inp"] for r in rs]); ada = np.mean([r[key][r["k"]] for r in rs])
        orc = np.mean([greedy(r[key])[0] for r in rs]); best = np.mean([max(r[key]) for r in rs]); r1 = np.mean([max(r[key][:2]) for r in rs])
        print(f"  {kind:6s} input {inp:6.2f} ada {ada:6.2f} oracle-greedy {orc:6.2f} oracle-best {best:6.2f} oracle-1round {r1:6.2f}")
