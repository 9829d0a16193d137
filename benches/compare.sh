#!/usr/bin/env bash
# compare.sh - pilotfish vs nginx vs HAProxy on loopback: same backends, same load, one run.
#
#   benches/compare.sh [-d SECS] [-r REPS] [-c CONNS] [-C CONNS] [-w WORKERS] [-o DIR]
#
#   -d SECS     seconds per measurement                       (default 10)
#   -r REPS     repeats of every row, peers interleaved       (default 3)
#   -c LIST     HTTP/1.1 connection counts, comma-separated   (default 64,256)
#   -C N        connections for the h2c and HTTPS rows        (default 64)
#   -w N        worker threads / processes of every proxy     (default 1)
#   -m N        idle keep-alive connections for the memory row (default 4000; 0: skip)
#   -o DIR      where configs, logs and raw results go        (default a new /tmp directory)
#
# Rows: HTTP/1.1 keep-alive (wrk) at each -c count, with the bare backend as the ceiling; h2c with
# prior knowledge (h2load, one stream per client); HTTPS keep-alive (TLS 1.3, ECDSA P-256, wrk); a
# full TLS 1.3 handshake per request (wrk with Connection: close). Every proxy forwards over
# keep-alive HTTP/1.1 to the same two nginx backends (`return 200 "ok"`). Memory, measured first on
# fresh processes: N client connections each make one request and stay open; the proxy's resident
# memory grows by "per conn".
#
# Pinning (-w 1): wrk, h2load and the backends on CPU 0, each proxy on CPU 1; with -w 2 or more
# nothing is pinned. Before each measurement the
# script waits (up to 30 s) for the machine to be quiet. For every measurement it reads, from /proc,
# the user and the kernel CPU time of the proxy (its processes and threads) and divides by the
# requests done: CPU per request, user and kernel apart. "other %" is CPU used during the run by
# processes that are not ours (a run with more than 10 % is marked with '!').
#
# Figures printed are medians over the repeats; the ratios are paired (pilotfish / peer within the
# same repeat, then the median of those), which is what to quote on a shared, noisy machine.
#
# Needs Debian packages wrk nghttp2-client nginx haproxy openssl (installed by you, never by this
# script) and target/release/pilotfish (`make build`). Loopback only. Every process it starts leads
# its own session and is stopped by that session's PIDs at exit.
set -uo pipefail
DUR=10 REPS=3 H1_CONNS=64,256 CONNS=64 WORKERS=1 MEM_CONNS=4000 OUT=""
while getopts ":d:r:c:C:w:m:o:h" o; do
  case $o in
    d) DUR=$OPTARG ;; r) REPS=$OPTARG ;; c) H1_CONNS=$OPTARG ;; C) CONNS=$OPTARG ;;
    w) WORKERS=$OPTARG ;; m) MEM_CONNS=$OPTARG ;; o) OUT=$OPTARG ;; *) sed -n '2,32p' "$0"; exit 0 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
BIN=${PILOTFISH_BIN:-$here/../target/release/pilotfish}
for t in wrk h2load nginx haproxy openssl taskset setsid pgrep curl python3; do
  command -v "$t" >/dev/null || {
    echo "compare.sh: '$t' is missing: apt-get install wrk nghttp2-client nginx haproxy openssl procps curl" >&2; exit 2; }
done
[[ -x $BIN ]] || { echo "compare.sh: $BIN is missing: run 'make build'" >&2; exit 2; }
(( $(nproc) >= 2 )) || { echo "compare.sh: needs 2 CPUs (load and backends on CPU 0, proxies on CPU 1)" >&2; exit 2; }
[[ -n $OUT ]] || OUT=$(mktemp -d /tmp/pilotfish-compare.XXXXXX)
# One worker: load and backends on CPU 0, the proxy alone on CPU 1. More workers: nothing is
# pinned (every process may use every CPU), so a proxy can scale; wrk and h2load use as many
# threads as the proxy has workers.
if ((WORKERS == 1)); then
  LOAD_CPUS=0 PROXY_CPUS=1 LOAD_THREADS=1
