"""A restorer's rounds without a gate: the gain of fixed rounds 1, 2 and 4 over the input, of the
best of them, and of the better of the input and round 1 (what a perfect gate keeps), on the
bench's degraded samples (groups A/B/C and the singles), per group and content class, with the
samples whose degradation dimmed them (low light: mean level at least 0.15 below the clean
crop's) apart from the rest. BENCHMARKS.md, experiments refine to more photos.

    python experiments/refine/screen.py MODEL [LIMIT=28] [OUT.json]

LIMIT eval images, round-robin over the content classes (4 per class at 28).
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.gate.rounds import fixed_rounds, setup  # noqa: E402
from rar_core import bench  # noqa: E402
from rar_core.bench import capped_psnr  # noqa: E402

DIMMED = -0.15  # input level minus the clean crop's, below which a sample counts as dimmed


def rounds(model, x: np.ndarray, clean: np.ndarray) -> dict:
    """PSNR and level shift (against the clean crop) of the input and of fixed rounds 1-4."""
    decoded = fixed_rounds(model, x)[2]
    return {"p": [capped_psnr(x, clean)] + [capped_psnr(d, clean) for d in decoded],
            "lvl": [float(y.mean() - clean.mean()) for y in [x, *decoded]]}


def line(name: str, rows: list[dict]) -> str:
    if not rows:
        return f"{name:9s} n=  0"
    p = np.array([r["p"] for r in rows])
    g = p - p[:, :1]
    return (f"{name:9s} n={len(rows):3d} input {p[:, 0].mean():6.2f}  round 1 {g[:, 1].mean():+5.2f}  "
            f"2 {g[:, 2].mean():+5.2f}  4 {g[:, 4].mean():+5.2f}  best {g.max(1).mean():+5.2f}  "
            f"input or round 1 {np.maximum(g[:, 1], 0).mean():+5.2f}")


def main() -> None:
    model, cleans, classes = setup(28)
    rows = [{"kind": s.kind, "cls": classes[s.image], **rounds(model, s.degraded, cleans[s.image])}
            for s in bench.make_samples(cleans, 0, per_single=2)]
    Path(sys.argv[3] if len(sys.argv) > 3 else "screen.json").write_text(json.dumps(rows))
    for kind in ("A", "B", "C", "single"):
        print(line(kind, [r for r in rows if r["kind"] == kind]))
    for cl in sorted(set(classes)):
        print(line(cl, [r for r in rows if r["cls"] == cl]))
    print(line("dimmed", [r for r in rows if r["lvl"][0] < DIMMED]))
    print(line("others", [r for r in rows if r["lvl"][0] >= DIMMED]))
    print(line("all", rows))


if __name__ == "__main__":
    main()
