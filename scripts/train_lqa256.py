"""The last step of the shipped compact model: LQA fine-tuning at inference-sized crops.

The LQA stage trains on 64 px crops (16 image tokens); used on 256x256 images (256 tokens) it
gave one constant answer. 300 steps on 256 px crops fixed most of that (BENCHMARKS.md). Run from
the repository root after `rar train --stage all`:  python scripts/train_lqa256.py
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core import train as T  # noqa: E402
from rar_core.checkpoint import load_rar, save_rar  # noqa: E402

cfg = T.StageConfig(steps=300, batch=8, crop=256, lr=2e-4, log_every=10, save_every=100)
path = T.train_stage("lqa", Path("runs/lqa256"), Path("data"), cfg, seed=1,
                     init=Path("runs/compact/stage-decoder.safetensors"))
save_rar(load_rar(path), "rar_core/weights/rar-compact.safetensors", {"stage": "final"}, dtype=torch.float16)