else
  LOAD_CPUS=0-$(($(nproc) - 1)) PROXY_CPUS=$LOAD_CPUS LOAD_THREADS=$WORKERS
fi
mkdir -p "$OUT"/{conf,logs,run/backend,run/nginx}
CLK=$(getconf CLK_TCK)

# Ports: backends 9101-9102; each proxy: plain HTTP/1.1, h2c, HTTPS.
BP1=9101 BP2=9102
declare -A H1=([pilotfish]=8181 [nginx]=8281 [haproxy]=8381)
declare -A H2=([pilotfish]=8182 [nginx]=8282 [haproxy]=8382)
declare -A TLS=([pilotfish]=8183 [nginx]=8283 [haproxy]=8383)
for port in $BP1 $BP2 "${H1[@]}" "${H2[@]}" "${TLS[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "compare.sh: port $port is in use" >&2; exit 2; fi
done

# ---- processes: each leads its own session; CPU and stopping go by that session's PIDs ----
PROG=compare.sh
# shellcheck source=procs.sh
. "$here/procs.sh"

busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
quiet() {                     # wait (bounded) until the machine's other load is under 15 % of a CPU
  local end=$((SECONDS + 30)) a b
  while ((SECONDS < end)); do
    a=$(busy_ticks); sleep 1; b=$(busy_ticks)
    (( (b - a) * 100 / CLK < 15 )) && return 0
  done
  echo "# machine still busy after 30 s: measuring anyway" >&2
}
child_ticks() {               # CPU of waited-for children of this shell (wrk, h2load), in ticks
  local t; times >"$OUT/.times"; t=$(tail -1 "$OUT/.times")
  awk -v k="$CLK" '{ split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d\n", (u[1]*60 + u[2] + s[1]*60 + s[2]) * k }' <<<"$t"
}

# ---- certificates and configurations ----
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$OUT/conf/key.pem" -out "$OUT/conf/cert.pem" 2>/dev/null
cat "$OUT/conf/cert.pem" "$OUT/conf/key.pem" >"$OUT/conf/haproxy.pem"
temp_paths() { local d=$1; echo "client_body_temp_path $d; proxy_temp_path $d; fastcgi_temp_path $d; uwsgi_temp_path $d; scgi_temp_path $d;"; }
cat >"$OUT/conf/backend.conf" <<C
worker_processes 1; daemon off; pid $OUT/run/backend/nginx.pid; error_log $OUT/run/backend/error.log warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 75s; $(temp_paths "$OUT/run/backend")
  server { listen 127.0.0.1:$BP1 backlog=4096; listen 127.0.0.1:$BP2 backlog=4096;
    location / { add_header X-Be \$server_port; return 200 "ok"; } } }
