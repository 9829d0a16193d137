# procs.sh - process handling shared by the bench scripts (sourced; not run). The caller sets
# PROG (its name, for messages) and OUT (its work directory, with a logs/ folder).
#
# Every process started leads its own session; its CPU is read from /proc for the session's
# members and it is stopped by those PIDs, never by name. `cleanup` runs at exit.
declare -A SID=()
members() { pgrep -s "$1" 2>/dev/null | tr '\n' ' '; }
session_ticks() {             # "user kernel" clock ticks summed over the live members of session $1
  local p l u=0 s=0
  for p in $(members "$1"); do
    { read -r l <"/proc/$p/stat"; } 2>/dev/null || continue
    l=${l##*) }; set -- $l; u=$((u + ${12})); s=$((s + ${13}))
  done
  echo "$u $s"
}
start() {                     # name cpu cmd...
  local name=$1 cpu=$2; shift 2
  setsid taskset -c "$cpu" "$@" >"$OUT/logs/$name.log" 2>&1 </dev/null &
  SID[$name]=$!
}
stop() {                      # name: TERM, up to 10 s (valgrind exits slowly), then KILL
  local sid=${SID[$1]:-} i left
  [[ -n $sid ]] || return 0
  kill -TERM "$sid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do [[ -z $(members "$sid") ]] && break; sleep 0.1; done
  left=$(members "$sid"); [[ -n $left ]] && kill -KILL $left 2>/dev/null
  wait "$sid" 2>/dev/null; unset "SID[$1]"
}
ready() {                     # name url: 200 within READY_SECS (default 10), or exit with the log
  local end=$((SECONDS + ${READY_SECS:-10}))
  while ((SECONDS < end)); do
    [[ $(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$2") == 200 ]] && return 0
    [[ -z $(members "${SID[$1]}") ]] && break
    sleep 0.1
  done
  echo "$PROG: $1 does not answer 200 on $2:" >&2; tail -5 "$OUT/logs/$1.log" >&2; exit 1
}
cleanup() {
  trap - EXIT INT TERM
  local n
  for n in "${!SID[@]}"; do stop "$n"; done
  echo "# every process $PROG started is stopped; results in $OUT"
}
trap cleanup EXIT
trap 'echo "$PROG: interrupted" >&2; exit 130' INT TERM
