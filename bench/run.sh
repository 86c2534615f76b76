#!/usr/bin/env bash
# Sluice benchmarks (issue 8): workloads E I R J L M against Sluice and its
# peers (`limit`, `node`), one table on stdout and bench/results/latest.json.
#
#   bench/run.sh                 # every workload
#   bench/run.sh E L             # some of them
#
# Environment (defaults in brackets):
#   RECORDS [1000000]      records for E, I, R, J (standard events, ~490 B each)
#   NODE_RECORDS [200000]  records for the node peer (it is slow; rate is per second anyway)
#   L_RATE [50] L_SECS [60] L_BATCH [100]   the latency workload
#   UPLOAD_GIB [2]         the upload of workload M
#   SERVER_CPU [0] LOAD_CPU [1]             cores for the one-core runs
#   CARGO_TARGET_DIR [./target]             where the release builds go
#   BENCH_SLUICE_BIN                              use this sluice binary instead of building one
#
# What runs where: `sluice serve` (embedded default: SQLite, local payloads,
# fsync before 202) in a fresh temporary data dir, pinned with taskset to
# SERVER_CPU for the one-core runs and unpinned for "2 cores"; the load
# generator (bench/loadgen) on LOAD_CPU POSTs NDJSON batches of 1,000
# records from 4 concurrent connections and reads delivery times from the
# batch API (see bench/loadgen/src/main.rs). Needs python3, curl, taskset,
# node/npm and a Redis on 127.0.0.1:6379 for the node peer.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="$ROOT/../shared"
GEN="$SHARED/bench/gen_events.py"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
RECORDS="${RECORDS:-1000000}"
NODE_RECORDS="${NODE_RECORDS:-200000}"
L_RATE="${L_RATE:-50}"
L_SECS="${L_SECS:-60}"
L_BATCH="${L_BATCH:-100}"
UPLOAD_GIB="${UPLOAD_GIB:-2}"
SERVER_CPU="${SERVER_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
WORKLOADS=("$@")
[ ${#WORKLOADS[@]} -gt 0 ] || WORKLOADS=(E I R J L M)
for w in "${WORKLOADS[@]}"; do
  case "$w" in E|I|R|J|L|M) ;; *) echo "unknown workload $w (E I R J L M)" >&2; exit 2 ;; esac
