#!/usr/bin/env bash
# The whole test run (`npm test`): every step runs even when an earlier one fails, then
# scripts/count-results.mjs sums the real test cases from the reports and prints ONE last line
# `N passed, N failed[, N skipped]`; the exit code is non-zero on any failure or missing report.
#
#   1. typecheck  tsc on the shipped sources (no Node types), on tests/bench/demo (Node types), on the bun test entry
#                 (bun-types), and the dist/ build
#   2. vitest     vitest run                                  -> test-results/vitest.json (JSON reporter)
#   3. bun        bun test test/runtimes/bun.test.ts          -> test-results/bun.xml     (JUnit)
#   4. deno       deno test test/runtimes/deno-*.test.ts      -> test-results/deno.xml    (JUnit)
#   5. publish    deno publish --dry-run --allow-dirty        (JSR checks, including "no slow types")
#   6. jsr-view   scripts/jsr-view.sh: `deno check` of every entry point on exactly the published files, without
#                 the repo's tsconfig (Deno's default libs, as JSR users get them)
#   7. deno doc   deno doc --lint on every entry point (private type references, missing docs)
# README and @example snippets are type-checked under strict + exactOptionalPropertyTypes by a vitest file
# (test/exports-snippets.test.ts), so a broken snippet is a failed test case.
#
# Only the project's own binaries are used (node_modules/.bin): run `npm ci` first.
# Environment: RESULTS_DIR (default test-results); extra runner arguments via VITEST_ARGS, BUN_ARGS, DENO_ARGS.
set -u
cd "$(dirname "$0")/.."

BIN=node_modules/.bin
RESULTS="${RESULTS_DIR:-test-results}"
export DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1

for tool in tsc vitest bun deno; do
  if [ ! -x "$BIN/$tool" ]; then
    echo "scripts/test.sh: $BIN/$tool is missing: run npm ci (with install scripts enabled for bun and deno)" >&2
  fi
done

rm -rf "$RESULTS"
mkdir -p "$RESULTS"
STEPS="$RESULTS/steps.tsv"
: >"$STEPS"

# step NAME KIND REPORT -- COMMAND...: runs COMMAND, records its exit code (never stops the script).
step() {
  local name="$1" kind="$2" report="$3"
  shift 4
  echo
  echo "=== $name: $*"
  "$@"
  local code=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$code" "$kind" "$report" >>"$STEPS"
  echo "=== $name: exit $code"
}

typecheck() {
  local code=0
  echo "--- tsc -p tsconfig.json (src, adapters, mod.ts: Web APIs only, no Node types)"
  "$BIN/tsc" -p tsconfig.json || code=1
  echo "--- tsc -p tsconfig.test.json (tests, bench, demo: with Node types)"
  "$BIN/tsc" -p tsconfig.test.json || code=1
  echo "--- tsc -p tsconfig.exact.json (a user's strict + exactOptionalPropertyTypes: undefined accepted by optional options)"
  "$BIN/tsc" -p tsconfig.exact.json || code=1
  echo "--- tsc -p tsconfig.bun.json (the bun test entry, with bun-types)"
  "$BIN/tsc" -p tsconfig.bun.json || code=1
  echo "--- tsc -p tsconfig.build.json (the npm build into dist/)"
  rm -rf dist
  "$BIN/tsc" -p tsconfig.build.json || code=1
  echo "--- tsc -p tsconfig.cli.json (the edge-outbox command into dist/cli/)"
  "$BIN/tsc" -p tsconfig.cli.json || code=1
  return $code
}

# Deno needs: read/write (fixtures' temp files), env (@libsql/client reads LIBSQL_JS_DEV), sys (its native-binding
# loader calls process.report / os.cpus) and ffi (the napi module node_modules/@libsql/<target>/index.node).
DENO_PERMS=(--allow-read --allow-write --allow-env --allow-sys --allow-ffi)

step typecheck case - -- typecheck
# shellcheck disable=SC2086
step vitest vitest-json vitest.json -- env RESULTS_DIR="$RESULTS" "$BIN/vitest" run --reporter=default --reporter=json \
  --reporter=./scripts/vitest-unhandled-reporter.mjs --outputFile.json="$RESULTS/vitest.json" ${VITEST_ARGS:-}
# shellcheck disable=SC2086
step bun junit bun.xml -- "$BIN/bun" test ./test/runtimes/bun.test.ts --reporter=junit \
  --reporter-outfile="$RESULTS/bun.xml" ${BUN_ARGS:-}
# With type checking: Deno checks the test graph with its own libs and settings (tsc in step 1 does not see that).
# Deno 2.9 has been seen to segfault at exit (exit 139, no report) after every case passed, in @libsql's native
# module (a tokio thread still busy with closed connections; test/runtimes/deno-libsql.test.ts pauses after each
# close, which took it from 7 crashes in 18 runs to 0 in 38). A run killed by a signal is a runtime crash, not a test
# result: it is rerun once, said so in the log. A test failure (exit 1) is never rerun.
deno_tests() {
  # shellcheck disable=SC2086
  "$BIN/deno" test "${DENO_PERMS[@]}" --junit-path="$RESULTS/deno.xml" ${DENO_ARGS:-} \
    test/runtimes/deno-memory.test.ts test/runtimes/deno-libsql.test.ts
  local code=$?
  if [ "$code" -ge 128 ]; then
    echo "deno test was killed by signal $((code - 128)) (a runtime crash, not a test result): running it once more"
    rm -f "$RESULTS/deno.xml"
    # shellcheck disable=SC2086
    "$BIN/deno" test "${DENO_PERMS[@]}" --junit-path="$RESULTS/deno.xml" ${DENO_ARGS:-} \
      test/runtimes/deno-memory.test.ts test/runtimes/deno-libsql.test.ts
    code=$?
  fi
  return $code
}
step deno deno-junit deno.xml -- deno_tests
step "deno publish --dry-run" case - -- "$BIN/deno" publish --dry-run --allow-dirty
step "jsr view: deno check" case - -- scripts/jsr-view.sh
step "deno doc --lint" case - -- scripts/doc-lint.sh

echo
node scripts/count-results.mjs "$RESULTS"
