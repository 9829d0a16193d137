#!/usr/bin/env bash
# cost.sh - what a feature costs per proxied HTTP/1.1 request: pilotfish binaries and configuration
# variants side by side, in one run, against the same nginx backends.
#
#   benches/cost.sh [-b BIN]... [-n REQS] [-d SECS] [-r REPS] [-c CONNS] [-o DIR] [VARIANT...]
#
#   -b BIN      a pilotfish binary; repeat to compare builds   (default target/release/pilotfish)
#   -n REQS     requests counted under callgrind               (default 20000; 0: skip callgrind)
#   -d SECS     seconds per wrk measurement                    (default 10; 0: skip wrk)
#   -r REPS     wrk repeats, every (binary, variant) interleaved (default 3)
#   -c CONNS    wrk connections                                (default 64)
#   -o DIR      where configs, logs and raw results go         (default a new /tmp directory)
#
# Variants (default: all): bare (the listener's default action forwards, as compare.sh),
# rule (one path rule forwards), edits (that rule with two header edits: a request field and a
# response field set), sticky (the group with lb_cookie stickiness; the client sends its cookie),
# sticky_edits (both).
#
# Two figures per (binary, variant):
# - instructions per request: pilotfish under `valgrind --tool=callgrind`, one worker, counters
#   zeroed after a warm-up of 2 000 requests, then REQS requests from `h2load --h1 -c 16`; the
#   whole process's instructions divided by REQS. Deterministic to a fraction of a percent, so
#   it is the figure to quote for a change of a few percent on a shared machine.
# - CPU per request: pilotfish alone on CPU 1 (wrk and the backends on CPU 0), `wrk -c 64` for
#   SECS (-c to change the 64); user and kernel CPU from /proc divided by the requests done; medians of REPS.
#
# Needs Debian packages valgrind wrk nghttp2-client nginx curl (installed by you, never by this
# script). Loopback only; every process it starts leads its own session and is stopped by that
# session's PIDs at exit.
set -uo pipefail
REQS=20000 DUR=10 REPS=3 CONNS=64 OUT="" BINS=()
while getopts ":b:n:d:r:c:o:h" o; do
  case $o in
    b) BINS+=("$OPTARG") ;; n) REQS=$OPTARG ;; d) DUR=$OPTARG ;; r) REPS=$OPTARG ;; c) CONNS=$OPTARG ;;
    o) OUT=$OPTARG ;; h) sed -n '2,30p' "$0"; exit 0 ;; *) sed -n '2,30p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
