#!/usr/bin/env bash
# Burst benchmark for request coalescing (issue 13): N concurrent GETs of one
# URL, all sent at once by curl (--parallel --parallel-immediate, one
# connection each), against a handler that takes SLOW_MS milliseconds to
# answer a SIZE body from memory. See BENCHMARKS.md for the numbers.
#
#   bash bench/burst.sh                         # N=1000, SIZE=1M, SLOW_MS=50, 3 rounds
#   N=200 ROUNDS=5 bash bench/burst.sh
#
# Contenders (examples/bench_server.rs; nginx from Debian):
#   layer          the slow handler behind MediaCacheLayer (coalescing on)
#   layer-nocoal   the same with .coalesce(false)
#   nginx-lock     nginx proxy_cache with proxy_cache_lock on, in front of
#                  the same slow handler without the layer (its origin)
#   fast           the body from memory at once, no layer: what the burst
#                  costs without any handler latency (the transfer)
#
# Each round uses a new query (?r=N) so that nothing is cached or learned
# from an earlier round. Reported per contender, medians over the rounds:
# handler calls during the burst (GET /calls of the handler's server), p50
# and p99 of curl's time_total over the N requests, the server's CPU time
# (utime+stime from /proc/PID/stat, before and after; for nginx the master,
# its worker and its origin) per request, and its peak RSS (VmHWM) after
# all rounds. The server runs on the last CPU, curl on the others.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-1000}
SIZE=${SIZE:-1M}
SLOW_MS=${SLOW_MS:-50}
ROUNDS=${ROUNDS:-3}
BASE_PORT=${BASE_PORT:-18180}

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
CLK_TCK=$(getconf CLK_TCK)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --example bench_server
SERVER=${CARGO_TARGET_DIR:-target}/release/examples/bench_server

tmp=$(mktemp -d /tmp/media-burst.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpus=$(nproc)
server_pin=()
client_pin=()
if [ "$cpus" -ge 2 ]; then
  server_pin=(taskset -c "$((cpus - 1))")
  client_pin=(taskset -c "0-$((cpus - 2))")
fi

chmod 755 "$tmp"
head -c "$SIZE" /dev/urandom >"$tmp/media.jpg"
chmod 644 "$tmp/media.jpg"
bytes=$(stat -c %s "$tmp/media.jpg")

p_layer=$((BASE_PORT + 1))
p_nocoal=$((BASE_PORT + 2))
p_origin=$((BASE_PORT + 3))
p_nginx=$((BASE_PORT + 4))
p_fast=$((BASE_PORT + 5))

declare -A pid_of
start() { # mode port
  SLOW_MS=$SLOW_MS "${server_pin[@]}" "$SERVER" "$1" "127.0.0.1:$2" "$tmp/media.jpg" \
    2>>"$tmp/servers.log" &
  pids+=($!)
  pid_of[$2]=$!
}
start slow-layer "$p_layer"
start slow-layer-nocoalesce "$p_nocoal"
start slow-plain "$p_origin"
start plain "$p_fast"

cat >"$tmp/nginx.conf" <<CONF
daemon off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $tmp/client_body;
  proxy_temp_path $tmp/proxy;
  fastcgi_temp_path $tmp/fastcgi;
  uwsgi_temp_path $tmp/uwsgi;
  scgi_temp_path $tmp/scgi;
  proxy_cache_path $tmp/cache levels=1:2 keys_zone=media:10m max_size=1g;
  upstream origin { server 127.0.0.1:$p_origin; keepalive 16; }
  server {
    listen 127.0.0.1:$p_nginx backlog=4096;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache media;
      proxy_cache_valid 200 10m;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 5s;
      proxy_cache_lock_age 5s;
    }
  }
}
CONF
"${server_pin[@]}" "$NGINX" -p "$tmp" -e "$tmp/nginx-error.log" -c "$tmp/nginx.conf" &
nginx_master=$!
pids+=("$nginx_master")

for port in "$p_layer" "$p_nocoal" "$p_origin" "$p_fast" "$p_nginx"; do
  for _ in $(seq 100); do
    curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$port/media.jpg?warmup" && break
    sleep 0.1
  done
done
nginx_worker=$(pgrep -P "$nginx_master" | head -1)
pid_of[$p_nginx]="$nginx_master $nginx_worker ${pid_of[$p_origin]}"