C
cat >"$OUT/conf/nginx.conf" <<C
worker_processes $WORKERS; daemon off; pid $OUT/run/nginx/nginx.pid; error_log $OUT/run/nginx/error.log warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 75s; $(temp_paths "$OUT/run/nginx")
  upstream backends { server 127.0.0.1:$BP1; server 127.0.0.1:$BP2; keepalive 64; keepalive_requests 1000000; }
  ssl_certificate $OUT/conf/cert.pem; ssl_certificate_key $OUT/conf/key.pem;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache off; ssl_session_tickets off;
  server { listen 127.0.0.1:${H1[nginx]} backlog=4096; listen 127.0.0.1:${H2[nginx]} http2 backlog=4096;
    listen 127.0.0.1:${TLS[nginx]} ssl backlog=4096;
    location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
cat >"$OUT/conf/haproxy.cfg" <<C
global
  nbthread $WORKERS
  maxconn 8000
  tune.ssl.cachesize 0
  ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  http-reuse always
frontend h1
  bind 127.0.0.1:${H1[haproxy]}
  default_backend be
frontend h2
  bind 127.0.0.1:${H2[haproxy]} proto h2
  default_backend be
frontend tls
  bind 127.0.0.1:${TLS[haproxy]} ssl crt $OUT/conf/haproxy.pem alpn http/1.1
  default_backend be
backend be
  balance roundrobin
  server s1 127.0.0.1:$BP1
  server s2 127.0.0.1:$BP2
C
cat >"$OUT/conf/pilotfish.toml" <<C
[server]
worker_threads = $WORKERS
admin_bind = "127.0.0.1:0"

[access_log]
format = "off"

[[certificates]]
name = "bench"
cert = "$OUT/conf/cert.pem"
key = "$OUT/conf/key.pem"

[[listeners]]
name = "h1"
bind = "127.0.0.1:${H1[pilotfish]}"
default_action = { forward = "backends" }

[[listeners]]
name = "h2c"
bind = "127.0.0.1:${H2[pilotfish]}"
default_action = { forward = "backends" }

[[listeners]]
name = "tls"
bind = "127.0.0.1:${TLS[pilotfish]}"
protocol = "https"
certificates = ["bench"]
alpn = ["http/1.1"]
default_action = { forward = "backends" }

[[target_groups]]
name = "backends"
algorithm = "round_robin"
targets = ["127.0.0.1:$BP1", "127.0.0.1:$BP2"]
C

start backend "$LOAD_CPUS" nginx -c "$OUT/conf/backend.conf" -e "$OUT/run/backend/error.log"
start nginx "$PROXY_CPUS" nginx -c "$OUT/conf/nginx.conf" -e "$OUT/run/nginx/error.log"
start haproxy "$PROXY_CPUS" haproxy -db -f "$OUT/conf/haproxy.cfg"
start pilotfish "$PROXY_CPUS" "$BIN" run -c "$OUT/conf/pilotfish.toml"
ready backend "http://127.0.0.1:$BP1/"
for p in pilotfish nginx haproxy; do
  ready "$p" "http://127.0.0.1:${H1[$p]}/"; ready "$p" "https://127.0.0.1:${TLS[$p]}/"
done
echo "# compare.sh $(date -Is); $(nproc) CPUs, kernel $(uname -r); $(nginx -v 2>&1 | sed 's/.*\///') nginx," \
  "$(haproxy -v | awk 'NR==1{print $3}') HAProxy, $("$BIN" --version 2>/dev/null | awk '{print $2}') pilotfish;" \
  "workers $WORKERS; ${DUR}s x $REPS; work dir $OUT"

# ---- one measurement: prints "rps p99_ms errors user_us_per_req kernel_us_per_req other_pct" ----
measure() {                   # peer tool args...
  local peer=$1 tool=$2; shift 2
  local out n rps p99 err p0 q0 p1 q1 be0=0 be1=0 b0 b1 c0 c1
  quiet
  read -r p0 q0 < <(session_ticks "${SID[$peer]}")
  [[ $peer != backend ]] && be0=$(session_ticks "${SID[backend]}")
  b0=$(busy_ticks); child_ticks >"$OUT/.c0"; c0=$(<"$OUT/.c0")
  if [[ $tool == wrk ]]; then
    out=$(taskset -c "$LOAD_CPUS" wrk -t"$LOAD_THREADS" -d"${DUR}s" --latency "$@" 2>&1)
  else
    out=$(taskset -c "$LOAD_CPUS" h2load -t"$LOAD_THREADS" -m1 -D"$DUR" "$@" 2>&1)
  fi
  read -r p1 q1 < <(session_ticks "${SID[$peer]}")
  [[ $peer != backend ]] && be1=$(session_ticks "${SID[backend]}")
  b1=$(busy_ticks); child_ticks >"$OUT/.c1"; c1=$(<"$OUT/.c1")
  if [[ $tool == wrk ]]; then
    n=$(awk '/requests in/{print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
    p99=$(awk '$1=="99%"{v=$2; if (v ~ /us$/) v=v/1000; else if (v ~ /ms$/) v=v+0; else if (v ~ /s$/) v=v*1000; print v}' <<<"$out")
    err=$(awk '/Non-2xx/{e+=$NF} /Socket errors/{gsub(/,/,""); e+=$4+$6+$8+$10} END{print e+0}' <<<"$out")
  else
    n=$(awk '/^requests:/{print $8}' <<<"$out")
    rps=$(awk '/^finished in/{for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) print $(i-1)+0}' <<<"$out")
    p99="-"
    err=$(awk '/^requests:/{print $10+$12+$14}' <<<"$out")
  fi
  if [[ -z $n || $n -le 0 ]]; then
    echo "0 - 1 0 0 0"; { echo "== $peer $tool $*"; echo "$out"; } >>"$OUT/logs/failed-runs.log"; return
  fi
  # "other": busy CPU of the machine minus ours (the peer, the backends, the load tool).
  awk -v n="$n" -v r="$rps" -v p="$p99" -v e="$err" -v u=$((p1 - p0)) -v s=$((q1 - q0)) -v k="$CLK" \
      -v box=$((b1 - b0)) -v tool=$((c1 - c0)) -v be="$(( ${be1% *} + ${be1#* } - ${be0% *} - ${be0#* } ))" -v d="$DUR" \
    'BEGIN { other = box - (u + s) - tool - be; if (other < 0) other = 0
             printf "%.0f %s %d %.2f %.2f %.0f\n", r, p, e, u / k / n * 1e6, s / k / n * 1e6, other / k / d * 100 }'
}

# ---- memory per idle keep-alive client connection ----
# First, while every proxy is fresh (pools and caches grown by the load rows would hide it):
# MEM_CONNS client connections each send one request, read the response and stay open; the
# proxy's resident memory (its processes summed, from /proc) before and after, divided by them.
rss_kb() { local p t=0 v; for p in $(members "$1"); do v=$(awk '/^VmRSS:/{print $2}' "/proc/$p/status" 2>/dev/null); t=$((t + ${v:-0})); done; echo "$t"; }
idle_clients() {              # port count: holds the connections open until stdin closes
  python3 -c '
import socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n")
    got = b""
    while not (b"\r\n\r\n" in got and got.endswith(b"ok")):
        chunk = s.recv(4096)
        if not chunk:
            sys.exit("connection closed")
        got += chunk
    held.append(s)
print("open", flush=True)
sys.stdin.read()
' "$1" "$2"
}
if (( MEM_CONNS > 0 )); then
  ulimit -n $((MEM_CONNS + 1024)) 2>/dev/null
  printf '\n%-40s %12s %12s %12s\n' "idle keep-alive connections: $MEM_CONNS" "RSS before" "RSS after" "per conn" | tee -a "$OUT/memory.txt"
  for peer in pilotfish nginx haproxy; do
    quiet
    before=$(rss_kb "${SID[$peer]}")
    coproc HOLD { idle_clients "${H1[$peer]}" "$MEM_CONNS"; }
    read -r -t 120 ready <&"${HOLD[0]}"
    after=$(rss_kb "${SID[$peer]}")
    exec {HOLD[1]}>&-; wait "$HOLD_PID" 2>/dev/null
    if [[ $ready == open ]]; then
      awk -v p="$peer" -v b="$before" -v a="$after" -v n="$MEM_CONNS" \
        'BEGIN { printf "%-40s %9.1f MiB %9.1f MiB %9.2f KB\n", p, b / 1024, a / 1024, (a - b) * 1.024 / n }' | tee -a "$OUT/memory.txt"
    else
      echo "$peer: the $MEM_CONNS connections could not all be opened" | tee -a "$OUT/memory.txt"
    fi
  done
fi

# ---- the rows ----
ROWS=()
IFS=, read -ra h1c <<<"$H1_CONNS"
for c in "${h1c[@]}"; do ROWS+=("h1-$c"); done
ROWS+=(h2c tls hs)
row_name() {
  case $1 in
    h1-*) echo "HTTP/1.1 keep-alive, ${1#h1-} conns" ;;
    h2c) echo "h2c, $CONNS clients x 1 stream" ;;
    tls) echo "HTTPS keep-alive, $CONNS conns" ;;
    hs) echo "TLS handshake per request, $CONNS conns" ;;
  esac
}
run_one() {                   # row peer
  local row=$1 peer=$2
  case $row in
    h1-*) if [[ $peer == backend ]]; then measure backend wrk -c"${row#h1-}" "http://127.0.0.1:$BP1/"
          else measure "$peer" wrk -c"${row#h1-}" "http://127.0.0.1:${H1[$peer]}/"; fi ;;
    h2c) measure "$peer" h2load -c"$CONNS" "http://127.0.0.1:${H2[$peer]}/" ;;
    tls) measure "$peer" wrk -c"$CONNS" "https://127.0.0.1:${TLS[$peer]}/" ;;
    hs) measure "$peer" wrk -c"$CONNS" -H 'Connection: close' "https://127.0.0.1:${TLS[$peer]}/" ;;
  esac
}
RAW=$OUT/runs.tsv
printf 'row\tpeer\trep\trps\tp99_ms\terrors\tuser_us\tkernel_us\tother_pct\n' >"$RAW"
PEERS=(pilotfish nginx haproxy)
for rep in $(seq "$REPS"); do
  # Rotate the peers' order each repeat so that none is always first after a quiet wait.
  order=("${PEERS[@]:$(( (rep - 1) % 3 ))}" "${PEERS[@]:0:$(( (rep - 1) % 3 ))}")
  for row in "${ROWS[@]}"; do
    list=("${order[@]}"); [[ $row == h1-* ]] && list=(backend "${order[@]}")
    for peer in "${list[@]}"; do
      read -r rps p99 err u k other < <(run_one "$row" "$peer")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$row" "$peer" "$rep" "$rps" "$p99" "$err" "$u" "$k" "$other" >>"$RAW"
      printf '# %-40s %-9s rep %d: %8s rps  p99 %6s ms  user %5s us  kernel %5s us  other %s%%\n' \
        "$(row_name "$row")" "$peer" "$rep" "$rps" "$p99" "$u" "$k" "$other" >&2
    done
  done
