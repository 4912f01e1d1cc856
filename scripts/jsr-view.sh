#!/usr/bin/env bash
# Type-checks the package the way JSR serves it: copies exactly the files `deno publish` would upload (its dry-run
# file list) into a temporary directory, without the repository's tsconfig*.json (so Deno's default libs apply:
# no DOM), links node_modules for the npm: dependencies (JSR resolves the same packages from npm), then runs
# `deno check` on every entry point of deno.json's exports. Exit code non-zero on any type error.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
DENO="$ROOT/node_modules/.bin/deno"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/edge-outbox-jsr-view.XXXXXX")"
trap 'rm -rf "$DIR"' EXIT

"$DENO" publish --dry-run --allow-dirty 2>&1 | sed 's/\x1b\[[0-9;]*m//g' |
  sed -n "s|^ *file://$ROOT/\(.*\) ([0-9.]*[KMG]*B)\$|\1|p" >"$DIR.files"
count=$(wc -l <"$DIR.files")
if [ "$count" -eq 0 ]; then
  echo "jsr-view: deno publish --dry-run listed no files" >&2
  exit 1
fi
while IFS= read -r f; do
  case "$f" in tsconfig*.json) continue ;; esac
  mkdir -p "$DIR/$(dirname "$f")"
  cp "$f" "$DIR/$f"
done <"$DIR.files"
rm -f "$DIR.files"
ln -s "$ROOT/node_modules" "$DIR/node_modules"
cd "$DIR"
mapfile -t ENTRIES < <(node -e 'for (const t of Object.values(require("./deno.json").exports)) console.log(t)')
echo "jsr-view: $count published files in $DIR; deno check ${ENTRIES[*]}"
"$DENO" check "${ENTRIES[@]}"
