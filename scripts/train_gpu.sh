#!/bin/bash
# The GPU part of the shipped compact RAR's recipe, in time budgets (seconds; SCALE multiplies
# them). BENCHMARKS.md lists the CPU stages that followed it.
#
#   bash scripts/train_gpu.sh            # writes runs/gpu/main/stage-e2e.safetensors
#
# Two codecs train side by side (the 0.67 M-parameter 16/32/64-channel codec of `compact` and
# the 2.6 M 32/64/128 one of `compact-wide`); the lean one is kept when it reaches 32 dB on
# held-out crops or comes within 0.5 dB of the other, since it decodes 512 px 3x faster. Then the paper's order:
# UIR pre-training, LQA, connector, end-to-end. Each stage logs the step count its budget
# allowed, so `rar train --stage S --steps N` with the flags below repeats it (on a GPU the run is
# not bit-identical). DEVICE=cpu SCALE=0.05 makes a quick dry run of the whole script.
set -euo pipefail
RUN=${RUN:-runs/gpu}
DATA=${DATA:-data}
SCALE=${SCALE:-1}
DEVICE=${DEVICE:-cuda}
W=${WORKERS:-12}
EXPORT=${EXPORT:-}   # a folder that gets the latest stage model after every stage (for a device run)
PY=${PYTHON:-python3}
b() { $PY -c "print(max(1, round($1 * $SCALE)))"; }
train() { $PY -m rar_core.cli train --data "$DATA" --device "$DEVICE" -q "$@"; }
publish() {  # latest model + logs into $EXPORT, in parts small enough to travel
  [ -n "$EXPORT" ] || return 0
  mkdir -p "$EXPORT/tmp" && rm -f "$EXPORT"/tmp/*
  split -b 15M -d "$RUN/main/stage-$1.safetensors" "$EXPORT/tmp/model.part"
  rm -f "$EXPORT"/model.part* && mv "$EXPORT"/tmp/model.part* "$EXPORT"/ && echo "$1" > "$EXPORT/stage.txt"
  tar czf "$EXPORT/logs.tgz" -C "$RUN" --exclude='*.safetensors' .
}

mkdir -p "$RUN/main"
echo "== codec x2 $(date +%T)"
train --stage codec --preset compact-wide --out "$RUN/base" --batch 32 --crop 128 --steps 60000 --workers $((W / 2)) --budget-s "$(b 140)" &
train --stage codec --preset compact --out "$RUN/lean" --batch 32 --crop 128 --steps 60000 --workers $((W / 2)) --budget-s "$(b 140)" &
wait
$PY - "$RUN" "$DATA" "$DEVICE" <<'PYEOF'
import shutil, sys, numpy as np, torch
from pathlib import Path
from rar_core import train as T
from rar_core.checkpoint import load_rar
run, data, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
pool = T.PhotoPool(data)
rng = np.random.default_rng(12345)  # held-out: no training step draws from this stream
x = T.to_tensor([pool.crop(rng, 256) for _ in range(24)]).to(device)
score = {}
for name in ("base", "lean"):
    m = load_rar(run / name / "stage-codec.safetensors").to(device).eval()
    with torch.no_grad():
        rec = torch.cat([m.decode(m.encode(x[i:i + 8])) for i in range(0, len(x), 8)])
    score[name] = -10 * torch.log10(((rec - x) ** 2).mean((1, 2, 3))).mean().item()
pick = "lean" if score["lean"] >= 32 or score["lean"] >= score["base"] - 0.5 else "base"
print(f"codec PSNR on held-out 256 px crops: {score}; keeping {pick}")
shutil.copy(run / pick / "stage-codec.safetensors", run / "main" / "stage-codec.safetensors")
(run / "main" / "codec-choice.txt").write_text(f"{score}\n{pick}\n")
PYEOF
publish codec
echo "== uir $(date +%T)"
train --stage uir --out "$RUN/main" --batch 48 --crop 128 --steps 60000 --workers $W --budget-s "$(b 80)"
publish uir
echo "== lqa $(date +%T)"
train --stage lqa --out "$RUN/main" --batch 64 --crop 64,128,192,256 --steps 60000 --workers $W --budget-s "$(b 80)"
publish lqa
echo "== connector $(date +%T)"
train --stage connector --out "$RUN/main" --batch 48 --crop 128 --steps 60000 --workers $W --budget-s "$(b 30)"
publish connector
echo "== e2e $(date +%T)"
train --stage e2e --out "$RUN/main" --batch 24 --crop 96,64,128,192,256 --steps 60000 --workers $W --budget-s "$(b 90)"
publish e2e
echo "== done $(date +%T)"
