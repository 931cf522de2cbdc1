#!/usr/bin/env bash
# Load comparison on 127.0.0.1: axum without and with MediaCacheLayer (with
# its hash memo, which hashes the in-memory buffer once; with the memo off,
# so every 200 is hashed; with a handler that sends its own content ETag, so
# nothing is hashed per request; and a bare handler that answers every
# request 304, the floor of the Rust stack), tower-http's ServeDir and
# nginx, serving the same file, 200s and 304s, interleaved in one run, at one
# or more body sizes. See BENCHMARKS.md for the numbers.
#
#   bash bench/load.sh                             # 3 rounds of 5 s per contender
#   ROUNDS=5 DURATION=10s bash bench/load.sh
#   BODY_SIZES="1K 200K 5M" bash bench/load.sh     # one table per body size
#   bash bench/load.sh --help                      # this text
#
# What it reports, per contender and body size (medians over the rounds):
#   - req/s (wrk);
#   - the SERVER's CPU time per request: utime+stime of the server process
#     (/proc/PID/stat, which already sums all of its threads; for nginx the
#     master plus its worker) read just before and just after the wrk run,
#     in clock ticks converted with `getconf CLK_TCK`, divided by the number
#     of requests wrk completed;
#   - the CLIENT's (wrk's) CPU time per request, the same way (wrk reads its
#     own /proc/self/stat when it starts and in its `done` hook);
#   - each process's CPU use over the run (% of one core), and a
#     "client saturated" flag when wrk used more than SATURATED_PCT % of the
#     cores it may use: then the req/s is wrk's limit, not the server's, and
#     only the CPU per request compares the servers;
#   - the CPU the rest of the machine used meanwhile (user+nice+system of
#     /proc/stat minus server and wrk, and the hypervisor's steal), as % of
#     one core: a run where it exceeds DISTURBED_PCT is counted as disturbed;
#   - the machine's irq+softirq time per request: the kernel charges the
#     loopback network path's softirq work to neither process when it
#     accounts IRQ time apart, so it is shown next to them.
# CPU per request also depends on the load: a server that is not at ~100 %
# of its core handles fewer requests per wake-up and pays more per request.
# A contender's disturbed runs are left out of its medians when it has
# undisturbed ones. Ratios are of CPU per request (rps ratios as context),
# as ratio of the medians and, in brackets, the range of the ratios taken
# within each round (rounds where both sides' runs count).
#
# Clock-tick resolution: utime/stime advance in ticks of 1/CLK_TCK s (100/s,
# i.e. 10 ms, on most Linux systems). A 5 s run of a server at 100 % of a
# core is ~500 ticks, a 0.2 % resolution; wrk at 30 % is ~150 ticks. Runs
# must last several seconds for the CPU numbers to be precise: DURATION
# under 3 s draws a warning.
#
# Settings (environment): ROUNDS (3), DURATION (5s), CONNECTIONS (32),
# BODY_SIZES ("200K"; bytes or with a K/M suffix, space-separated; BODY_SIZE
# is the same for one size), WRK_THREADS (1 when pinned, else 2),
# SERVER_WORKERS (1: Tokio worker threads of the Rust servers; nginx always
# runs one worker process), BASE_PORT (18080; each body size uses the next
# block of 10 ports), PIN (1: pin the servers to the last CPU and wrk to the
# others, when there are >= 2), SATURATED_PCT (90), DISTURBED_PCT (10),
# WAIT_QUIET (0: before each run, wait up to this many seconds for the rest
# of the machine to use less than DISTURBED_PCT % of a core),
# RETRY_DISTURBED (0: run a disturbed run again up to this many times; the
# last attempt counts), OUT (also write the tables and every run to this
# file). REPORT_FROM="FILE..." measures nothing and prints the tables again
# from the runs listed in files written with OUT (with WRK_CORES, 1: the
# cores wrk could use; give runs of separate invocations distinct round
# numbers to pool them).
#
# On a 2-core machine wrk and the server compete for the CPU; pinning gives
# each server one core and wrk the other, so every contender gets the same
# share and the load generator is not starved by the server (nginx runs one
# worker process, the Rust servers one Tokio worker thread, for the same
# reason). Everything listens on and is loaded through 127.0.0.1 only.
# Every process started here (servers, nginx and its worker, wrk) is
# stopped on exit, also on Ctrl-C or TERM.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
-h | --help)
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 0
  ;;
