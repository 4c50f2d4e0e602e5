"""Quality and speed of the adaptive loop at 512 px with and without the LQA's view window.

The group A/B/C samples of `rar bench` (same seed, same evaluation images), cut at `--size` px,
restored with the shipped model once per `lqa_view` setting (BENCHMARKS.md, "The LQA's view").

    python scripts/bench_lqa_view.py [--model M] [--size 512] [--views 64,0]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core import bench as Bn  # noqa: E402
from rar_core.checkpoint import default_model_path, load_rar  # noqa: E402
from rar_core.loop import restore_image  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--data", default="data")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--views", default="64,0", help="lqa_view settings to compare (0: the whole latent)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_rar(args.model or default_model_path()).eval()
    cleans = [Bn.center_crop(f, args.size) for f in Bn.eval_files(Path(args.data))]
    samples = Bn.make_samples(cleans, 0, singles=())
    inp = np.mean([Bn.quality(s.degraded, cleans[s.image])[0] for s in samples])
    print(f"{len(samples)} samples at {args.size} px, input {inp:.2f} dB")
    print("lqa_view | adaptive PSNR | rounds | s/image")
    for view in (int(v) for v in args.views.split(",")):
        model.config.lqa_view = view
        psnr, rounds, t0 = [], [], time.perf_counter()
        for s in samples:
            r = restore_image(model, Bn._to_tensor(s.degraded))
            psnr.append(Bn.quality(Bn._to_array(r.image), cleans[s.image])[0])
            rounds.append(r.rounds[0])
        sec = (time.perf_counter() - t0) / len(samples)
        print(f"{view:8d} | {np.mean(psnr):10.2f} dB | {np.mean(rounds):6.2f} | {sec:.2f}")


if __name__ == "__main__":
    main()
