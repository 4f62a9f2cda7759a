#!/usr/bin/env bash
# Refresh the web app's libraries, pinned here, from the npm registry with their licences: ./vendor.sh
set -euo pipefail
cd "$(dirname "$0")/static/vendor"
fetch() {  # package@version, then pairs: file in the package, name here
  local tmp; tmp=$(mktemp -d); (cd "$tmp" && npm pack -q "$1" >/dev/null && tar -xzf ./*.tgz); shift
  while (($#)); do cp "$tmp/package/$1" "$2"; shift 2; done; rm -rf "$tmp"
}
fetch preact@11.2.0 dist/preact.mjs preact.mjs hooks/dist/hooks.mjs preact-hooks.mjs LICENSE preact.LICENSE
fetch htm@3.1.1 dist/htm.mjs htm.mjs LICENSE htm.LICENSE