"") ;;
*)
  echo "usage: bash bench/load.sh [--help]   (settings are environment variables)" >&2
  exit 2
  ;;
esac

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
BASE_PORT=${BASE_PORT:-18080}
PIN=${PIN:-1}
OUT=${OUT:-}
BODY_SIZES=${BODY_SIZES:-${BODY_SIZE:-200K}}
SERVER_WORKERS=${SERVER_WORKERS:-1}
SATURATED_PCT=${SATURATED_PCT:-90}
DISTURBED_PCT=${DISTURBED_PCT:-10}
WAIT_QUIET=${WAIT_QUIET:-0}
RETRY_DISTURBED=${RETRY_DISTURBED:-0}

# "200K" -> 204800, "5M" -> 5242880, "1024" -> 1024.
bytes_of() {
  case "$1" in
  *[kK]) echo $((${1%?} * 1024)) ;;
  *[mM]) echo $((${1%?} * 1024 * 1024)) ;;
  *) echo $(($1)) ;;
  esac
}
# 204800 -> "200KiB" (one word: it is a key in the results).
label_of() {
  local b=$1
  if [ $((b % 1048576)) = 0 ]; then
    echo "$((b / 1048576))MiB"
  elif [ $((b % 1024)) = 0 ]; then
    echo "$((b / 1024))KiB"
  else
    echo "${b}B"
  fi
}
sizes=()
for s in $BODY_SIZES; do
  [[ $s =~ ^[0-9]+[kKmM]?$ ]] || {
    echo "BODY_SIZES: '$s' is not a size (bytes, or a number with K or M)" >&2
    exit 2
  }
  sizes+=("$(bytes_of "$s")")
done
[ ${#sizes[@]} -gt 0 ] || {
  echo "BODY_SIZES is empty" >&2
  exit 2
}
case "$DURATION" in
*m) duration_s=$((${DURATION%m} * 60)) ;;
*s) duration_s=${DURATION%s} ;;
*) duration_s=$DURATION ;;
esac
[[ $duration_s =~ ^[0-9]+$ ]] || {
  echo "DURATION: use whole seconds or minutes (5s, 1m)" >&2
  exit 2
}
if [ "$duration_s" -lt 3 ]; then
  echo "warning: DURATION=$DURATION is short for CPU accounting in clock ticks of 1/$(getconf CLK_TCK) s" >&2
fi

