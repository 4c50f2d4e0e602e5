"""What a gate that knows the clean photo would give: from rounds.py's JSON, per kind, the
adaptive loop's PSNR against going on while the next round is better (greedy), the best round,
and the better of the input and round 1. BENCHMARKS.md, experiment "oracle gate".

    python experiments/gate/oracle.py rounds.json
"""
import json
import sys

import numpy as np
from rounds import KINDS


def greedy(psnrs: list[float]) -> float:
    """The PSNR where a perfect gate stops: the first round that is not better than the one before."""
    k = 0
    while k + 1 < len(psnrs) and psnrs[k + 1] > psnrs[k]:
        k += 1
    return psnrs[k]


def main() -> None:
    rows = json.loads(open(sys.argv[1]).read())
    for key in ("std", "res"):
        print(key)
        for kind in KINDS:
            rs = [r for r in rows if r["kind"] == kind]
            mean = lambda f: np.mean([f(r) for r in rs])  # noqa: E731
            print(f"  {kind:6s} input {mean(lambda r: r['inp']):6.2f} adaptive {mean(lambda r: r[key][r['k']]):6.2f} "
                  f"oracle {mean(lambda r: greedy(r[key])):6.2f} best round {mean(lambda r: max(r[key])):6.2f} "
                  f"input or round 1 {mean(lambda r: max(r[key][:2])):6.2f}")


if __name__ == "__main__":
    main()
