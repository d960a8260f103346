#!/usr/bin/env bash
# Fetch the official AsyncAPI JSON Schemas (the npm package @asyncapi/specs) into
# .venv/asyncapi-specs, for the test that validates `kanin asyncapi`'s documents. Installs
# npm from Debian when it is missing. Safe to run again: does nothing once fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=6.11.1
DIR=.venv/asyncapi-specs
[ -f "$DIR/package/schemas/3.0.0-without-\$id.json" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "asyncapi-specs: installing npm"
  if [ "$(id -u)" -eq 0 ]; then apt-get update -q && apt-get install -y -q npm
  else sudo -n apt-get update -q && sudo -n apt-get install -y -q npm; fi
fi
mkdir -p "$DIR"
(cd "$DIR" && npm pack --silent "@asyncapi/specs@$VERSION" >/dev/null && tar xzf "asyncapi-specs-$VERSION.tgz")
echo "asyncapi-specs: @asyncapi/specs $VERSION in $DIR"
