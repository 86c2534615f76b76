#!/usr/bin/env bash
# A/B of sluice binaries on workload E, server pinned to one core: the
# binaries alternate for ROUNDS rounds, so that a change in the machine's
# load hits both alike. Prints records/s, latency, peak RSS and the
# server's CPU time (user + system) per run.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [...]
#   N=100000 ROUNDS=2 SERVER_CPU=0 LOAD_CPU=1 PIPELINE=bench/pipelines/e.json
#
# Needs the load generator (bench/run.sh builds it, or
# `cd bench && cargo build --release`); LOADGEN overrides its path.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
N="${N:-100000}"
ROUNDS="${ROUNDS:-2}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PIPELINE="${PIPELINE:-$ROOT/bench/pipelines/e.json}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
LOADGEN="${LOADGEN:-$TARGET/bench-tools/release/loadgen}"
[ -x "$LOADGEN" ] || { echo "no load generator at $LOADGEN (run bench/run.sh once or set LOADGEN)" >&2; exit 1; }
[ $# -ge 1 ] || { echo "usage: bench/ab.sh BINARY..." >&2; exit 2; }
EVENTS="$ROOT/bench/data/events-$N.ndjson"
mkdir -p "$ROOT/bench/data"
[ -s "$EVENTS" ] || python3 "$ROOT/../shared/bench/gen_events.py" "$N" > "$EVENTS"
WORK="$(mktemp -d)"
SERVER=""
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; rm -rf "$WORK"' EXIT

one() { # one BINARY
  local bin="$1" dir="$WORK/run"
  rm -rf "$dir"; mkdir -p "$dir"
  export SLUICE_DATA_DIR="$dir/data" SLUICE_LISTEN=127.0.0.1:0 SLUICE_LOG_LEVEL="warn,sluice_server=info"
  export SLUICE_RATE_LIMITS__MANAGEMENT_PER_MIN=1000000
  "$bin" config check > /dev/null 2>&1 || unset SLUICE_RATE_LIMITS__MANAGEMENT_PER_MIN
  local key
  key=$("$bin" tenant create bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
  taskset -c "$SERVER_CPU" "$bin" serve 2> "$dir/server.log" &
  SERVER=$!
  local port=""
  for _ in $(seq 300); do
    port=$(grep -m1 '"listening"' "$dir/server.log" 2>/dev/null | sed 's/.*"port":\([0-9]*\).*/\1/' || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  local base="http://127.0.0.1:$port/api/v1" pipe
  pipe=$(python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); p["destination"]={"type":"file","path":"ab.ndjson"}; print(json.dumps(p))' "$PIPELINE" |
    curl -sf -X POST "$base/pipelines" -H "X-API-Key: $key" -H 'Content-Type: application/json' -d @- |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["id"])')
  taskset -c "$LOAD_CPU" "$LOADGEN" --input "$EVENTS" --url "$base/pipelines/$pipe/batches" --key "$key" > "$dir/result.json"
  local hwm threads
  hwm=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$SERVER/status")
  threads=$(awk '/Threads/ {print $2}' "/proc/$SERVER/status")
  # Server CPU (user + system clock ticks, fields 14 and 15 of stat).
  local ticks
  ticks=$(sed 's/^.*) //' "/proc/$SERVER/stat" | awk '{print $12 + $13}')
  kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=""
  python3 - "$dir/result.json" "$bin" "$hwm" "$threads" "$ticks" "$(getconf CLK_TCK)" <<'PY'
import json, os, sys
r = json.load(open(sys.argv[1]))
cpu = int(sys.argv[5]) / int(sys.argv[6])
print(f"{sys.argv[2]}: {r['records_per_sec']:,.0f} records/s, p50 {r['latency_p50_ms']:.0f} ms, p99 {r['latency_p99_ms']:.0f} ms, "
      f"peak RSS {sys.argv[3]} MB, {sys.argv[4]} threads, server CPU {cpu:.2f} s "
      f"({cpu / r['records'] * 1e6:.1f} us/record), load {os.getloadavg()[0]:.1f}")
PY
}

for round in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    echo -n "round $round  "
    one "$bin"
  done
done
