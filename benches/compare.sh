#!/usr/bin/env bash
# compare.sh - pilotfish vs nginx vs HAProxy on loopback, same backends, same load, one run.
#
#   benches/compare.sh [-d SECS] [-r REPS] [-c CONNS] [-w WORKERS]
#
# Rows: HTTP/1.1 keep-alive at 64 and 256 connections (the shared lb-bench.sh, wrk), h2c with
# h2load (64 clients, 1 stream each), HTTPS keep-alive (ECDSA P-256, wrk) and a full TLS handshake
# per request (wrk with Connection: close). Pinning as lb-bench.sh: wrk/h2load and the backends on
# CPU 0, each proxy on CPU 1. Medians of REPS runs; ratios against each peer.
# Needs (Debian packages, installed by you, never silently): wrk nghttp2-client nginx haproxy openssl,
# and target/release/pilotfish (`make build`). Loopback only; everything started is stopped by PID.
set -uo pipefail
DUR=10 REPS=3 CONNS=64 WORKERS=1
while getopts ":d:r:c:w:h" o; do
  case $o in d) DUR=$OPTARG ;; r) REPS=$OPTARG ;; c) CONNS=$OPTARG ;; w) WORKERS=$OPTARG ;; *) sed -n '2,12p' "$0"; exit 0 ;; esac
done
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${PILOTFISH_BIN:-$root/target/release/pilotfish}
LB_BENCH=${LB_BENCH:-$root/../shared/bench/lb-bench.sh}
for t in wrk h2load nginx haproxy openssl taskset; do
  command -v "$t" >/dev/null || { echo "compare.sh: '$t' is missing: apt-get install wrk nghttp2-client nginx haproxy openssl util-linux" >&2; exit 2; }
done
[[ -x $BIN ]] || { echo "compare.sh: $BIN is missing: run 'make build'" >&2; exit 2; }
OUT=$(mktemp -d /tmp/pilotfish-compare.XXXXXX)
echo "# compare.sh $(date -Is) $(nproc) CPUs, workers $WORKERS, ${DUR}s x $REPS; work dir $OUT"

# ---- 1. HTTP/1.1 rows: the reference harness ----
if [[ -x $LB_BENCH || -f $LB_BENCH ]]; then
  PILOTFISH_BIN=$BIN bash "$LB_BENCH" -d "$DUR" -r "$REPS" -w "$WORKERS" -c 64,256 -o "$OUT/h1" -- "$here/pilotfish-candidate.sh" |
    sed -n '/^target/,$p' | tee "$OUT/h1.txt"
else
  echo "# $LB_BENCH not found: skipping the HTTP/1.1 rows"
fi

# ---- 2. h2c, HTTPS, TLS handshakes ----
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT
BP1=9101 BP2=9102 PF_H2=8181 PF_TLS=8182 NG_H2=8281 NG_TLS=8282 HA_H2=8381 HA_TLS=8382
mkdir -p "$OUT/x/t" "$OUT/x/b"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$OUT/x/key.pem" -out "$OUT/x/cert.pem" 2>/dev/null
cat "$OUT/x/cert.pem" "$OUT/x/key.pem" >"$OUT/x/haproxy.pem"
cat >"$OUT/x/backend.conf" <<C
worker_processes 1; daemon off; pid $OUT/x/b/nginx.pid; error_log $OUT/x/b/error.log warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $OUT/x/b; proxy_temp_path $OUT/x/b;
  fastcgi_temp_path $OUT/x/b; uwsgi_temp_path $OUT/x/b; scgi_temp_path $OUT/x/b;
  server { listen 127.0.0.1:$BP1; listen 127.0.0.1:$BP2; location / { return 200 "ok"; } } }
