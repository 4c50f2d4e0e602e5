"""Interpolate the LQA between a model and a fine-tuned copy of it (WiSE-FT, Wortsman et al. 2022).

An LQA retrained to name and compare degradations better (`train_gpu.sh` PART=3) moves the
hidden states A_Q reads, so the restorer's conditioning moves with it (BENCHMARKS.md, eighth
session). Weights on the straight line between the base LQA and the tuned one keep part of the
tuned LQA's verification at a fraction of the conditioning shift; `rar train --stage connector
--reference BASE` then distils A_Q onto what is left. Only the LQA (A_I, vision projection, LM)
is interpolated; the codec, A_Q and restorer are the base model's.

    python scripts/interpolate_lqa.py --tuned runs/gpu/ident/stage-e2e.safetensors --alpha 0.5 --out soup.safetensors
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core.checkpoint import default_model_path, load_rar, save_rar  # noqa: E402
from rar_core.loop import RAR  # noqa: E402


def interpolate_lqa(base: RAR, tuned: RAR, alpha: float) -> RAR:
    """base with LQA weights base + alpha * (tuned - base), in place; alpha 0 is base, 1 is tuned."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    a, b = base.lqa.state_dict(), tuned.lqa.state_dict()
    if {k: v.shape for k, v in a.items()} != {k: v.shape for k, v in b.items()}:
        raise ValueError("the two LQAs differ in architecture; interpolate a model with a fine-tuned copy of it")
    with torch.no_grad():
        base.lqa.load_state_dict({k: torch.lerp(v, b[k].to(v.dtype), alpha) if v.is_floating_point() else v
                                  for k, v in a.items()})
    return base


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", help="model whose codec, A_Q and restorer are kept (default: the built-in compact model)")
    ap.add_argument("--tuned", required=True, help="a copy of the base model whose LQA was trained further")
    ap.add_argument("--alpha", type=float, required=True, help="0: the base LQA, 1: the tuned one")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    base = load_rar(Path(args.base or default_model_path()), dtype=torch.float32)
    tuned = load_rar(Path(args.tuned), dtype=torch.float32)
    try:
        interpolate_lqa(base, tuned, args.alpha)
    except ValueError as e:
        raise SystemExit(f"interpolate_lqa: {e}") from e
    save_rar(base, args.out, {"stage": "final"}, dtype=torch.float16)  # fp16, as shipped
    print(f"wrote {args.out}: LQA at alpha {args.alpha} between {args.base or 'the built-in model'} and {args.tuned}")


if __name__ == "__main__":
    main()