VARIANTS=("$@")
((${#VARIANTS[@]})) || VARIANTS=(bare rule edits sticky sticky_edits)
here=$(cd "$(dirname "$0")" && pwd)
((${#BINS[@]})) || BINS=("$here/../target/release/pilotfish")
for t in valgrind callgrind_control wrk h2load nginx curl taskset setsid pgrep; do
  command -v "$t" >/dev/null || {
    echo "cost.sh: '$t' is missing: apt-get install valgrind wrk nghttp2-client nginx curl procps" >&2; exit 2; }
done
for b in "${BINS[@]}"; do [[ -x $b ]] || { echo "cost.sh: $b is missing: run 'make build'" >&2; exit 2; }; done
for v in "${VARIANTS[@]}"; do
  case $v in bare | rule | edits | sticky | sticky_edits) ;; *) echo "cost.sh: unknown variant $v" >&2; exit 2 ;; esac
done
(($(nproc) >= 2)) || { echo "cost.sh: needs 2 CPUs" >&2; exit 2; }
[[ -n $OUT ]] || OUT=$(mktemp -d /tmp/pilotfish-cost.XXXXXX)
mkdir -p "$OUT"/{conf,logs,run/backend}
CLK=$(getconf CLK_TCK)
BP1=9111 BP2=9112 PORT=8191
for port in $BP1 $BP2 $PORT; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "cost.sh: port $port is in use" >&2; exit 2; fi
done

PROG=cost.sh
# shellcheck source=procs.sh
. "$here/procs.sh"
READY_SECS=60                 # valgrind starts slowly

temp_paths() { local d=$1; echo "client_body_temp_path $d; proxy_temp_path $d; fastcgi_temp_path $d; uwsgi_temp_path $d; scgi_temp_path $d;"; }
cat >"$OUT/conf/backend.conf" <<C
worker_processes 1; daemon off; pid $OUT/run/backend/nginx.pid; error_log $OUT/run/backend/error.log warn;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 75s; $(temp_paths "$OUT/run/backend")
  server { listen 127.0.0.1:$BP1 backlog=4096; listen 127.0.0.1:$BP2 backlog=4096;
    location / { add_header X-Be \$server_port; return 200 "ok"; } } }
C
config() {                    # variant -> pilotfish.toml on stdout
  local v=$1 action='default_action = { forward = "backends" }' rule="" group=""
  case $v in
    bare) ;;
    *) action='default_action = { fixed_response = { status = 404 } }'
       rule=$'[[rules]]\nname = "all"\nlisteners = ["h1"]\npriority = 1\npath = ["/*"]\nforward = "backends"' ;;
  esac
  case $v in
    edits | sticky_edits) rule+=$'\nrequest_headers = { set = { "x-tenant" = "shop" } }\nresponse_headers = { set = { "cache-control" = "no-store" } }' ;;
  esac
  case $v in sticky | sticky_edits) group='stickiness = { type = "lb_cookie", duration = "1d" }' ;; esac
  cat <<C
[server]
worker_threads = 1
admin_bind = "127.0.0.1:0"

[access_log]
format = "off"

[[listeners]]
name = "h1"
bind = "127.0.0.1:$PORT"
$action

$rule

[[target_groups]]
name = "backends"
algorithm = "round_robin"
targets = ["127.0.0.1:$BP1", "127.0.0.1:$BP2"]
$group
C
}
# The cookie a sticky client sends back (empty for the other variants); a sticky variant
# without one would measure the wrong thing, so that stops the run.
cookie_of() {            # variant
  local c
  c=$(curl -s -o /dev/null -D - "http://127.0.0.1:$PORT/" | awk -F'[ ;]' 'tolower($1) == "set-cookie:" && $2 ~ /^PILOTFISH-/ {print $2; exit}')
  if [[ $1 == sticky* && -z $c ]]; then echo "cost.sh: variant $1 issued no PILOTFISH- cookie" >&2; exit 1; fi
  echo "$c"
}

start backend 0 nginx -c "$OUT/conf/backend.conf" -e "$OUT/run/backend/error.log"
ready backend "http://127.0.0.1:$BP1/"
echo "# cost.sh $(date -Is); kernel $(uname -r); variants ${VARIANTS[*]}; work dir $OUT"
for i in "${!BINS[@]}"; do echo "# binary $i: ${BINS[$i]} ($("${BINS[$i]}" --version 2>/dev/null))"; done
for v in "${VARIANTS[@]}"; do config "$v" >"$OUT/conf/$v.toml"; "${BINS[0]}" check -c "$OUT/conf/$v.toml" >/dev/null || exit 1; done

RAW=$OUT/results.tsv
printf 'binary\tvariant\tmeasure\tvalue\n' >"$RAW"