cpu_ticks() { # pids...
  local total=0 pid line
  local -a f
  for pid in "$@"; do
    read -r line <"/proc/$pid/stat"
    read -r -a f <<<"${line##*") "}"
    total=$((total + f[11] + f[12]))
  done
  echo "$total"
}
hwm_kib() { # pid
  awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}
calls_of() { # port of the slow handler's server
  curl -sf "http://127.0.0.1:$1/calls"
}

# contender name | port | port whose /calls counts its handler
contenders=(
  "layer|$p_layer|$p_layer"
  "layer-nocoal|$p_nocoal|$p_nocoal"
  "nginx-lock|$p_nginx|$p_origin"
  "fast|$p_fast|"
)

echo "burst: $N concurrent GETs of $bytes bytes, handler latency ${SLOW_MS} ms, $ROUNDS rounds"
echo "library: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
runs="$tmp/runs"
: >"$runs"
for round in $(seq "$ROUNDS"); do
  for contender in "${contenders[@]}"; do
    IFS='|' read -r name port calls_port <<<"$contender"
    url="http://127.0.0.1:$port/media.jpg?r=$round"
    {
      for _ in $(seq "$N"); do
        echo "url = \"$url\""
        echo "output = \"/dev/null\""
      done
    } >"$tmp/burst.cfg"
    # shellcheck disable=SC2086
    before_cpu=$(cpu_ticks ${pid_of[$port]})
    before_calls=0
    [ -z "$calls_port" ] || before_calls=$(calls_of "$calls_port")
    "${client_pin[@]}" curl -s --no-progress-meter --parallel --parallel-immediate --parallel-max "$N" \
      -K "$tmp/burst.cfg" -w '%{http_code} %{size_download} %{time_total}\n' >"$tmp/times"
    # shellcheck disable=SC2086
    after_cpu=$(cpu_ticks ${pid_of[$port]})
    calls=-
    [ -z "$calls_port" ] || calls=$(($(calls_of "$calls_port") - before_calls))
    bad=$(awk -v b="$bytes" '$1 != 200 || $2 != b' "$tmp/times" | wc -l)
    sort -n -k3 "$tmp/times" | awk -v name="$name" -v round="$round" -v calls="$calls" \
      -v ticks=$((after_cpu - before_cpu)) -v hz="$CLK_TCK" -v bad="$bad" '
      { t[NR] = $3 }
      END {
        p50 = t[int(NR * 0.50 + 0.5)]; p99 = t[int(NR * 0.99 + 0.5)]
        printf "%s %d %s %.1f %.1f %.1f %d %d\n", name, round, calls, p50 * 1000, p99 * 1000,
          ticks / hz * 1e6 / NR, NR, bad
      }' >>"$runs"
    tail -1 "$runs" | awk '{ printf "round %s: %-13s calls %s, p50 %s ms, p99 %s ms, server %s µs CPU/request, %s answers, %s not 200 with the whole body\n", $2, $1, $3, $4, $5, $6, $7, $8 }'
    sleep 1
  done
done

echo
echo "| contender | handler calls | p50 ms | p99 ms | server µs CPU/request | peak RSS MiB |"
echo "|---|---|---|---|---|---|"
for contender in "${contenders[@]}"; do
  IFS='|' read -r name port _ <<<"$contender"
  rss=0
  for pid in ${pid_of[$port]}; do
    [ "$pid" = "${pid_of[$p_origin]}" ] && continue # nginx's origin: its own line below
    rss=$((rss + $(hwm_kib "$pid")))
  done
  awk -v name="$name" -v rss="$rss" '
    $1 == name { c[++n] = $3; p50[n] = $4; p99[n] = $5; cpu[n] = $6 }
    function median(a, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return a[int((n + 1) / 2)]
    }
    END {
      printf "| %s | %s | %.1f | %.1f | %.1f | %.1f |\n", name, median(c, n), median(p50, n),
        median(p99, n), median(cpu, n), rss / 1024
    }' "$runs"
done
echo "(nginx-lock: CPU is nginx's master and worker plus its origin's; peak RSS is nginx's"
echo " alone, its origin's is $(awk "BEGIN { printf \"%.1f\", $(hwm_kib "${pid_of[$p_origin]}") / 1024 }") MiB.)"