# --- the tables --------------------------------------------------------------
# The tables, from a file of runs (one line per run, as written below) and
# the size labels in order ("1KiB 200KiB"); $3: the cores wrk could use.
report_of() {
  awk -v sat="$SATURATED_PCT" -v cores="$3" -v dist="$DISTURBED_PCT" \
    -v order="plain-200 layer-200 layer-nomemo-200 layer-etag-200 servedir-200 nginx-200 layer-304 handler-304 servedir-304 nginx-304" \
    -v sizes="$2" '
    function sort_(arr, n,   i, j, t) {
      for (i = 2; i <= n; i++) {
        t = arr[i]
        for (j = i - 1; j >= 1 && arr[j] > t; j--) arr[j + 1] = arr[j]
        arr[j + 1] = t
      }
    }
    # Median of column c of the runs of size l, contender x.
    function med(l, x, c,   n, r, v) {
      n = 0
      for (r = 1; r <= rounds; r++)
        if ((l, x, r) in have && val[l, x, r, c] != "-") v[++n] = val[l, x, r, c] + 0
      if (n == 0) return ""
      sort_(v, n)
      return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    function lo(l, x, c,   r, m) {
      m = ""
      for (r = 1; r <= rounds; r++)
        if ((l, x, r) in have && (m == "" || val[l, x, r, c] + 0 < m)) m = val[l, x, r, c] + 0
      return m
    }
    function hi(l, x, c,   r, m) {
      m = ""
      for (r = 1; r <= rounds; r++)
        if ((l, x, r) in have && (m == "" || val[l, x, r, c] + 0 > m)) m = val[l, x, r, c] + 0
      return m
    }
    function saturated(l, x, r) { return val[l, x, r, 6] + 0 > sat * cores }
    function disturbed(l, x, r) { return val[l, x, r, 7] + 0 > dist || val[l, x, r, 8] + 0 > dist }
    function count(l, x, what,   r, k) {
      k = 0
      for (r = 1; r <= rounds; r++)
        if ((l, x, r) in have && ((what == "sat" && saturated(l, x, r)) || (what == "dist" && disturbed(l, x, r)))) k++
      return k
    }
    function runs_of(l, x,   r, k) { k = 0; for (r = 1; r <= rounds; r++) if ((l, x, r) in have) k++; return k }
    # ratio of medians of column c, with the range of the per-round ratios
    function ratio(l, a, b, c,   r, lo_, hi_, q) {
      if (med(l, a, c) == "" || med(l, b, c) == "" || med(l, b, c) == 0) return "n/a"
      lo_ = ""; hi_ = ""
      for (r = 1; r <= rounds; r++) {
        if (!((l, a, r) in have) || !((l, b, r) in have)) continue
        if (val[l, a, r, c] == "-" || val[l, b, r, c] == "-" || val[l, b, r, c] == 0) continue
        q = val[l, a, r, c] / val[l, b, r, c]
        if (lo_ == "" || q < lo_) lo_ = q
        if (hi_ == "" || q > hi_) hi_ = q
      }
      return sprintf("%.3f (%.3f–%.3f)", med(l, a, c) / med(l, b, c), lo_, hi_)
    }
    function ratio_row(l, a, b, what,   flag) {
      if (!((l, a) in seen) || !((l, b) in seen)) return
      flag = (count(l, a, "sat") * 2 > runs_of(l, a) || count(l, b, "sat") * 2 > runs_of(l, b)) ? " (client-bound)" : ""
      printf "| %s / %s%s | %s | %s | %s | %s%s |\n", a, b, what, ratio(l, a, b, 3), ratio(l, a, b, 12),
        ratio(l, a, b, 4), ratio(l, a, b, 1), flag
    }
    {
      # label name round rps requests server_us client_us server_pct client_pct others_pct steal_pct B/req errors irq_us server_user_us load1
      l = $1; x = $2; r = $3
      have[l, x, r] = 1; seen[l, x] = 1
      if (r > rounds) rounds = r
      for (c = 1; c <= 13; c++) val[l, x, r, c] = $(c + 3)
    }
    END {
      ns = split(sizes, S, " "); no = split(order, O, " ")
      # A contender with some undisturbed runs is judged on those only.
      for (s = 1; s <= ns; s++) for (o = 1; o <= no; o++) {
        l = S[s]; x = O[o]
        total[l, x] = runs_of(l, x); ndist[l, x] = count(l, x, "dist")
        if (ndist[l, x] > 0 && ndist[l, x] < total[l, x])
          for (r = 1; r <= rounds; r++) if ((l, x, r) in have && disturbed(l, x, r)) delete have[l, x, r]
      }
      for (s = 1; s <= ns; s++) {
        l = S[s]
        printf "#### %s body\n\n", l
        print "| contender | req/s | server µs CPU/request | (min–max) | of it user | client µs CPU/request | irq+softirq µs/request | server CPU | client CPU | client saturated | disturbed runs | B/request | errors |"
        print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"
        for (o = 1; o <= no; o++) {
          x = O[o]
          if (!((l, x) in seen)) continue
          n = runs_of(l, x); k = count(l, x, "sat")
          errs = 0
          for (r = 1; r <= rounds; r++) if ((l, x, r) in have) errs += val[l, x, r, 10]
          u = med(l, x, 12)
          printf "| %s | %.0f | %.2f | %.2f–%.2f | %s | %.2f | %.2f | %.0f %% | %.0f %% | %s | %d/%d | %.0f | %d |\n",
            x, med(l, x, 1), med(l, x, 3), lo(l, x, 3), hi(l, x, 3), (u == "" ? "n/a" : sprintf("%.2f", u)),
            med(l, x, 4), med(l, x, 11),
            med(l, x, 5), med(l, x, 6),
            (k == 0 ? "no" : (k * 2 > n ? "**yes** " k "/" n : k "/" n)),
            ndist[l, x], total[l, x], med(l, x, 9), errs
        }
        print ""
        print "| ratio | server CPU/request | server user CPU/request | client CPU/request | req/s (context) |"
        print "|---|---:|---:|---:|---:|"
        ratio_row(l, "layer-200", "plain-200", " (cost of the layer on 200s)")
        ratio_row(l, "layer-nomemo-200", "plain-200", " (the layer hashing every 200)")
        ratio_row(l, "layer-etag-200", "plain-200", " (the layer when the handler sends the ETag)")
        ratio_row(l, "layer-200", "nginx-200", "")
        ratio_row(l, "layer-nomemo-200", "nginx-200", "")
        ratio_row(l, "layer-200", "servedir-200", "")
        ratio_row(l, "layer-304", "nginx-304", "")
        ratio_row(l, "layer-304", "handler-304", " (short-circuit vs a bare 304 handler)")
        ratio_row(l, "handler-304", "nginx-304", " (the Rust stack alone)")
        ratio_row(l, "layer-304", "servedir-304", "")
        ratio_row(l, "layer-304", "layer-200", "")
        ratio_row(l, "nginx-200", "plain-200", "")
        ratio_row(l, "servedir-200", "plain-200", "")
        print ""
      }
      printf "Medians of %d rounds. CPU/request = (utime+stime over the run) / requests completed; ", rounds
      printf "CPU columns are %% of one core over the run; client saturated: wrk above %s %% of its %d core(s) ", sat, cores
      printf "(then req/s is the limit of wrk); disturbed: other processes or steal above %s %% of a core ", dist
      printf "(a contender\047s disturbed runs are left out when it has undisturbed ones; saturation counts the runs used). "
      printf "irq+softirq: of the whole machine, charged to neither process. "
      printf "Ratios: of the medians (in brackets, the range of the ratios within each round); "
      print "client-bound: a side is client-saturated in most runs, so its req/s ratio says nothing about the servers."
    }
  ' "$1"
}

if [ -n "${REPORT_FROM:-}" ]; then
  # shellcheck disable=SC2086 # a list of files
  # Lines without server_user_us (15 fields) get "-" in its place.
  lines=$(awk '(NF == 15 || NF == 16) && $3 ~ /^[0-9]+$/ { if (NF == 15) $15 = "- " $15; print }' $REPORT_FROM)
  report_of <(echo "$lines") "$(awk '!seen[$1]++ { printf "%s ", $1 }' <<<"$lines")" "${WRK_CORES:-1}"
  exit 0
fi

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
CLK_TCK=$(getconf CLK_TCK)

cargo build --release --example bench_server
# What was built (src/ may change while the run goes on).
library="library: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(
  if git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | grep -q .; then
    echo ' with uncommitted changes in src/'
  fi
)"
SERVER=${CARGO_TARGET_DIR:-target}/release/examples/bench_server