# ---- instructions per request under callgrind ----
if ((REQS > 0)); then
  for i in "${!BINS[@]}"; do
    for v in "${VARIANTS[@]}"; do
      name=cg-$i-$v
      start "$name" 1 valgrind --tool=callgrind --callgrind-out-file="$OUT/logs/$name.%p.out" \
        "${BINS[$i]}" run -c "$OUT/conf/$v.toml"
      ready "$name" "http://127.0.0.1:$PORT/"
      c=$(cookie_of "$v") || exit 1; hdr=(); [[ -n $c ]] && hdr=(-H "cookie: $c"); echo "$name cookie: ${c:-none}" >>"$OUT/logs/cookies.log"
      taskset -c 0 h2load --h1 -c16 -n2000 "${hdr[@]}" "http://127.0.0.1:$PORT/" >/dev/null 2>&1
      pid=$(pgrep -s "${SID[$name]}" | head -1)
      callgrind_control -z "$pid" >/dev/null 2>&1 || { echo "cost.sh: callgrind_control -z failed for $name" >&2; stop "$name"; continue; }
      out=$(taskset -c 0 h2load --h1 -c16 -n"$REQS" "${hdr[@]}" "http://127.0.0.1:$PORT/" 2>&1)
      ok=$(awk '/^status codes:/{print $3}' <<<"$out")
      callgrind_control -d "$pid" >/dev/null 2>&1
      stop "$name"
      dump=$(ls -t "$OUT"/logs/"$name.$pid".out.* 2>/dev/null | head -1)
      ir=$(awk '/^summary:/{print $2}' "$dump" 2>/dev/null)
      if [[ -z $ir || $ok != "$REQS" ]]; then echo "cost.sh: callgrind run $name failed ($ok of $REQS 2xx)" >&2; continue; fi
      printf '%s\t%s\tinstructions\t%s\n' "$i" "$v" $((ir / REQS)) >>"$RAW"
    done
  done
fi

# ---- CPU per request under wrk ----
if ((DUR > 0)); then
  for ((rep = 0; rep < REPS; rep++)); do
    for i in "${!BINS[@]}"; do
      for v in "${VARIANTS[@]}"; do
        name=wrk-$i-$v
        start "$name" 1 "${BINS[$i]}" run -c "$OUT/conf/$v.toml"
        ready "$name" "http://127.0.0.1:$PORT/"
        c=$(cookie_of "$v") || exit 1; hdr=(); [[ -n $c ]] && hdr=(-H "Cookie: $c")
        taskset -c 0 wrk -t1 -c"$CONNS" -d2s "${hdr[@]}" "http://127.0.0.1:$PORT/" >/dev/null 2>&1
        read -r u0 s0 < <(session_ticks "${SID[$name]}")
        out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DUR}s" "${hdr[@]}" "http://127.0.0.1:$PORT/" 2>&1)
        read -r u1 s1 < <(session_ticks "${SID[$name]}")
        stop "$name"
        n=$(awk '/requests in/{print $1}' <<<"$out")
        bad=$(awk '/Non-2xx/{print $NF}' <<<"$out")
        if [[ -z $n || -n $bad ]]; then echo "cost.sh: wrk run $name failed" >&2; echo "$out" >>"$OUT/logs/failed.log"; continue; fi
        awk -v b="$i" -v v="$v" -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v k="$CLK" -v d="$DUR" 'BEGIN {
          printf "%s\t%s\trps\t%.0f\n%s\t%s\tuser_us\t%.3f\n%s\t%s\tkernel_us\t%.3f\n", b, v, n / d, b, v, u / k / n * 1e6, b, v, s / k / n * 1e6 }' >>"$RAW"
      done
    done
  done
fi

# ---- medians ----
printf '\n%-8s %-14s %14s %12s %10s %10s\n' binary variant "instr/req" rps "user µs" "kernel µs"
awk -F'\t' 'NR > 1 { k = $1 SUBSEP $2 SUBSEP $3; n[k]++; v[k, n[k]] = $4; keys[$1 SUBSEP $2] = 1 }
  function med(k,   i, j, t, m) { m = n[k]; if (!m) return "-"
    for (i = 1; i <= m; i++) a[i] = v[k, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2 }
  END { for (bv in keys) { split(bv, p, SUBSEP)
      printf "%-8s %-14s %14s %12s %10s %10s\n", p[1], p[2], med(bv SUBSEP "instructions"), med(bv SUBSEP "rps"), med(bv SUBSEP "user_us"), med(bv SUBSEP "kernel_us") } }' "$RAW" | sort
