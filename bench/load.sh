#!/usr/bin/env bash
# Load comparison on 127.0.0.1: axum without and with MediaCacheLayer (and
# with the layer and a handler that sends its own content ETag, so nothing
# is hashed per request; and a bare handler that answers every request 304,
# the floor of the Rust stack), tower-http's ServeDir and nginx, serving the same 200 KB file, 200s and
# 304s, interleaved in one run. See BENCHMARKS.md for the numbers.
#
#   bash bench/load.sh                       # 3 rounds of 5 s per contender
#   ROUNDS=5 DURATION=10s bash bench/load.sh
#
# Settings (environment): ROUNDS (3), DURATION (5s), CONNECTIONS (32),
# WRK_THREADS (1 when pinned, else 2), BASE_PORT (18080), PIN (1: pin the
# servers to the last CPU and wrk to the others, when there are >= 2),
# OUT (also write the table to this file).
#
# On a 2-core machine wrk and the server compete for the CPU; pinning gives
# each server one core and wrk the other, so every contender gets the same
# share and the load generator is not starved by the server (nginx runs one
# worker process, the Rust servers one Tokio worker thread, for the same
# reason). Every process started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
BASE_PORT=${BASE_PORT:-18080}
PIN=${PIN:-1}
OUT=${OUT:-}
MEDIA_BYTES=$((200 * 1024))

# --- tools -----------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --example bench_server
SERVER=${CARGO_TARGET_DIR:-target}/release/examples/bench_server

# --- processes and cleanup -------------------------------------------------
pids=()
tmp=$(mktemp -d /tmp/media-bench.XXXXXX)
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpus=$(nproc)
server_pin=()
wrk_pin=()
if [ "$PIN" = 1 ] && [ "$cpus" -ge 2 ]; then
  server_pin=(taskset -c "$((cpus - 1))")
  wrk_pin=(taskset -c "0-$((cpus - 2))")
  WRK_THREADS=${WRK_THREADS:-$((cpus - 1))}
else
  WRK_THREADS=${WRK_THREADS:-2}
fi

# --- the file --------------------------------------------------------------
mkdir -p "$tmp/media"
head -c "$MEDIA_BYTES" /dev/urandom >"$tmp/media/media.jpg"
# nginx's workers run as an unprivileged user: let them read the file.
chmod 755 "$tmp" "$tmp/media"
chmod 644 "$tmp/media/media.jpg"

port_plain=$((BASE_PORT + 1))
port_layer=$((BASE_PORT + 2))
port_servedir=$((BASE_PORT + 3))
port_nginx=$((BASE_PORT + 4))
port_layer_etag=$((BASE_PORT + 5))
port_handler_304=$((BASE_PORT + 6))
all_ports=("$port_plain" "$port_layer" "$port_servedir" "$port_nginx" "$port_layer_etag" "$port_handler_304")
for port in "${all_ports[@]}"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
    echo "port $port is already in use; set BASE_PORT" >&2
    exit 1
  fi
done

# --- servers ---------------------------------------------------------------
cat >"$tmp/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 1000000;
  etag on;
  types { image/jpeg jpg; }
  default_type application/octet-stream;
  client_body_temp_path $tmp/client_body;
  proxy_temp_path $tmp/proxy;
  fastcgi_temp_path $tmp/fastcgi;
  uwsgi_temp_path $tmp/uwsgi;
  scgi_temp_path $tmp/scgi;
  server {
    listen 127.0.0.1:$port_nginx;
    root $tmp/media;
    location / { }
  }
}
CONF

