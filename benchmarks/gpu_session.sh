#!/usr/bin/env bash
# Everything the GPU issues measure, in one call of about eight minutes on one CUDA GPU:
#   1. decoding alone on the GPU (benchmarks/gpu_decode.py) and the CUDA tests;
#   2. `janelm train` with no flags (auto picks the gpu preset) on corpus/, beside five recipes of
#      benchmarks/period.py, all sharing the one GPU, each scored on the held-out novel.
# Before it, on any machine (the corpora travel; nothing is downloaded or prepared on the GPU's):
#   W=$(ls ../shared/corpus/austen/*.txt | grep -v northanger)
#   janelm prepare $W --out .devdata/corpus-austen
#   janelm prepare $W --extra ../shared/corpus/period --out .devdata/corpus-mixed
#   cp -r .devdata/corpus-mixed/. corpus/
#   mkdir -p .devdata/shared-corpus/austen && cp ../shared/corpus/austen/northanger-abbey.txt .devdata/shared-corpus/austen/
# Results: $OUT/*.log and $OUT/period.jsonl (append them to benchmarks/results/period.jsonl).
set -u
OUT=${OUT:-/tmp/janelm-gpu}
BUDGET=${BUDGET:-360}  # seconds of training per recipe
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# The studies read the held-out novel from ../shared/corpus, as on the development machines.
[ -e ../shared/corpus ] || { mkdir -p ../shared && ln -s "$PWD/.devdata/shared-corpus" ../shared/corpus; }
HELD_OUT=../shared/corpus/austen/northanger-abbey.txt

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  timeout 200 python3 benchmarks/gpu_decode.py
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_generate.py tests/test_trainer.py -k "cuda or graph"
} > "$OUT/decode.log" 2>&1

period() {  # period.py RECIPE [FLAGS]: one recipe, its own log
  python3 benchmarks/period.py "$1" --device cuda --corpora .devdata --budget "$BUDGET" --flags "${2:-}" \
    --results "$OUT/period.jsonl" > "$OUT/period-$1${3:-}.log" 2>&1
}
{
  start=$(date +%s)
  python3 -m janelm train
  echo "janelm train (no flags): $(( $(date +%s) - start )) s wall"
  python3 -m janelm eval "$HELD_OUT" --json
} > "$OUT/train-no-flags.log" 2>&1 &
period austen &
period mix-0.5 &
period pretrain-finetune &
period austen "--dropout 0.2" -dropout-0.2 &
period mix "--n-block 8 --n-embed 768 --n-head 12 --lr 6e-4" -8x768 &
wait
nvidia-smi >> "$OUT/decode.log" 2>&1
