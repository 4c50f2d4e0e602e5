"""What the restorer's conditioning reads: the LQA's answer, or its view of the image?

A_Q reads every hidden state of the identification prompt (the image tokens, the question and
the answer), so the answer is only a few of several hundred states. On the bench's samples
(the eval crops, never trained on) this measures:

- how much A_Q's output (context and pooled vector) moves when the answer tokens change: the
  LQA's own answer, the true label teacher-forced, or a wrong one;
- 1 round restored with each of those, and with the null conditioning of the uir stage;
- with --reference R: how far this model's conditioning is from R's on the same latents (through
  this model's A_Q, and through R's), and 1 round restored by this model's LQA feeding R's A_Q
  and restorer. After `rar train --stage connector --reference R` (distillation), the first
  shift should be small even where the second is not.

    python scripts/condition_sensitivity.py [--model M] [--reference R] [--limit 72]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core import bench as B  # noqa: E402
from rar_core import prompts  # noqa: E402
from rar_core import train as T  # noqa: E402
from rar_core.checkpoint import default_model_path, load_rar  # noqa: E402
from rar_core.loop import Assessment, RAR  # noqa: E402
from rar_core.uir import FlowEuler  # noqa: E402


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm())


def condition(model: RAR, hidden: list[torch.Tensor]) -> torch.Tensor:
    context, pooled = model.connector.condition(hidden)
    return torch.cat((context.flatten(1), pooled), 1)


def psnr(x: torch.Tensor, ref: torch.Tensor) -> list[float]:
    return (-10 * torch.log10((x - ref).pow(2).mean((1, 2, 3)) + 1e-10)).tolist()


@torch.no_grad()
def measure(model: RAR, reference: RAR | None, x: torch.Tensor, x_hq: torch.Tensor, labels: list[str]) -> dict:
    z = model.encode(x)
    view = model.lqa_view(z)
    seg = prompts.identify_segments(prompts.IDENTIFY[-1])  # the loop's question
    own = model.assess(z)
    wrong = ["Haze" if lab != "Haze" else "Noise" for lab in labels]
    prefix = model.lqa.prompt_embeds(seg, [view])
    true_h, _ = model.lqa.teacher_forced(prefix, labels)
    wrong_h, _ = model.lqa.teacher_forced(prefix, wrong)
    c_own = condition(model, own.hidden)
    out = {
        "answer shift, true label": relative(condition(model, true_h), c_own),
        "answer shift, wrong label": relative(condition(model, wrong_h), c_own),
        "input": psnr(x, x_hq),
        "1 round, own answer": psnr(model.decode(model.restore(z, own)), x_hq),
        "1 round, true label": psnr(model.decode(model.restore(z, Assessment(labels, true_h))), x_hq),
        "1 round, wrong label": psnr(model.decode(model.restore(z, Assessment(wrong, wrong_h))), x_hq),
    }
    context, pooled = T.null_condition(model, len(z))
    flow = FlowEuler(model.config.uir.steps, model.config.uir.flow_shift)
    out["1 round, null conditioning"] = psnr(model.decode(flow.sample(lambda v, s: model.uir(v, s, context, pooled), z)), x_hq)
    if reference is not None:
        ref_own = reference.assess(z)
        c_ref = condition(reference, ref_own.hidden)
        out["conditioning shift against the reference (this A_Q)"] = relative(c_own, c_ref)
        out["conditioning shift against the reference (its A_Q)"] = relative(condition(reference, own.hidden), c_ref)
        out["1 round, this LQA -> reference's A_Q and restorer"] = psnr(reference.decode(reference.restore(z, own)), x_hq)
        out["1 round, the reference"] = psnr(reference.decode(reference.restore(z, ref_own)), x_hq)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--reference", help="a model with the same codec whose A_Q and restorer this model's LQA should fit")
    ap.add_argument("--data", default="data")
    ap.add_argument("--limit", type=int, default=72, help="bench samples to use (seed 0, 256 px)")
    args = ap.parse_args()
    model = load_rar(Path(args.model or default_model_path())).eval()
    reference = load_rar(Path(args.reference)).eval() if args.reference else None
    cleans = [B.center_crop(f, 256) for f in B.eval_files(Path(args.data))]
    samples = B.make_samples(cleans, 0)[: args.limit]
    rows: dict[str, list] = {}
    for start in range(0, len(samples), 8):
        batch = samples[start : start + 8]
        x = T.to_tensor([s.degraded for s in batch])
        x_hq = T.to_tensor([cleans[s.image] for s in batch])
        for k, v in measure(model, reference, x, x_hq, [T.primary(s.labels) for s in batch]).items():
            rows.setdefault(k, []).extend(v if isinstance(v, list) else [v] * len(batch))
    print(f"{len(samples)} bench samples (eval crops, seed 0)")
    print("| measure | value |\n|---|---:|")
    for k, v in rows.items():
        in_db = "round" in k or k == "input"
        print(f"| {k} | {np.mean(v):.2f} dB |" if in_db else f"| {k} | {np.mean(v):.4f} |")


if __name__ == "__main__":
    main()