done

# ---- the table: medians, then paired ratios ----
{
  printf '\n%-40s %-9s %9s %8s %7s %9s %9s %7s\n' "load" peer "rps" "p99 ms" errors "user us" "kern us" "other%"
  for row in "${ROWS[@]}"; do
    for peer in backend "${PEERS[@]}"; do
      awk -F'\t' -v r="$row" -v p="$peer" -v name="$(row_name "$row")" '
        function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                       return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
        $1 == r && $2 == p { n++; rps[n] = $4; p99[n] = ($5 == "-" ? -1 : $5); e += $6; u[n] = $7; k[n] = $8; if ($9 > 10) dirty = "!"; if ($9 > o) o = $9 }
        END { if (!n) exit; q = med(p99, n); printf "%-40s %-9s %9.0f %8s %7d %9.2f %9.2f %6.0f%s\n", name, p, med(rps, n), (q < 0 ? "-" : sprintf("%.2f", q)), e, med(u, n), med(k, n), o, dirty }' "$RAW"
    done
  done
  printf '\n%-40s %12s %12s %14s %14s\n' "paired ratios (median over repeats)" "rps/nginx" "rps/haproxy" "user/nginx" "user/haproxy"
  for row in "${ROWS[@]}"; do
    awk -F'\t' -v r="$row" -v name="$(row_name "$row")" '
      function med(a, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
                                     return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
      $1 == r { rps[$2, $3] = $4; u[$2, $3] = $7; if ($3 > reps) reps = $3 }
      END { for (i = 1; i <= reps; i++) {
              if (rps["nginx", i] > 0) a[++na] = rps["pilotfish", i] / rps["nginx", i]
              if (rps["haproxy", i] > 0) b[++nb] = rps["pilotfish", i] / rps["haproxy", i]
              if (u["nginx", i] > 0) c[++nc] = u["pilotfish", i] / u["nginx", i]
              if (u["haproxy", i] > 0) d[++nd] = u["pilotfish", i] / u["haproxy", i] }
            printf "%-40s %11.2fx %11.2fx %13.2fx %13.2fx\n", name, med(a, na), med(b, nb), med(c, nc), med(d, nd) }' "$RAW"
  done
  [[ -f $OUT/memory.txt ]] && cat "$OUT/memory.txt"
} | tee "$OUT/table.txt"

