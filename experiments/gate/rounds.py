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
from rar_core.bench import _to_array, _to_tensor, capped_psnr  # noqa: E402
from rar_core.corrupt_ext import CORRUPTIONS  # noqa: E402

KINDS = ("clean", "A", "B", "C", "single", "ext")


@torch.no_grad()
def fixed_rounds(model, x: np.ndarray) -> tuple:
    """(x's latent z_0, D(z_0), the decoded images of fixed rounds 1-4)."""
    z0 = model.encode(_to_tensor(x), torch.Generator().manual_seed(0))
    return z0, _to_array(model.decode(z0)), [_to_array(model.decode(z)) for z in loop.trajectory(model, z0, 4)[1:]]


def rounds(model, x: np.ndarray, clean: np.ndarray) -> dict:
    """PSNR of the input and of each fixed round, both decodings, and the adaptive loop's count."""
    z0, d0, decoded = fixed_rounds(model, x)
    with torch.no_grad():
        kept = loop.run(model, z0, 4, None, "adaptive").rounds[0]
    inp = capped_psnr(x, clean)
    return {"inp": inp, "k": kept, "std": [inp] + [capped_psnr(d, clean) for d in decoded],
            "res": [inp] + [capped_psnr(np.clip(x + d - d0, 0, 1), clean) for d in decoded]}


def setup(limit: int) -> tuple:
    """(model of argv[1], clean 256 px crops of argv[2] or `limit` eval images, their classes)."""
    torch.set_num_threads(2)
    model = checkpoint.load_rar(sys.argv[1]).eval()
    entries = bench.eval_entries(Path("data"), int(sys.argv[2]) if len(sys.argv) > 2 else limit)
    return model, [bench.center_crop(f, 256) for f, _ in entries], [c for _, c in entries]


def main() -> None:
    model, cleans, classes = setup(14)
    samples = bench.make_samples(cleans, 0, per_single=2, ext=tuple(CORRUPTIONS))
    items = [("clean", i, c) for i, c in enumerate(cleans)] + [(s.kind, s.image, s.degraded) for s in samples]
    rows = []
    for kind, i, x in items:
        r = {"kind": kind, "cls": classes[i], **rounds(model, x, cleans[i])}
        rows.append(r)
        print(f"{kind:6s} {r['cls']:8s} in {r['inp']:5.1f} k={r['k']} std {r['std'][r['k']]:5.1f} "
              f"res {r['res'][r['k']]:5.1f} | round 1 {r['std'][1]:5.1f} / {r['res'][1]:5.1f}", flush=True)
    Path(sys.argv[3] if len(sys.argv) > 3 else "rounds.json").write_text(json.dumps(rows))

    kept = lambda rs, key: np.mean([r[key][r["k"]] for r in rs])  # noqa: E731
    print("\nkind     n   input  std-ada  res-ada  std-r1  res-r1")
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        print(f"{kind:6s} {len(rs):3d} {np.mean([r['inp'] for r in rs]):7.2f} {kept(rs, 'std'):8.2f} {kept(rs, 'res'):8.2f} "
              f"{np.mean([r['std'][1] for r in rs]):7.2f} {np.mean([r['res'][1] for r in rs]):7.2f}")
    print("\nclass (degraded)  input  std-ada  res-ada")
    for cl in sorted(set(classes)):
        rs = [r for r in rows if r["cls"] == cl and r["kind"] != "clean"]
        print(f"{cl:16s} {np.mean([r['inp'] for r in rs]):6.2f} {kept(rs, 'std'):8.2f} {kept(rs, 'res'):8.2f}")
    cr = [r for r in rows if r["kind"] == "clean"]
    within = lambda key, pick: np.mean([r[key][pick(r)] >= bench.CLEAN_DB for r in cr])  # noqa: E731
    print(f"clean within {bench.CLEAN_DB:.0f} dB: adaptive std {within('std', lambda r: r['k']):.0%} "
          f"res {within('res', lambda r: r['k']):.0%} | round 1 std {within('std', lambda r: 1):.0%} "
          f"res {within('res', lambda r: 1):.0%}")


if __name__ == "__main__":
    main()
