#!/usr/bin/env bash
# `deno doc --lint` on every entry point. One finding is accepted, by name: `createRelayApp` returns hono's `Hono`
# class (a third-party type users need as is, to mount the app with `app.route()`); deno doc reports it as a
# private-type-ref. Any other finding fails.
set -u
cd "$(dirname "$0")/.."
mapfile -t ENTRY_POINTS < <(node -e 'for (const t of Object.values(require("./deno.json").exports)) console.log(t)')
out="$(NO_COLOR=1 node_modules/.bin/deno doc --lint "${ENTRY_POINTS[@]}" 2>&1)"
errors="$(grep -E '^error\[' <<<"$out" || true)"
accepted="$(grep -cE "^error\[private-type-ref\]: public type 'createRelayApp' references private type 'Hono'" <<<"$out" || true)"
total="$(grep -cE '^error\[' <<<"$out" || true)"
if [ "$total" -ne "$accepted" ]; then
  echo "$out"
  echo "deno doc --lint: $((total - accepted)) finding(s) besides the accepted Hono return type"
  exit 1
fi
echo "deno doc --lint: clean (${accepted} accepted: createRelayApp returns hono's Hono class)"
