#!/usr/bin/env bash
# Peak memory of `janelm prepare` on a ~100 MB corpus and `janelm eval` on a ~50 MB text
# (Austen's works repeated), measured with GNU time. Needs a trained checkpoint for eval:
#   benchmarks/memory.sh CHECKPOINT
set -euo pipefail
ckpt=${1:?usage: benchmarks/memory.sh CHECKPOINT}
src=$(cd "$(dirname "$0")/../../shared/corpus/austen" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir "$work/big"
for i in $(seq 1 26); do for f in "$src"/*.txt; do cp "$f" "$work/big/$i-$(basename "$f")"; done; done
cat "$src"/*.txt "$src"/*.txt "$src"/*.txt "$src"/*.txt "$src"/*.txt "$src"/*.txt "$src"/*.txt \
    "$src"/*.txt "$src"/*.txt "$src"/*.txt "$src"/*.txt "$src"/*.txt "$src"/*.txt > "$work/50mb.txt"
echo "prepare input: $(du -sm "$work/big" | cut -f1) MB; eval input: $(du -m "$work/50mb.txt" | cut -f1) MB"

report() { grep -E "Maximum resident|Elapsed \(wall" "$1" | sed 's/^\s*/  /'; }
/usr/bin/time -v janelm prepare "$work/big" --out "$work/corpus" 2> "$work/prepare.time" >/dev/null
echo "janelm prepare (100 MB):"; report "$work/prepare.time"
/usr/bin/time -v janelm eval -c "$ckpt" "$work/50mb.txt" --json 2> "$work/eval.time"
echo "janelm eval (50 MB):"; report "$work/eval.time"
