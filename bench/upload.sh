#!/usr/bin/env bash
# One large NDJSON upload through a running `sluice serve` (embedded
# default, processing paused so only ingestion is measured): accepted MB/s
# and the server's peak RSS, which must stay flat whatever the body size.
#
#   bench/upload.sh [GIB]     (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
GIB="${1:-2}"
SHARED="$(cd .. && pwd)/shared"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
if [ -z "${BENCH_SLUICE_BIN:-}" ]; then cargo build --release -q -p sluice-cli; fi
BIN="${BENCH_SLUICE_BIN:-$CARGO_TARGET_DIR/release/sluice}"
WORK="$(mktemp -d)"
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 "$SHARED/bench/gen_events.py" 100000 > "$WORK/events.ndjson"
CHUNK=$(stat -c %s "$WORK/events.ndjson")
REPEAT=$(( (GIB * 1024 * 1024 * 1024 + CHUNK - 1) / CHUNK ))
TOTAL=$(( CHUNK * REPEAT ))

export SLUICE_DATA_DIR="$WORK/data" SLUICE_LISTEN=127.0.0.1:0 SLUICE_LOG_LEVEL=warn,sluice_server=info
KEY=$("$BIN" tenant create bench --json | sed 's/.*"api_key":"\([^"]*\)".*/\1/')
"$BIN" serve 2> "$WORK/server.log" &
SERVER=$!
for _ in $(seq 100); do grep -q '"listening"' "$WORK/server.log" && break; sleep 0.1; done
PORT=$(grep '"listening"' "$WORK/server.log" | sed 's/.*"port":\([0-9]*\).*/\1/' | head -n1)
BASE="http://127.0.0.1:$PORT/api/v1"
PIPE=$(curl -s -X POST "$BASE/pipelines" -H "X-API-Key: $KEY" -H 'Content-Type: application/json' \
  -d '{"name":"upload","destination":{"type":"file","path":"upload.ndjson"}}' | sed 's/.*"data":{"id":"\([^"]*\)".*/\1/')
curl -s -X POST "$BASE/pipelines/$PIPE/stop" -H "X-API-Key: $KEY" > /dev/null
IDLE_KB=$(awk '/VmRSS/ {print $2}' /proc/$SERVER/status)

START=$(date +%s.%N)
RESULT=$(for _ in $(seq "$REPEAT"); do cat "$WORK/events.ndjson"; done |
  curl -s -X POST "$BASE/pipelines/$PIPE/batches" -H "X-API-Key: $KEY" \
    -H 'Content-Type: application/x-ndjson' -T -)
END=$(date +%s.%N)
PEAK_KB=$(awk '/VmHWM/ {print $2}' /proc/$SERVER/status)
echo "$RESULT" | grep -q '"status":"pending"' || { echo "upload failed: $RESULT" >&2; exit 1; }
RECORDS=$(echo "$RESULT" | sed 's/.*"record_count":\([0-9]*\).*/\1/')
python3 - "$TOTAL" "$RECORDS" "$START" "$END" "$IDLE_KB" "$PEAK_KB" <<'PY'
import sys
total, records, start, end, idle, peak = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
secs = end - start
print(f"upload: {total/2**30:.2f} GiB, {records} records in {secs:.1f} s = {total/secs/1e6:.0f} MB/s ({records/secs:,.0f} records/s), fsync before 202")
print(f"server RSS: idle {idle/1024:.1f} MiB, peak during upload {peak/1024:.1f} MiB")
PY
