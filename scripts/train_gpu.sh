#!/bin/bash
# The GPU part of the shipped compact RAR's recipe, in time budgets (seconds; SCALE multiplies
# them). BENCHMARKS.md lists the CPU stages that followed it.
#
#   bash scripts/train_gpu.sh            # writes runs/gpu/main/stage-decoder.safetensors
#
# Part 1 (the shipped model's GPU part), the paper's order: codec (on clean and degraded photos
# alike), UIR pre-training, LQA, connector, end-to-end, then a decoder-only fine-tune.
# Part 2 (PART=2 or PART=all; an experiment, BENCHMARKS.md) turns on the codec's texture term
# (train.reconstruction_loss) so the latent keeps more of the grain the LQA must name, and lets
# the stages that read the latent catch up: codec, LQA, connector, end-to-end, decoder, each
# from the previous one, into runs/gpu/tex. PART=2 INIT=model.safetensors starts it from a
# given part-1 model.
# The models are small, so a GPU step costs its kernel launches more than its batch: batches
# are large and 14 loader processes make the data. Each stage logs the step count its budget
# allowed, so `rar train --stage S --steps N` with the flags below repeats it (on a GPU the run
# is not bit-identical). DEVICE=cpu SCALE=0.05 makes a quick dry run of the whole script.
set -euo pipefail
RUN=${RUN:-runs/gpu}
DATA=${DATA:-data}
SCALE=${SCALE:-1}
DEVICE=${DEVICE:-cuda}
W=${WORKERS:-14}
PART=${PART:-1}
INIT=${INIT:-$RUN/main/stage-decoder.safetensors}
EXPORT=${EXPORT:-}   # a folder that gets the latest stage model after every stage (for a device run)
PY=${PYTHON:-python3}
b() { $PY -c "print(max(1, round($1 * $SCALE)))"; }
train() { $PY -m rar_core.cli train --data "$DATA" --device "$DEVICE" -q "$@"; }
publish() {  # latest model + logs into $EXPORT, in parts small enough to travel
  [ -n "$EXPORT" ] || return 0
  mkdir -p "$EXPORT/tmp" && rm -f "$EXPORT"/tmp/*
  split -b 15M -d "$RUN/$2/stage-$1.safetensors" "$EXPORT/tmp/model.part"
  rm -f "$EXPORT"/model.part* && mv "$EXPORT"/tmp/model.part* "$EXPORT"/ && echo "$1" > "$EXPORT/stage.txt"
  tar czf "$EXPORT/logs.tgz" -C "$RUN" --exclude='*.safetensors' .
}

part1() {
mkdir -p "$RUN/main"
echo "== codec $(date +%T)"
train --stage codec --out "$RUN/main" --batch 64 --crop 128 --texture 0 --steps 60000 --workers $W --budget-s "$(b 140)"
publish codec main
echo "== uir $(date +%T)"
train --stage uir --out "$RUN/main" --batch 96 --crop 128 --steps 60000 --workers $W --budget-s "$(b 70)"
publish uir main
echo "== lqa $(date +%T)"
train --stage lqa --out "$RUN/main" --batch 128 --crop 64,128,192,256 --steps 60000 --workers $W --budget-s "$(b 75)"
publish lqa main
echo "== connector $(date +%T)"
train --stage connector --out "$RUN/main" --batch 96 --crop 128 --steps 60000 --workers $W --budget-s "$(b 20)"
publish connector main
echo "== e2e $(date +%T)"
train --stage e2e --out "$RUN/main" --batch 48 --crop 96,64,128,192,256 --steps 60000 --workers $W --budget-s "$(b 75)"
publish e2e main
echo "== decoder $(date +%T)"
train --stage decoder --out "$RUN/main" --batch 64 --crop 128 --texture 0 --steps 60000 --workers $W --budget-s "$(b 20)"
publish decoder main
}

part2() {
T="$RUN/tex"
mkdir -p "$T"
echo "== texture: codec $(date +%T)"
train --stage codec --init "$INIT" --out "$T" --batch 64 --crop 128 --lr 3e-4 --texture 2 --steps 60000 --workers $W --budget-s "$(b 60)"
publish codec tex
echo "== texture: lqa $(date +%T)"
train --stage lqa --init "$T/stage-codec.safetensors" --out "$T" --batch 128 --crop 64,128,192,256 --steps 60000 --workers $W --budget-s "$(b 45)"
publish lqa tex
echo "== texture: connector $(date +%T)"
train --stage connector --out "$T" --batch 96 --crop 128 --steps 60000 --workers $W --budget-s "$(b 10)"
publish connector tex
echo "== texture: e2e $(date +%T)"
train --stage e2e --out "$T" --batch 48 --crop 96,64,128,192,256 --steps 60000 --workers $W --budget-s "$(b 55)"
publish e2e tex
echo "== texture: decoder $(date +%T)"
train --stage decoder --out "$T" --batch 64 --crop 128 --texture 2 --steps 60000 --workers $W --budget-s "$(b 10)"
publish decoder tex
}

case "$PART" in
  1) part1 ;;
  2) part2 ;;
  all) part1; part2 ;;
  *) echo "PART must be 1, 2 or all" >&2; exit 2 ;;
esac
echo "== done $(date +%T)"