# --- processes and cleanup -------------------------------------------------
pids=()
wrk_pid=
tmp=$(mktemp -d /tmp/media-bench.XXXXXX)
cleanup() {
  # wrk first (a run may be under way), then the servers; nginx's master
  # stops its worker, which is also in the list in case the master is gone.
  [ -z "$wrk_pid" ] || kill "$wrk_pid" 2>/dev/null || true
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in $wrk_pid "${pids[@]}"; do
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
  wrk_cpus=$((cpus - 1))
  WRK_THREADS=${WRK_THREADS:-$((cpus - 1))}
else
  wrk_cpus=$cpus
  WRK_THREADS=${WRK_THREADS:-2}
fi
# wrk can use at most this many cores: one per thread, within its CPU set.
wrk_cores=$((WRK_THREADS < wrk_cpus ? WRK_THREADS : wrk_cpus))

# --- the files -------------------------------------------------------------
# One folder per body size, all with the same file name.
# nginx's workers run as an unprivileged user: let them read the files.
chmod 755 "$tmp"
for k in "${!sizes[@]}"; do
  mkdir -p "$tmp/media-$k"
  head -c "${sizes[$k]}" /dev/urandom >"$tmp/media-$k/media.jpg"
  chmod 755 "$tmp/media-$k"
  chmod 644 "$tmp/media-$k/media.jpg"
done

# Ports: BASE_PORT + 10 * (index of the body size) + one of these.
modes=(plain layer servedir nginx layer-etag handler-304 layer-nomemo)
port_of() { # size index, mode
  local j
  for j in "${!modes[@]}"; do
    [ "${modes[$j]}" = "$2" ] && echo $((BASE_PORT + 10 * $1 + j + 1)) && return
  done
  return 1
}
all_ports=()
for k in "${!sizes[@]}"; do
  for mode in "${modes[@]}"; do
    all_ports+=("$(port_of "$k" "$mode")")
  done
done
for port in "${all_ports[@]}"; do
  if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/"; then
    echo "port $port is already in use; set BASE_PORT" >&2
    exit 1
  fi
done

# --- servers ---------------------------------------------------------------
{
  cat <<CONF
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
CONF
  for k in "${!sizes[@]}"; do
    cat <<CONF
  server {
    listen 127.0.0.1:$(port_of "$k" nginx);
    root $tmp/media-$k;
    location / { }
  }
CONF
  done
  echo "}"
} >"$tmp/nginx.conf"

# Which processes' CPU counts for a port ("pid pid ...").
declare -A pids_of
"${server_pin[@]}" "$NGINX" -p "$tmp" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" &
nginx_master=$!
pids+=("$nginx_master")
for k in "${!sizes[@]}"; do
  for mode in plain layer layer-nomemo layer-etag handler-304 servedir; do
    port=$(port_of "$k" "$mode")
    BENCH_WORKERS=$SERVER_WORKERS "${server_pin[@]}" "$SERVER" "$mode" "127.0.0.1:$port" \
      "$tmp/media-$k/media.jpg" &
    pids+=($!)
    pids_of[$port]=$!
  done
done

url() { echo "http://127.0.0.1:$1/media.jpg"; }
for port in "${all_ports[@]}"; do
  for _ in $(seq 100); do
    curl -sf -o /dev/null --max-time 1 "$(url "$port")" && break
    sleep 0.1
  done
  curl -sf -o /dev/null --max-time 5 "$(url "$port")" || {
    echo "server on port $port did not come up" >&2
    exit 1
  }
done

# nginx's worker(s): the children of the master.
children_of() {
  local stat line
  local -a f
  for stat in /proc/[0-9]*/stat; do
    read -r line 2>/dev/null <"$stat" || continue
    read -r -a f <<<"${line##*") "}"
    [ "${f[1]}" = "$1" ] && { stat=${stat#/proc/} && echo "${stat%/stat}"; }
  done
  return 0
}
nginx_workers=$(children_of "$nginx_master" | tr '\n' ' ')
[ -n "$nginx_workers" ] || {
  echo "nginx has no worker process" >&2
  exit 1
}
for pid in $nginx_workers; do pids+=("$pid"); done
for k in "${!sizes[@]}"; do
  pids_of[$(port_of "$k" nginx)]="$nginx_master $nginx_workers"
done

etag_of() {
  curl -s -D - -o /dev/null "$(url "$1")" | tr -d '\r' |
    awk 'tolower($1) == "etag:" { sub(/^[^:]*: */, ""); print; exit }'
}
status_with() {
  curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $2" "$(url "$1")"
}

# --- contenders --------------------------------------------------------------
# size label|name|port|If-None-Match (empty: an unconditional GET)
contenders=()
for k in "${!sizes[@]}"; do
  label=$(label_of "${sizes[$k]}")
  p_plain=$(port_of "$k" plain)
  p_layer=$(port_of "$k" layer)
  p_layer_etag=$(port_of "$k" layer-etag)
  p_layer_nomemo=$(port_of "$k" layer-nomemo)
  p_handler_304=$(port_of "$k" handler-304)
  p_servedir=$(port_of "$k" servedir)
  p_nginx=$(port_of "$k" nginx)
  etag_layer=$(etag_of "$p_layer")
  etag_servedir=$(etag_of "$p_servedir")
  etag_nginx=$(etag_of "$p_nginx")
  echo "$label: ETags: layer $etag_layer, servedir $etag_servedir, nginx $etag_nginx"
  for check in "layer $p_layer $etag_layer" "servedir $p_servedir $etag_servedir" \
    "nginx $p_nginx $etag_nginx" "handler-304 $p_handler_304 $etag_layer"; do
    read -r name port etag <<<"$check"
    if [ -z "$etag" ] || [ "$(status_with "$port" "$etag")" != 304 ]; then
      echo "$label: $name does not answer 304 to If-None-Match: $etag" >&2
      exit 1
    fi
  done
  for port in "$p_plain" "$p_layer" "$p_layer_nomemo" "$p_layer_etag" "$p_servedir" "$p_nginx"; do
    size=$(curl -s -o /dev/null -w '%{size_download}' "$(url "$port")")
    [ "$size" = "${sizes[$k]}" ] || {
      echo "$label: port $port served $size bytes, expected ${sizes[$k]}" >&2
      exit 1
    }
  done
  contenders+=(
    "$label|plain-200|$p_plain|"
    "$label|layer-200|$p_layer|"
    "$label|layer-nomemo-200|$p_layer_nomemo|"
    "$label|layer-etag-200|$p_layer_etag|"
    "$label|servedir-200|$p_servedir|"
    "$label|nginx-200|$p_nginx|"
    "$label|layer-304|$p_layer|$etag_layer"
    "$label|handler-304|$p_handler_304|$etag_layer"
    "$label|servedir-304|$p_servedir|$etag_servedir"
    "$label|nginx-304|$p_nginx|$etag_nginx"
  )
done

# --- CPU accounting ----------------------------------------------------------
# wrk reads its own utime+stime when its script is loaded and again when the
# run is done, and prints them with the run's totals. Only `done` is
# defined, so wrk still sends its static request without calling Lua.
cat >"$tmp/cpu.lua" <<'LUA'
local function ticks()
  local f = io.open("/proc/self/stat", "r")
  if not f then return -1 end
  local line = f:read("*l")
  f:close()
  local fields = {}
  -- After "pid (comm) ": state is field 3, so utime (14) and stime (15)
  -- are the 12th and 13th words.
  for w in line:match("%) (.*)$"):gmatch("%S+") do fields[#fields + 1] = w end
  return tonumber(fields[12]) + tonumber(fields[13])
end
local start = ticks()
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("cpu-per-request: %d %d %d %d %d %d %d\n", start, ticks(),
    summary.requests, summary.bytes, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
end
LUA

# utime+stime and utime of the given processes, in clock ticks, into the
# variable $1 ("total user"). /proc/PID/stat of a process sums all of its
# threads.
proc_ticks() {
  local var=$1 pid line total=0 user=0
  local -a f
  shift
  for pid in "$@"; do
    read -r line <"/proc/$pid/stat" || {
      echo "process $pid is gone" >&2
      return 1
    }
    read -r -a f <<<"${line##*") "}"
    total=$((total + f[11] + f[12]))
    user=$((user + f[11]))
  done
  printf -v "$var" '%s %s' "$total" "$user"
}
# The whole machine's user+nice+system, steal, and irq+softirq ticks
# ("busy steal irq") into the variable $1. With IRQ time accounting (as
# here) the softirq time of the loopback network path is charged to no
# process: it is reported apart, per request.
machine_ticks() {
  local _cpu user nice system _idle _iowait irq softirq steal _rest
  read -r _cpu user nice system _idle _iowait irq softirq steal _rest </proc/stat
  printf -v "$1" '%s %s %s' "$((user + nice + system))" "$steal" "$((irq + softirq))"
}
# Microseconds since the epoch into the variable $1.
now_us() { local t=${EPOCHREALTIME//[!0-9]/}; printf -v "$1" '%s' "$((10#$t))"; }

# One wrk run against a contender. Prints "req/s requests server_us
# client_us server_pct client_pct others_pct steal_pct B/request errors
# irq_us server_user_us" (irq_us: the machine's irq+softirq time per
# request; server_user_us: the server's utime alone per request).
# Not to be called in a subshell: wrk runs in the background of this shell
# so that the traps can stop it.
run_wrk() {
  local port=$1 etag=$2 duration=$3 m0 m1 s0 s1 t0 t1
  local header=()
  [ -n "$etag" ] && header=(-H "If-None-Match: $etag")
  local -a server
  read -r -a server <<<"${pids_of[$port]}"
  machine_ticks m0
  proc_ticks s0 "${server[@]}"
  now_us t0
  "${wrk_pin[@]}" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$duration" -s "$tmp/cpu.lua" \
    "${header[@]}" "$(url "$port")" >"$tmp/wrk.out" 2>&1 &
  wrk_pid=$!
  if ! wait "$wrk_pid"; then
    wrk_pid=
    echo "wrk failed against port $port:" >&2
    cat "$tmp/wrk.out" >&2
    return 1
  fi
  wrk_pid=
  now_us t1
  proc_ticks s1 "${server[@]}"
  machine_ticks m1
  awk -v hz="$CLK_TCK" -v s0="$s0" -v s1="$s1" -v m0="$m0" -v m1="$m1" \
    -v wall_us="$((t1 - t0))" '
    /^cpu-per-request:/ {
      found = 1; w0 = $2; w1 = $3; requests = $4; bytes = $5; dur_us = $6; errors = $7 + $8
    }
    END {
      if (!found || requests == 0) { print "0"; exit }
      split(m0, a, " "); split(m1, b, " "); split(s0, p, " "); split(s1, q, " ")
      wall = wall_us / 1e6
      server = q[1] - p[1]; client = w1 - w0
      others = (b[1] - a[1]) - server - client; if (others < 0) others = 0
      printf "%.0f %d %.3f %.3f %.1f %.1f %.1f %.1f %.0f %d %.3f %.3f\n",
        requests / (dur_us / 1e6), requests,
        server / hz * 1e6 / requests, client / hz * 1e6 / requests,
        server / hz / wall * 100, client / hz / wall * 100,
        others / hz / wall * 100, (b[2] - a[2]) / hz / wall * 100,
        bytes / requests, errors, (b[3] - a[3]) / hz * 1e6 / requests,
        (q[2] - p[2]) / hz * 1e6 / requests
    }
  ' "$tmp/wrk.out"
}

# Waits up to WAIT_QUIET seconds until the machine (our servers are idle
# between runs) uses less than DISTURBED_PCT % of a core over half a second.
# Prints how long it waited, in seconds.
wait_quiet() {
  local start now m0 m1 b0 b1 _s
  now_us start
  while [ "$WAIT_QUIET" -gt 0 ]; do
    machine_ticks m0
    sleep 0.5
    machine_ticks m1
    read -r b0 _s <<<"$m0"
    read -r b1 _s <<<"$m1"
    [ $(((b1 - b0) * 100 * 2)) -le $((DISTURBED_PCT * CLK_TCK)) ] && break
    now_us now
    [ $(((now - start) / 1000000)) -lt "$WAIT_QUIET" ] || break
  done
  now_us now
  echo $(((now - start) / 1000000))
}

threads_of() { awk '/^Threads:/ { print $2 }' "/proc/$1/status"; }
load_line() { uptime 2>/dev/null || cat /proc/loadavg; }
echo "$library"
echo "load before: $(load_line)"
echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS rounds, ${cpus} CPUs," \
  "servers pinned: ${server_pin[*]:-no}, wrk pinned: ${wrk_pin[*]:-no}, CLK_TCK $CLK_TCK," \
  "body sizes: $(for s in "${sizes[@]}"; do printf '%s ' "$(label_of "$s")"; done)"
for contender in "${contenders[@]}"; do
  IFS='|' read -r label name port etag <<<"$contender"
  run_wrk "$port" "$etag" 1s >/dev/null # warm-up
done
k0_threads=()
for mode in plain layer layer-nomemo layer-etag handler-304 servedir; do
  k0_threads+=("$mode $(threads_of "${pids_of[$(port_of 0 "$mode")]}")")
done
echo "threads after warm-up: ${k0_threads[*]}; nginx: master + $(echo "$nginx_workers" | wc -w) worker" \
  "(Rust servers: BENCH_WORKERS=$SERVER_WORKERS Tokio worker(s), the main thread, blocking-pool threads)"

# One line per run: label name round req/s requests server_us client_us
# server_pct client_pct others_pct steal_pct B/request errors irq_us
# server_user_us load1
runs=$tmp/runs
: >"$runs"
n=${#contenders[@]}
step=$((n / ROUNDS > 0 ? n / ROUNDS : 1))
for round in $(seq "$ROUNDS"); do
  echo "round $round: $(load_line)" >&2
  for i in $(seq 0 $((n - 1))); do
    # Rotate the order each round (by a third of the list for 3 rounds) so
    # no contender always runs next to the same ones or first.
    contender=${contenders[$(((i + (round - 1) * step) % n))]}
    IFS='|' read -r label name port etag <<<"$contender"
    for attempt in $(seq 0 "$RETRY_DISTURBED"); do
      waited=$(wait_quiet)
      load1=$(cut -d' ' -f1 /proc/loadavg)
      run_wrk "$port" "$etag" "$DURATION" >"$tmp/result"
      result=$(<"$tmp/result")
      if [ -z "$result" ] || [ "$result" = 0 ]; then
        echo "wrk failed against $label $name" >&2
        exit 1
      fi
      read -r rps _ srv cli srv_pct cli_pct others steal per_request errs irq usr <<<"$result"
      echo "round $round: $label $name $rps req/s, server ${srv} µs/req (user ${usr}; ${srv_pct} %)," \
        "wrk ${cli} µs/req (${cli_pct} %), others ${others} %, steal ${steal} %," \
        "irq+softirq ${irq} µs/req, $per_request B/req, $errs errors, load $load1," \
        "waited ${waited}s for quiet" >&2
      awk -v o="$others" -v s="$steal" -v d="$DISTURBED_PCT" 'BEGIN { exit !(o > d || s > d) }' ||
        break
      if [ "$attempt" -lt "$RETRY_DISTURBED" ]; then echo "  disturbed: again" >&2; fi
    done
    # Only the last attempt counts (flagged in the report if disturbed).
    echo "$label $name $round $result $load1" >>"$runs"
  done
done

# --- report ----------------------------------------------------------------
report=$(report_of "$runs" "$(for s in "${sizes[@]}"; do printf '%s ' "$(label_of "$s")"; done)" "$wrk_cores")
echo
echo "$report"
echo "load after: $(load_line)"
if [ -n "$OUT" ]; then
  {
    echo "$library"
    echo
    echo "$report"
    echo
    echo "Every run (label name round req/s requests server_us client_us server_pct client_pct others_pct steal_pct B/request errors irq_us server_user_us load1):"
    echo
    echo '```'
    cat "$runs"
    echo '```'
  } >"$OUT"
fi