done
wants() { local w; for w in "${WORKLOADS[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

[ -f "$GEN" ] || { echo "no event generator at $GEN" >&2; exit 1; }
WORK="$(mktemp -d)"
ROWS="$WORK/rows.ndjson"
: > "$ROWS"
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { echo "== $*" >&2; }

# ---------------------------------------------------------------- build
log "build (release, $CARGO_TARGET_DIR)"
if [ -z "${BENCH_SLUICE_BIN:-}" ]; then (cd "$ROOT" && cargo build --release -q -p sluice-cli); fi
(cd "$ROOT/bench" && CARGO_TARGET_DIR="$CARGO_TARGET_DIR/bench-tools" cargo build --release -q)
SLUICE="${BENCH_SLUICE_BIN:-$CARGO_TARGET_DIR/release/sluice}"
LOADGEN="$CARGO_TARGET_DIR/bench-tools/release/loadgen"
LIMIT="$CARGO_TARGET_DIR/bench-tools/release/limit"

# ---------------------------------------------------------------- data
DATA="$ROOT/bench/data"
mkdir -p "$DATA"
events() { # events N -> path of N standard events (cached)
  local f="$DATA/events-$1.ndjson"
  if [ ! -s "$f" ]; then python3 "$GEN" "$1" > "$f.tmp" && mv "$f.tmp" "$f"; fi
  echo "$f"
}
EVENTS="$(events "$RECORDS")"

# ---------------------------------------------------------------- helpers
rss_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# row KEY=VALUE... : one result row (numbers or strings)
row() { python3 - "$@" >> "$ROWS" <<'PY'
import json, sys
r = {}
for kv in sys.argv[1:]:
    k, _, v = kv.partition("=")
    try:
        r[k] = float(v) if v not in ("", "null", "None") else None
    except ValueError:
        r[k] = v
print(json.dumps(r))
PY
}
# jget FILE KEY: a field of a loadgen result
jget() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"; }

# start_sluice NAME CPUS: fresh data dir, tenant, server; sets SERVER BASE KEY
start_sluice() {
  local name="$1" cpus="$2" dir="$WORK/$1"
  mkdir -p "$dir"
  sync  # whatever earlier workloads left is on disk before this one starts
  export SLUICE_DATA_DIR="$dir/data" SLUICE_LISTEN=127.0.0.1:0 SLUICE_LOG_LEVEL="warn,sluice_server=info"
  # The load generator polls the batch list a few times a second, which the
  # default management rate limit (per key and minute) would refuse; the
  # rate limits are not what is measured. (Older binaries lack the key.)
  export SLUICE_RATE_LIMITS__MANAGEMENT_PER_MIN=1000000
  "$SLUICE" config check > /dev/null 2>&1 || unset SLUICE_RATE_LIMITS__MANAGEMENT_PER_MIN
  KEY=$("$SLUICE" tenant create bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
  if [ "$cpus" = all ]; then
    "$SLUICE" serve 2> "$dir/server.log" &
  else
    taskset -c "$cpus" "$SLUICE" serve 2> "$dir/server.log" &
  fi
  SERVER=$!
  PIDS+=("$SERVER")
  local port=""
  for _ in $(seq 300); do
    port=$(grep -m1 '"listening"' "$dir/server.log" 2>/dev/null | sed 's/.*"port":\([0-9]*\).*/\1/' || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "sluice did not start:" >&2; cat "$dir/server.log" >&2; exit 1; }
  BASE="http://127.0.0.1:$port/api/v1"
}
# stop_sluice: stop the server and delete its data dir, so that the next
# workload's fsyncs do not wait for this one's files to be written back.
stop_sluice() {
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -rf "$SLUICE_DATA_DIR"
}

# pipeline JSON: create it; prints its id
pipeline() {
  curl -sf -X POST "$BASE/pipelines" -H "X-API-Key: $KEY" -H 'Content-Type: application/json' -d "$1" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["id"])'
}

# load CPUS OUT ARGS...: run the load generator
load() {
  local cpus="$1" out="$2"; shift 2
  if [ "$cpus" = all ]; then "$LOADGEN" "$@" > "$out"; else taskset -c "$cpus" "$LOADGEN" "$@" > "$out"; fi
}

# The pipelines (bench/pipelines/*.json), with a file destination added.
PIPES="$ROOT/bench/pipelines"
with_file() { # with_file PIPELINE.json OUTPUT-PATH
  python3 -c 'import json,sys; p=json.load(open(sys.argv[1])); p["destination"]={"type":"file","path":sys.argv[2]}; print(json.dumps(p))' "$1" "$2"
}

# sluice_run WORKLOAD SYSTEM CPUS PIPELINE-FILE [stopped]: one throughput run
sluice_run() {
  local w="$1" system="$2" cpus="$3" file="$4" mode="${5:-}"
  local loadcpus="$LOAD_CPU"; [ "$cpus" = all ] && loadcpus=all
  log "$w: sluice ($system), $RECORDS records"
  start_sluice "$w-$system" "$cpus"
  local pipe
  pipe=$(pipeline "$(with_file "$file" "$w.ndjson")")
  local wait=sluice
  if [ "$mode" = stopped ]; then
    curl -sf -X POST "$BASE/pipelines/$pipe/stop" -H "X-API-Key: $KEY" > /dev/null
    wait=none
  fi
  sleep 1
  local idle; idle=$(rss_kb "$SERVER" VmRSS)
  local out="$WORK/$w-$system.json"
  load "$loadcpus" "$out" --input "$EVENTS" --url "$BASE/pipelines/$pipe/batches" --key "$KEY" \
    --batch 1000 --clients 4 --wait "$wait"
  local peak; peak=$(rss_kb "$SERVER" VmHWM)
  stop_sluice
  local p50 p99
  if [ "$wait" = none ]; then p50=$(jget "$out" post_p50_ms); p99=$(jget "$out" post_p99_ms)
  else p50=$(jget "$out" latency_p50_ms); p99=$(jget "$out" latency_p99_ms); fi
  row workload="$w" system="sluice $system" records="$(jget "$out" records)" \
    records_per_sec="$(jget "$out" records_per_sec)" mb_per_sec="$(jget "$out" mb_per_sec)" \
    p50_ms="$p50" p99_ms="$p99" peak_rss_mb="$(echo "$peak" | awk '{printf "%.1f", $1/1024}')" \
    idle_rss_mb="$(echo "$idle" | awk '{printf "%.1f", $1/1024}')" \
    failed="$(jget "$out" failed_records)"
  cat "$out" >&2
}

limit_run() {
  log "E: limit (one core), $RECORDS records"
  sync
  local out="$WORK/limit.json"
  taskset -c "$SERVER_CPU" "$LIMIT" "$EVENTS" "$WORK/limit-out.ndjson" > "$out"
  rm -f "$WORK/limit-out.ndjson"
  row workload=E system=limit records="$(jget "$out" records)" records_per_sec="$(jget "$out" records_per_sec)" \
    mb_per_sec="$(jget "$out" mb_per_sec)" peak_rss_mb="$(python3 -c "print(round($(jget "$out" peak_rss_kb)/1024,1))")"
  cat "$out" >&2
}

node_run() {
  local dir="$ROOT/bench/peers/node"
  if ! redis-cli -p 6379 ping > /dev/null 2>&1; then
    echo "   (no Redis on 127.0.0.1:6379: the node peer is skipped)" >&2; return 0
  fi
  log "E: node peer (one core), $NODE_RECORDS records"
  sync
  if [ ! -d "$dir/node_modules" ]; then
    # npm ci refuses this lock file on some npm versions (optional native
    # packages of other platforms); npm install with the lock installs the
    # same pinned versions.
    (cd "$dir" && { npm ci --no-audit --no-fund > /dev/null 2>&1 || npm install --no-audit --no-fund > /dev/null; })
  fi
  local events; events="$(events "$NODE_RECORDS")"
  local queue="sluice-bench-$$"
  local nd="$WORK/node"; mkdir -p "$nd"
  (cd "$dir" && QUEUE="$queue" PORT=0 exec taskset -c "$SERVER_CPU" node server.js > "$nd/server.out" 2> "$nd/server.err") &
  local server=$!; PIDS+=("$server")
  (cd "$dir" && QUEUE="$queue" STATS_PORT=0 OUTPUT="$nd/out.ndjson" exec taskset -c "$SERVER_CPU" node worker.js > "$nd/worker.out" 2> "$nd/worker.err") &
  local worker=$!; PIDS+=("$worker")
  local port="" sport=""
  for _ in $(seq 300); do
    port=$(sed -n 's/.*"port":\([0-9]*\).*/\1/p' "$nd/server.out" 2>/dev/null | head -n1)
    sport=$(sed -n 's/.*"stats_port":\([0-9]*\).*/\1/p' "$nd/worker.out" 2>/dev/null | head -n1)
    [ -n "$port" ] && [ -n "$sport" ] && break
    sleep 0.1
  done
  [ -n "$port" ] && [ -n "$sport" ] || { echo "node peer did not start" >&2; cat "$nd"/*.err >&2; return 1; }
  local out="$WORK/node.json"
  load "$LOAD_CPU" "$out" --input "$events" --url "http://127.0.0.1:$port/batches" --batch 1000 --clients 4 \
    --wait node --stats "http://127.0.0.1:$sport/"
  local peak=$(( $(rss_kb "$server" VmHWM) + $(rss_kb "$worker" VmHWM) ))
  kill -TERM "$server" "$worker" 2>/dev/null || true
  wait "$server" "$worker" 2>/dev/null || true
  redis-cli -p 6379 --scan --pattern "bull:$queue:*" | xargs -r redis-cli -p 6379 del > /dev/null || true
  rm -f "$nd/out.ndjson"
  row workload=E system="node 1 core" records="$(jget "$out" records)" records_per_sec="$(jget "$out" records_per_sec)" \
    mb_per_sec="$(jget "$out" mb_per_sec)" peak_rss_mb="$(echo "$peak" | awk '{printf "%.1f", $1/1024}')"
  cat "$out" >&2
}

latency_run() {
  log "L: sluice, $L_BATCH-record batches at $L_RATE/s for $L_SECS s"
  start_sluice L "$SERVER_CPU"
  local pipe
  pipe=$(pipeline "$(with_file "$PIPES/e.json" l.ndjson)")
  sleep 1
  local out="$WORK/L.json"
  local events; events="$(events 200000)"
  load "$LOAD_CPU" "$out" --input "$events" --url "$BASE/pipelines/$pipe/batches" --key "$KEY" \
    --batch "$L_BATCH" --rate "$L_RATE" --duration "$L_SECS" --wait sluice
  local peak; peak=$(rss_kb "$SERVER" VmHWM)
  stop_sluice
  row workload=L system="sluice 1 core" records="$(jget "$out" records)" \
    records_per_sec="$(jget "$out" records_per_sec)" mb_per_sec="$(jget "$out" mb_per_sec)" \
    p50_ms="$(jget "$out" latency_p50_ms)" p99_ms="$(jget "$out" latency_p99_ms)" \
    peak_rss_mb="$(echo "$peak" | awk '{printf "%.1f", $1/1024}')"
  cat "$out" >&2
}

upload_run() {
  log "M: one ${UPLOAD_GIB} GiB upload (bench/upload.sh)"
  sync
  local out="$WORK/upload.txt"
  "$ROOT/bench/upload.sh" "$UPLOAD_GIB" | tee "$out" >&2
  python3 - "$out" >> "$ROWS" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"= (\d+) MB/s \(([\d,]+) records/s\)", text)
p = re.search(r"idle ([\d.]+) MiB, peak during upload ([\d.]+) MiB", text)
print(json.dumps({"workload": "M", "system": "sluice, 2 GiB upload", "mb_per_sec": float(m.group(1)) if m else None,
                  "records_per_sec": float(m.group(2).replace(",", "")) if m else None,
                  "idle_rss_mb": float(p.group(1)) if p else None, "peak_rss_mb": float(p.group(2)) if p else None}))
PY
}

# ---------------------------------------------------------------- runs
if wants E; then
  limit_run
  sluice_run E "1 core" "$SERVER_CPU" "$PIPES/e.json"
  sluice_run E "2 cores" all "$PIPES/e.json"
  node_run
elif wants M; then
  sluice_run E "1 core" "$SERVER_CPU" "$PIPES/e.json"
fi
wants I && sluice_run I "1 core" "$SERVER_CPU" "$PIPES/i.json" stopped
wants R && sluice_run R "1 core" "$SERVER_CPU" "$PIPES/r.json"
wants J && sluice_run J "1 core" "$SERVER_CPU" "$PIPES/j.json"
wants L && latency_run
wants M && upload_run

# ---------------------------------------------------------------- report
mkdir -p "$ROOT/bench/results"
python3 - "$ROWS" "$ROOT/bench/results/latest.json" "${WORKLOADS[*]}" "$RECORDS" "$SLUICE" <<'PY'
import json, os, platform, subprocess, sys, time
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def rate(system):
    return next((r["records_per_sec"] for r in rows if r["workload"] == "E" and r["system"] == system), None)
limit, node = rate("limit"), rate("node 1 core")
for r in rows:
    if r["workload"] == "E" and r.get("records_per_sec"):
        r["vs_limit"] = round(r["records_per_sec"] / limit, 2) if limit and r["system"] != "limit" else None
        r["vs_node"] = round(r["records_per_sec"] / node, 1) if node and r["system"] != "node 1 core" else None
# M summary rows from the E run and the upload.
e1 = next((r for r in rows if r["workload"] == "E" and r["system"] == "sluice 1 core"), None)
if e1 and "M" in sys.argv[3].split():
    rows.append({"workload": "M", "system": "sluice, idle", "peak_rss_mb": e1.get("idle_rss_mb")})
    rows.append({"workload": "M", "system": "sluice, under E (1 core)", "peak_rss_mb": e1.get("peak_rss_mb")})
def cell(v, fmt):
    return "-" if v is None else fmt.format(v)
head = ["workload", "system", "records/s", "MB/s", "p50 ms", "p99 ms", "peak RSS MB", "vs limit", "vs node"]
lines = [head]
for r in rows:
    lines.append([r["workload"], r["system"], cell(r.get("records_per_sec"), "{:,.0f}"), cell(r.get("mb_per_sec"), "{:.1f}"),
                  cell(r.get("p50_ms"), "{:.0f}"), cell(r.get("p99_ms"), "{:.0f}"), cell(r.get("peak_rss_mb"), "{:.1f}"),
                  cell(r.get("vs_limit"), "{:.2f}"), cell(r.get("vs_node"), "{:.1f}x")])
widths = [max(len(l[i]) for l in lines) for i in range(len(head))]
out = []
for j, l in enumerate(lines):
    out.append("| " + " | ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(l)) + " |")
    if j == 0:
        out.append("|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")
print("\n".join(out))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = ""
doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit, "cpu": cpu, "nproc": os.cpu_count(),
       "load_avg_at_end": list(os.getloadavg()), "records": int(sys.argv[4]), "workloads": sys.argv[3].split(),
       "sluice_binary": sys.argv[5], "rows": rows}
with open(sys.argv[2], "w") as f:
    json.dump(doc, f, indent=2)
print(f"\n{cpu}, {os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.2f}; JSON: bench/results/latest.json")
PY
