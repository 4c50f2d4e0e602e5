"""The LQA alone on the eval photos, with more samples than `rar bench` (BENCHMARKS.md, identification).

The bench names 4 photos per single degradation (36 answers), so one answer moves its
identification by 2.8 points. This asks about every eval photo under every single degradation at
severity 3, for several degradation seeds (`--seeds 3`: 324 answers), and reports identification
(overall and per label), the answers on the clean photos, and verification of every clean/degraded
pair in both orders, as the bench defines them. No restoration runs, so it takes about 2 minutes.

    python scripts/eval_lqa.py [--model M] [--seeds 3] [--margin 0.3]
"""
import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core import bench as B  # noqa: E402
from rar_core import degrade as D  # noqa: E402
from rar_core.checkpoint import default_model_path, load_rar  # noqa: E402
from rar_core.train import primary  # noqa: E402


@torch.no_grad()
def evaluate(model, cleans: list[np.ndarray], seeds: int, severity: int = B.SINGLE_SEVERITY) -> dict:
    """Answers and verdicts for every (seed, degradation, photo) at `severity`."""
    def encode(x):
        return model.encode(B._to_tensor(x), torch.Generator().manual_seed(0))

    z_clean = [encode(c) for c in cleans]
    rows = []
    for seed in range(seeds):
        for j, name in enumerate(D.LABELS):
            for i, clean in enumerate(cleans):
                s = D.degrade(clean, [name], [severity], np.random.default_rng([seed, 100 + j, i]))
                z = encode(s.image)
                rows.append({
                    "expected": primary(s.labels),
                    "answer": model.assess(z).answer[0],
                    "clean_as_a": bool(model.verify(z_clean[i], z)[0][0]),  # should be accepted
                    "clean_as_b_rejected": not bool(model.verify(z, z_clean[i])[0][0]),
                })
    return {"rows": rows, "clean_answers": [model.assess(z).answer[0] for z in z_clean]}


def summary(res: dict) -> dict:
    rows = res["rows"]
    per, said = {}, {}
    for r in rows:
        per.setdefault(r["expected"], []).append(r["answer"] == r["expected"])
        said.setdefault(r["expected"], []).append(r["answer"])
    a = [r["clean_as_a"] for r in rows]
    b = [r["clean_as_b_rejected"] for r in rows]
    return {
        "n": len(rows),
        "identification": float(np.mean([r["answer"] == r["expected"] for r in rows])),
        "per_label": {k: float(np.mean(v)) for k, v in per.items()},
        # the answer given most often per label (a confusion matrix's largest entry per row)
        "most_said": {k: Counter(v).most_common(1)[0][0] for k, v in said.items()},
        "clean_named_clean": float(np.mean([x == "Clean" for x in res["clean_answers"]])),
        "verification": float(np.mean(a + b)),
        "clean_as_a": float(np.mean(a)),
        "clean_as_b_rejected": float(np.mean(b)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data", default="data")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--size", type=int, default=256, help="side of the eval crops (as rar bench)")
    ap.add_argument("--margin", type=float, help="verify margin to use instead of the model file's")
    args = ap.parse_args()
    model = load_rar(args.model or default_model_path()).eval()
    if args.margin is not None:
        model.config.verify_margin = args.margin
    cleans = [B.center_crop(f, args.size) for f in B.eval_files(Path(args.data))]
    s = summary(evaluate(model, cleans, args.seeds))
    print(f"identification {s['identification']:.1%} of {s['n']} single degradations; "
          f"clean photos named Clean {s['clean_named_clean']:.0%}")
    for k, v in s["per_label"].items():
        print(f"  {k:18s} {v:4.0%}  most often answered: {s['most_said'][k]}")
    print(f"verification {s['verification']:.1%} (margin {model.config.verify_margin}): clean as A accepted "
          f"{s['clean_as_a']:.1%}, clean as B rejected {s['clean_as_b_rejected']:.1%}")


if __name__ == "__main__":
    main()
