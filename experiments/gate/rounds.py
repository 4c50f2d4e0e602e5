"""Every round of a model on the bench's subset (2 images per class), decoded two ways.

For each clean crop and each degraded sample of `rar bench --limit 14` (per_single 2, the
albumentations rows too): the PSNR of the input and of rounds 1-4 of a fixed run, decoded as
D(z_k) ("std") and as x + D(z_k) - D(z_0) ("res": the input's detail the codec drops added back),
and how many rounds the adaptive loop kept. Prints per kind and class; oracle.py reads the JSON.
BENCHMARKS.md, experiments "oracle gate" and "residual detail".

    python experiments/gate/rounds.py MODEL [LIMIT=14] [OUT.json]
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from rar_core import bench, checkpoint, loop  # noqa: E402
from rar_core.corrupt_ext import CORRUPTIONS  # noqa: E402

torch.set_num_threads(2)
model = checkpoint.load_rar(sys.argv[1]).eval()
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 14
entries = bench.eval_entries(Path("data"), limit)
cleans = [bench.center_crop(f, 256) for f, _ in entries]
classes = [c for _, c in entries]
samples = bench.make_samples(cleans, 0, per_single=2, ext=tuple(CORRUPTIONS))
T = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float()
A = lambda t: t[0].permute(1, 2, 0).clamp(0, 1).numpy()
P = lambda o, c: min(bench.quality(o, c)[0], 60.0)
rows = []
items = [("clean", i, c, c) for i, c in enumerate(cleans)] + [(s.kind, s.image, s.degraded, cleans[s.image]) for s in samples]
for kind, i, x, c in items:
    with torch.no_grad():
        z0 = model.encode(T(x), torch.Generator().manual_seed(0))
        d0 = A(model.decode(z0))
        zs = []
        loop.run(model, z0, 4, None, "fixed", callback=lambda n, z: zs.append(z.clone()))
        ada = loop.run(model, z0, 4, None, "adaptive")
        k = ada.rounds[0]
        dk = [A(model.decode(z)) for z in zs]
    std = [P(x, c)] + [P(d, c) for d in dk]
    res = [P(x, c)] + [P(np.clip(x + d - d0, 0, 1), c) for d in dk]
    rows.append(dict(kind=kind, cls=classes[i], inp=P(x, c), k=k, std=std, res=res, ans=ada.trace[0][0]["answer"],
                     lvl_std=float((dk[k-1] if k else x).mean() - c.mean()), lvl_res=float(np.clip(x + (dk[k-1] - d0 if k else 0), 0, 1).mean() - c.mean())))
    r = rows[-1]
    print(f"{kind:6s} {r['cls']:8s} in {r['inp']:5.1f} k={k} std {r['std'][k]:5.1f} res {r['res'][k]:5.1f} | r1 {r['std'][1]:5.1f}/{r['res'][1]:5.1f}", flush=True)
json.dump(rows, open(sys.argv[3] if len(sys.argv) > 3 else "rounds.json", "w"))
def summ(rs, key):
    return np.mean([r[key][r["k"]] for r in rs])
print("\nkind     n   input   std-ada  res-ada  std-r1  res-r1")
for kind in ["clean", "A", "B", "C", "single", "ext"]:
    rs = [r for r in rows if r["kind"] == kind]
    print(f"{kind:6s} {len(rs):3d} {np.mean([r['inp'] for r in rs]):7.2f} {summ(rs,'std'):8.2f} {summ(rs,'res'):8.2f} {np.mean([r['std'][1] for r in rs]):7.2f} {np.mean([r['res'][1] for r in rs]):7.2f}")
print("\nclass  (degraded) input std-ada res-ada")
for cl in sorted(set(classes)):
    rs = [r for r in rows if r["cls"] == cl and r["kind"] != "clean"]
    print(f"{cl:8s} {np.mean([r['inp'] for r in rs]):7.2f} {summ(rs,'std'):8.2f} {summ(rs,'res'):8.2f}")
cr = [r for r in rows if r["kind"] == "clean"]
print("clean within 35: std", np.mean([r["std"][r["k"]] >= 35 for r in cr]), "res", np.mean([r["res"][r["k"]] >= 35 for r in cr]),
      "| round1 forced: std", np.mean([r["std"][1] >= 35 for r in cr]), "res", np.mean([r["res"][1] >= 35 for r in cr]))
hi = [r for r in rows if r["kind"] != "clean" and r["inp"] >= 30]
print("inputs>=30 n", len(hi), "in", np.mean([r['inp'] for r in hi]) if hi else 0, "std", summ(hi, "std") if hi else 0, "res", summ(hi, "res") if hi else 0)