"${server_pin[@]}" "$NGINX" -p "$tmp" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" &
pids+=($!)
for mode in plain layer layer-etag handler-304 servedir; do
  port_var=port_${mode//-/_}
  "${server_pin[@]}" "$SERVER" "$mode" "127.0.0.1:${!port_var}" "$tmp/media/media.jpg" &
  pids+=($!)
done

url() { echo "http://127.0.0.1:$1/media.jpg"; }
for port in "${all_ports[@]}"; do
  for _ in $(seq 100); do
    curl -sf -o /dev/null --max-time 1 "$(url "$port")" && break
    sleep 0.1
  done
  curl -sf -o /dev/null --max-time 2 "$(url "$port")" || {
    echo "server on port $port did not come up" >&2
    exit 1
  }
done

etag_of() {
  curl -s -D - -o /dev/null "$(url "$1")" | tr -d '\r' |
    awk 'tolower($1) == "etag:" { sub(/^[^:]*: */, ""); print; exit }'
}
status_with() {
  curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $2" "$(url "$1")"
}
etag_layer=$(etag_of "$port_layer")
etag_servedir=$(etag_of "$port_servedir")
etag_nginx=$(etag_of "$port_nginx")
echo "ETags: layer $etag_layer, servedir $etag_servedir, nginx $etag_nginx"
for check in "layer $port_layer $etag_layer" "servedir $port_servedir $etag_servedir" \
  "nginx $port_nginx $etag_nginx"; do
  read -r name port etag <<<"$check"
  if [ -z "$etag" ] || [ "$(status_with "$port" "$etag")" != 304 ]; then
    echo "$name does not answer 304 to If-None-Match: $etag" >&2
    exit 1
  fi
done
size=$(curl -s -o /dev/null -w '%{size_download}' "$(url "$port_plain")")
[ "$size" = "$MEDIA_BYTES" ] || {
  echo "plain served $size bytes, expected $MEDIA_BYTES" >&2
  exit 1
}

# --- load ------------------------------------------------------------------
# name|port|If-None-Match (empty: an unconditional GET)
contenders=(
  "plain-200|$port_plain|"
  "layer-200|$port_layer|"
  "layer-etag-200|$port_layer_etag|"
  "servedir-200|$port_servedir|"
  "nginx-200|$port_nginx|"
  "layer-304|$port_layer|$etag_layer"
  "handler-304|$port_handler_304|$etag_layer"
  "servedir-304|$port_servedir|$etag_servedir"
  "nginx-304|$port_nginx|$etag_nginx"
)

# Prints "requests/s bytes/request errors".
run_wrk() {
  local port=$1 etag=$2 duration=$3 out
  local header=()
  [ -n "$etag" ] && header=(-H "If-None-Match: $etag")
  out=$("${wrk_pin[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$duration" \
    "${header[@]}" "$(url "$port")")
  awk '
    /Requests\/sec:/ { rps = $2 }
    /requests in/ { requests = $1; bytes = $5 }
    /Non-2xx or 3xx responses:/ { errors += $5 }
    /Socket errors:/ { errors += 1 }
    function size(v) {
      if (v ~ /GB$/) return v * 1024 * 1024 * 1024
      if (v ~ /MB$/) return v * 1024 * 1024
      if (v ~ /KB$/) return v * 1024
      return v + 0
    }
    END { printf "%.0f %.0f %d\n", rps, size(bytes) / (requests ? requests : 1), errors }
  ' <<<"$out"
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, ${cpus} CPUs," \
  "servers pinned: ${server_pin[*]:-no}, wrk pinned: ${wrk_pin[*]:-no}"
for contender in "${contenders[@]}"; do
  IFS='|' read -r name port etag <<<"$contender"
  run_wrk "$port" "$etag" 1s >/dev/null # warm-up
done

declare -A results bytes errors
n=${#contenders[@]}
for round in $(seq "$ROUNDS"); do
  for i in $(seq 0 $((n - 1))); do
    # Rotate the order each round so no contender always runs first.
    contender=${contenders[$(((i + round - 1) % n))]}
    IFS='|' read -r name port etag <<<"$contender"
    read -r rps per_request errs < <(run_wrk "$port" "$etag" "$DURATION")
    [ -n "${rps:-}" ] && [ "$rps" != 0 ] || {
      echo "wrk failed against $name" >&2
      exit 1
    }
    results[$name]="${results[$name]:-} $rps"
    bytes[$name]=$per_request
    errors[$name]=$((${errors[$name]:-0} + errs))
    echo "round $round: $name $rps req/s ($per_request B/request), load $(cut -d' ' -f1 /proc/loadavg)" >&2
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
best() { tr ' ' '\n' | grep . | sort -g | tail -1; }
declare -A med top
for contender in "${contenders[@]}"; do
  name=${contender%%|*}
  med[$name]=$(median <<<"${results[$name]}")
  top[$name]=$(best <<<"${results[$name]}")
done
table=$(
  printf '| contender | %s | median req/s | best req/s | B/request | errors |\n' \
    "$(seq -s ' | ' -f 'run %g' 1 "$ROUNDS")"
  printf '|---|%s---:|---:|---:|---:|\n' "$(printf -- '---:|%.0s' $(seq "$ROUNDS"))"
  for contender in "${contenders[@]}"; do
    name=${contender%%|*}
    # shellcheck disable=SC2086
    printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$(echo ${results[$name]} | sed 's/ / | /g')" \
      "${med[$name]}" "${top[$name]}" "${bytes[$name]}" "${errors[$name]}"
  done
)
# Interference from other processes only ever lowers a run's rate, so the
# best run of each contender is the least disturbed one: both are shown.
ratio() {
  local n=$1 a=$2 b=$3
  awk -v n="$n" -v am="${med[$a]}" -v bm="${med[$b]}" -v at="${top[$a]}" -v bt="${top[$b]}" \
    'BEGIN { printf "| %s | %.3f | %.3f |\n", n, am / bm, at / bt }'
}
ratios=$(
  echo '| ratio | of medians | of bests |'
  echo '|---|---:|---:|'
  ratio 'layer-200 / plain-200 (cost of the layer on 200s)' layer-200 plain-200
  ratio 'layer-etag-200 / plain-200 (the layer when the handler sends the ETag)' layer-etag-200 plain-200
  ratio 'layer-200 / servedir-200' layer-200 servedir-200
  ratio 'layer-200 / nginx-200' layer-200 nginx-200
  ratio 'layer-304 / nginx-304' layer-304 nginx-304
  ratio 'layer-304 / handler-304 (short-circuit vs a handler that only answers 304)' layer-304 handler-304
  ratio 'handler-304 / nginx-304 (the Rust stack alone)' handler-304 nginx-304
  ratio 'layer-304 / servedir-304' layer-304 servedir-304
  ratio 'layer-304 / layer-200' layer-304 layer-200
  ratio 'servedir-200 / plain-200' servedir-200 plain-200
  ratio 'nginx-200 / plain-200' nginx-200 plain-200
)
echo
echo "$table"
echo
echo "$ratios"
if [ -n "$OUT" ]; then
  {
    echo "$table"
    echo
    echo "$ratios"
  } >"$OUT"
fi