C
cat >"$OUT/x/nginx.conf" <<C
worker_processes $WORKERS; daemon off; pid $OUT/x/t/nginx.pid; error_log $OUT/x/t/error.log warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; client_body_temp_path $OUT/x/t; proxy_temp_path $OUT/x/t;
  fastcgi_temp_path $OUT/x/t; uwsgi_temp_path $OUT/x/t; scgi_temp_path $OUT/x/t;
  upstream be { server 127.0.0.1:$BP1; server 127.0.0.1:$BP2; keepalive 64; }
  server { listen 127.0.0.1:$NG_H2 http2; listen 127.0.0.1:$NG_TLS ssl;
    ssl_certificate $OUT/x/cert.pem; ssl_certificate_key $OUT/x/key.pem; ssl_session_cache off; ssl_session_tickets off;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
cat >"$OUT/x/haproxy.cfg" <<C
global
  nbthread $WORKERS
  maxconn 8000
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend h2
  bind 127.0.0.1:$HA_H2 proto h2
  default_backend be
frontend tls
  bind 127.0.0.1:$HA_TLS ssl crt $OUT/x/haproxy.pem alpn http/1.1 no-tls-tickets
  default_backend be
backend be
  balance roundrobin
  server s1 127.0.0.1:$BP1
  server s2 127.0.0.1:$BP2
C
cat >"$OUT/x/pilotfish.toml" <<C
[server]
worker_threads = $WORKERS
admin_bind = "127.0.0.1:0"
[access_log]
format = "off"
[[certificates]]
name = "c"
cert = "$OUT/x/cert.pem"
key = "$OUT/x/key.pem"
[[listeners]]
name = "h2c"
bind = "127.0.0.1:$PF_H2"
default_action = { forward = "be" }
[[listeners]]
name = "tls"
bind = "127.0.0.1:$PF_TLS"
protocol = "https"
certificates = ["c"]
alpn = ["http/1.1"]
default_action = { forward = "be" }
[[target_groups]]
name = "be"
targets = ["127.0.0.1:$BP1", "127.0.0.1:$BP2"]
C
taskset -c 0 nginx -c "$OUT/x/backend.conf" -e "$OUT/x/b/error.log" & PIDS+=($!)
taskset -c 1 nginx -c "$OUT/x/nginx.conf" -e "$OUT/x/t/error.log" & PIDS+=($!)
taskset -c 1 haproxy -db -f "$OUT/x/haproxy.cfg" >"$OUT/x/haproxy.log" 2>&1 & PIDS+=($!)
taskset -c 1 "$BIN" run -c "$OUT/x/pilotfish.toml" >"$OUT/x/pilotfish.log" 2>&1 & PIDS+=($!)
for port in $BP1 $NG_H2 $HA_H2 $PF_H2 $NG_TLS $HA_TLS $PF_TLS; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

h2c() { taskset -c 0 h2load -c"$CONNS" -m1 -t1 -D"$DUR" "http://127.0.0.1:$1/" 2>&1 | awk '/^finished in/{for(i=1;i<=NF;i++) if($i ~ /req\/s/) print $(i-1)+0}'; }
wrk_rps() { taskset -c 0 wrk -t1 -c"$CONNS" -d"${DUR}s" "$@" 2>&1 | awk '/^Requests\/sec/{print $2+0}'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
declare -A R
for rep in $(seq "$REPS"); do
  for peer in pilotfish nginx haproxy; do
    case $peer in pilotfish) h=$PF_H2 s=$PF_TLS ;; nginx) h=$NG_H2 s=$NG_TLS ;; haproxy) h=$HA_H2 s=$HA_TLS ;; esac
    R[h2c,$peer]+=" $(h2c "$h")"
    R[tls,$peer]+=" $(wrk_rps "https://127.0.0.1:$s/")"
    R[hs,$peer]+=" $(wrk_rps -H 'Connection: close' "https://127.0.0.1:$s/")"
  done
done
printf '\n%-34s %10s %10s %10s %12s %12s\n' "load ($CONNS connections)" pilotfish nginx haproxy "pf/nginx" "pf/haproxy" | tee "$OUT/x.txt"
for row in "h2c:h2c, h2load, 1 stream/client" "tls:HTTPS keep-alive (ECDSA P-256)" "hs:TLS full handshake per request"; do
  k=${row%%:*} name=${row#*:}
  p=$(echo "${R[$k,pilotfish]}" | median) n=$(echo "${R[$k,nginx]}" | median) a=$(echo "${R[$k,haproxy]}" | median)
  awk -v nm="$name" -v p="$p" -v n="$n" -v a="$a" 'BEGIN{printf "%-34s %10.0f %10.0f %10.0f %12.3f %12.3f\n", nm, p, n, a, (n>0?p/n:0), (a>0?p/a:0)}' | tee -a "$OUT/x.txt"
done
echo "# runs: ${R[*]}" >"$OUT/x.runs"
echo "# results in $OUT"
