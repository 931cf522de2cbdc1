#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each).
#
#   fuzz/run.sh            # all targets, 60 s each
#   fuzz/run.sh 300        # all targets, 300 s each
#   fuzz/run.sh 60 http_date etag_list
#
# cargo-fuzz needs nightly-only rustc flags; on a stable toolchain
# RUSTC_BOOTSTRAP=1 unlocks them. Install once with
#   RUSTC_BOOTSTRAP=1 cargo install cargo-fuzz --locked
# The crate under test forbids unsafe code, so no sanitizer is needed
# (`-s none`): libFuzzer's coverage guidance plus Rust's own checks (debug
# assertions and overflow checks are on) find the panics.
#
# CI does not run this (too slow); corpora and crash artifacts stay in
# fuzz/corpus and fuzz/artifacts (ignored by git).
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(etag_list http_date preconditions service differential)
fi

export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none

status=0
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s"
  mkdir -p "corpus/$target"
  if ! cargo fuzz run -s none "$target" "corpus/$target" -- \
      -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 2>&1 | tee "/tmp/fuzz-$target.log" | grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|==[0-9]+== ERROR|.*panicked)" ; then
    :
  fi
  if grep -qE "panicked|ERROR: libFuzzer|SUMMARY" "/tmp/fuzz-$target.log"; then
    echo "!! $target found a crash; see /tmp/fuzz-$target.log and fuzz/artifacts/$target"
    status=1
  fi
done
exit $status
