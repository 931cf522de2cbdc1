#!/usr/bin/env bash
# REDbot (mnot's HTTP linter, https://redbot.org/) against every route of
# examples/media_server.rs, with every feature of the example on
# (CDN-Cache-Control, Surrogate-Control, Cache-Status, fingerprinted URLs,
# the probe, /metrics). REDbot also sends its own conditional and ranged
# follow-up requests to each URL, so 304s, 206s and the store's answers are
# checked too.
#
#   bash bench/redbot.sh            # prints every WARN and BAD note per URL
#
# Exits 1 if any note is BAD. REDbot comes from PyPI (package `redbot`,
# author Mark Nottingham) into a virtualenv under target/ on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${REDBOT_VENV:-${CARGO_TARGET_DIR:-target}/redbot-venv}
if [ ! -x "$venv/bin/redbot" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet redbot
fi
echo "REDbot $("$venv/bin/pip" show redbot | sed -n 's/^Version: //p')"

cargo build --quiet --example media_server --all-features   # the build `cargo test --all-features` made
log=$(mktemp)
PORT=0 RUST_LOG=warn "${CARGO_TARGET_DIR:-target}/debug/examples/media_server" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; rm -f "$log"' EXIT
base=
for _ in $(seq 50); do
  base=$(sed -n 's|^Serving .* on \(http://[0-9.:]*\)/$|\1|p' "$log")
  [ -n "$base" ] && break
  sleep 0.1
done
[ -n "$base" ] || { cat "$log"; echo "the example did not start"; exit 1; }

# Every route: the index, each file plain and fingerprinted (as the index
# links them), the live routes (probe and Trust::Never), /metrics, a 404,
# and the generated 22 MiB video (streamed: its tag learned, ranges cut).
paths=(/ /live/snapshot.svg /live/tone.wav /metrics /media/missing.png /videos/long-sweep.y4m)
for file in $(ls examples/media | grep -E '\.(png|wav|y4m)$'); do
  paths+=("/media/$file")
done
while read -r href; do
  paths+=("$href")
done < <(curl -s "$base/" | grep -o 'href="/media/[^"]*"' | cut -d'"' -f2 | sort -u)

bad=0
for path in "${paths[@]}"; do
  summary=$("$venv/bin/redbot" -o har "$base$path" | python3 bench/redbot_summary.py "$path")
  echo "$summary" | sed '$d'
  [ "$(echo "$summary" | tail -1)" = OK ] || bad=1
done
if [ "$bad" = 1 ]; then
  echo "REDbot found BAD notes"
  exit 1
fi
echo "no BAD note on ${#paths[@]} URLs"
