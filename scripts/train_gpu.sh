#!/bin/bash
# The GPU part of the recipe of the compact RAR shipped until the seventeenth session, in time
# budgets (seconds; SCALE multiplies them). BENCHMARKS.md lists the CPU stages that followed it.
# The shipped model is now `rar train --stage all` on CPU alone.
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
# Part 3 (PART=3; an experiment, BENCHMARKS.md seventh session) gives the LQA of the shipped
# model (or INIT3) about six times the identification samples of part 1 (300 s instead of 75,
# 80 % identification batches instead of 50 %), then lets the connector and the end-to-end
# stage catch up, into runs/gpu/ident; the e2e stage takes its identification loss on the input
# round only, which kept more of it in the CPU version of this part (BENCHMARKS.md, sixth
# session). The codec is not touched.
# Run it alone on the GPU: beside part D (seventh session) the connector got 89 steps and e2e
# 292, and the restorer stayed 0.7 dB behind at 1 round until CPU stages caught most of it up.
# Part D (PART=dec; an experiment) fine-tunes only the decoder of the shipped model (or INIT3) for
# 420 s, 20 times the decoder stage of part 1, into runs/gpu/decoder. The encoder, and so the
# latent every other module reads, stays as it is: its decoder drops into the shipped model (or a
# part-3 model) with no catch-up (seventh session: codec +0.56 dB, restoration unchanged).
# Parts 3 and D share no files and can run side by side on one GPU (WORKERS split between them),
# at a cost to part 3 (above).
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
INIT3=${INIT3:-rar_core/weights/rar-compact.safetensors}
EXPORT=${EXPORT:-}   # a folder that gets the latest stage model after every stage (for a device run)
PY=${PYTHON:-python3}
b() { $PY -c "print(max(1, round($1 * $SCALE)))"; }
publish() {  # latest model + logs into $EXPORT, in parts small enough to travel
  [ -n "$EXPORT" ] || return 0
  mkdir -p "$EXPORT/tmp" && rm -f "$EXPORT"/tmp/*
  split -b 15M -d "$1" "$EXPORT/tmp/model.part"
  rm -f "$EXPORT"/model.part* && mv "$EXPORT"/tmp/model.part* "$EXPORT"/ && basename "$1" .safetensors > "$EXPORT/stage.txt"
  tar czf "$EXPORT/logs.tgz" -C "$RUN" --exclude='*.safetensors' .
}
# stage DIR NAME BUDGET_S [rar train flags]: one budgeted stage into DIR, then publish it
stage() {
  local dir=$1 name=$2 budget=$3
  shift 3
  echo "== $dir: $name $(date +%T)"
  mkdir -p "$dir"
  $PY -m rar_core.cli train --data "$DATA" --device "$DEVICE" -q --stage "$name" --out "$dir" \
    --steps 60000 --workers "$W" --budget-s "$(b "$budget")" "$@"
  publish "$dir/stage-$name.safetensors"
}

part1() {
  local M="$RUN/main"
  stage "$M" codec 140 --batch 64 --crop 128 --texture 0
  stage "$M" uir 70 --batch 96 --crop 128
  stage "$M" lqa 75 --batch 128 --crop 64,128,192,256
  stage "$M" connector 20 --batch 96 --crop 128
  stage "$M" e2e 75 --batch 48 --crop 96,64,128,192,256
  stage "$M" decoder 20 --batch 64 --crop 128 --texture 0
}

part2() {
  local T="$RUN/tex"
  stage "$T" codec 60 --init "$INIT" --batch 64 --crop 128 --lr 3e-4 --texture 2
  stage "$T" lqa 45 --init "$T/stage-codec.safetensors" --batch 128 --crop 64,128,192,256
  stage "$T" connector 10 --batch 96 --crop 128
  stage "$T" e2e 55 --batch 48 --crop 96,64,128,192,256
  stage "$T" decoder 10 --batch 64 --crop 128 --texture 2
}

part3() {
  local I="$RUN/ident"
  stage "$I" lqa 300 --init "$INIT3" --batch 128 --crop 64,128,192,256 --identify 0.8
  stage "$I" connector 20 --batch 96 --crop 128
  stage "$I" e2e 150 --batch 48 --crop 96,64,128,192,256 --identify-input-only
}

partdec() {
  stage "$RUN/decoder" decoder 420 --init "$INIT3" --batch 64 --crop 128 --texture 0
}

case "$PART" in
  1) part1 ;;
  2) part2 ;;
  3) part3 ;;
  dec) partdec ;;
  all) part1; part2 ;;
  *) echo "PART must be 1, 2, 3, dec or all" >&2; exit 2 ;;
esac
echo "== done $(date +%T)"
