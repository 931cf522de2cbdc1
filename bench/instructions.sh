#!/usr/bin/env bash
# Instructions and allocations per request, deterministic: each contender of
# benches/instructions.rs runs under callgrind at N1 and N2 requests, and
# (I(N2) - I(N1)) / (N2 - N1) is the cost of one request (start-up, the
# runtime and the warm-up cancel out). Allocations come from the bench's
# counting allocator. Ratios are against the contender named as each
# group's baseline. A report, not a gate: nothing here fails on a number.
#
#   bench/instructions.sh                 # every contender
#   bench/instructions.sh put_412_bare put_412_whole
#
# Needs valgrind. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

n1=${N1:-200}
n2=${N2:-1200}
command -v valgrind >/dev/null || { echo "instructions.sh: valgrind is not installed; skipped"; exit 0; }

bin=$(cargo bench --bench instructions --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "instructions":
        print(m["executable"])' | tail -1)
[ -x "$bin" ] || { echo "instructions.sh: could not build benches/instructions.rs"; exit 1; }

contenders=("$@")
if [ ${#contenders[@]} -eq 0 ]; then
  mapfile -t contenders < <("$bin" list | awk '{print $1}')
fi

# Instructions of one run (callgrind's "Collected" total).
instructions() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 >/dev/null \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
allocations() {
  "$bin" "$1" "$2" | sed -n 's/.*allocations=\([0-9]*\).*/\1/p'
}

printf '%-30s %12s %8s %8s %s\n' contender instructions ratio allocs status
declare -A cost
baseline=""
for c in "${contenders[@]}"; do
  i1=$(instructions "$c" "$n1")
  i2=$(instructions "$c" "$n2")
  a2=$(allocations "$c" "$n2")
  status=$("$bin" "$c" 1 | sed -n 's/.*status=\([0-9]*\).*/\1/p')
  per=$(( (i2 - i1) / (n2 - n1) ))
  cost[$c]=$per
  case "$c" in *_bare) baseline=$per ;; esac
  ratio=$(python3 -c "print(f'{$per/$baseline:.3f}x')" 2>/dev/null || echo -)
  printf '%-30s %12d %8s %8.1f %s\n' "$c" "$per" "$ratio" "$(python3 -c "print($a2/$n2)")" "$status"
done
