#!/usr/bin/env bash
# The first `janelm sample` after `janelm train` against later ones (docs/speed.md): a small model
# trained with the table preset cpu-2x256 for 60 s (its decode step compiled at the end), then N tokens
# (default 4,000: -n 500 of this model is inside the start-up noise) three times, and -n 0 for the
# start-up; then the chosen precision against float32 (greedy text, held-out score). Needs an idle machine.
set -e
d=$(mktemp -d /tmp/janelm-first-XXXX); trap 'rm -rf "$d"' EXIT; cd "$d"
janelm prepare austen:emma austen:pride-and-prejudice > /dev/null 2>&1
janelm train --preset cpu-2x256 --max-time 60 --quiet 2> train.err
grep -i "compil" train.err || true
t() { local s=$(date +%s.%N); janelm sample -n "$1" --seed 1 > /dev/null 2>>sample.err; echo "$(date +%s.%N) - $s" | bc; }
N=${N:-4000}
first=$(t $N); second=$(t $N); u1=$(t 0); third=$(t $N); u2=$(t 0); u3=$(t 0)
echo "N=$N first_s=$first second_s=$second third_s=$third startup_s=$u1 $u2 $u3"
unc=$( s=$(date +%s.%N); janelm sample -n $N --seed 1 --no-compile > /dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc )
python3 -c "n=$N; u=min($u1,$u2,$u3); print(f'first {n/($first-u):.0f} tok/s, second {n/($second-u):.0f}, third {n/($third-u):.0f}, --no-compile {n/($unc-u):.0f}; first/second {($second-u)/($first-u):.2f}, first/third {($third-u)/($first-u):.2f}')"
# the chosen precision against float32: greedy text and held-out scores
janelm sample -n 200 --temperature 0 --seed 1 > auto.txt 2>/dev/null
janelm sample -n 200 --temperature 0 --seed 1 --dtype float32 > f32.txt 2>/dev/null
cmp -s auto.txt f32.txt && echo "greedy 200 tokens: identical to float32" || echo "greedy 200 tokens: differ from float32 at char $(cmp auto.txt f32.txt | awk '{print $5}')"
for dt in auto float16 float32; do echo "eval --dtype $dt: $(janelm eval austen:northanger-abbey --dtype $dt --json 2>/dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["bits_per_char"], r.get("dtype",""))')"; done
cat sample.err | head -5
