#!/usr/bin/env bash
# Diagnostic (not part of npm test): runs the sqld-backed test files N times; a run that lasts past STALL_S seconds
# gets sqld's threads dumped (top -H, gdb "thread apply all bt") next to sqld's debug log, in OUT_DIR.
#   scripts/sqld-watchdog.sh [runs] [vitest args…]     e.g. scripts/sqld-watchdog.sh 20
# Env: OUT_DIR (default /tmp/sqld-watchdog), STALL_S (150), EDGE_OUTBOX_SQLD_WAL (sqlite | libsql-wal: force one WAL).
set -u
cd "$(dirname "$0")/.."
runs="${1:-10}"; shift || true
files=("$@"); [ ${#files[@]} -eq 0 ] && files=(test/libsql-http.test.ts test/workerd-conformance.test.ts)
OUT_DIR="${OUT_DIR:-/tmp/sqld-watchdog}"; STALL_S="${STALL_S:-150}"
mkdir -p "$OUT_DIR/logs"
for i in $(seq 1 "$runs"); do
  rm -f "$OUT_DIR"/logs/*.log
  start=$(date +%s)
  EDGE_OUTBOX_SQLD_LOG_DIR="$OUT_DIR/logs" RUST_LOG="${RUST_LOG:-libsql_server::connection=debug}" \
    timeout 600 node_modules/.bin/vitest run "${files[@]}" >"$OUT_DIR/run.log" 2>&1 &
  vitest=$!
  dumped=0
  while kill -0 "$vitest" 2>/dev/null; do
    sleep 5
    if [ $(( $(date +%s) - start )) -gt "$STALL_S" ] && [ "$dumped" -eq 0 ]; then
      dumped=1
      echo "run $i: past ${STALL_S} s, dumping sqld"
      for pid in $(pgrep -f 'linux-x64/sqld'); do
        top -b -n1 -H -p "$pid" | head -25 >"$OUT_DIR/stall-$i-top-$pid.txt"
        gdb -p "$pid" -batch -ex "thread apply all bt" >"$OUT_DIR/stall-$i-gdb-$pid.txt" 2>&1
      done
      cp -r "$OUT_DIR/logs" "$OUT_DIR/stall-$i-logs"
    fi
  done
  echo "run $i: $(( $(date +%s) - start )) s, $(grep -E 'Tests ' "$OUT_DIR/run.log" | sed 's/\x1b\[[0-9;]*m//g' | tr -s ' ')"
  if grep -q "failed" "$OUT_DIR/run.log"; then cp "$OUT_DIR/run.log" "$OUT_DIR/fail-$i.log"; cp -r "$OUT_DIR/logs" "$OUT_DIR/fail-$i-logs"; fi
done
