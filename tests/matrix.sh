#!/usr/bin/env bash
# The unit, conformance and fast-path tests once against the lowest versions
# pyproject.toml allows and once against the newest releases, each in a virtualenv of
# its own: a wrong lower bound or an upstream change fails here, not at a user's.
# Usage: tests/matrix.sh [lowest|newest]...   (default: both)
set -euo pipefail
cd "$(dirname "$0")/.."

UV=.venv/bin/uv
TESTS=(tests/unit tests/conformance tests/integration/test_fast_paths.py)
SHOWN="aio-pika aiormq pamqp opentelemetry-sdk pydantic typer pytest-asyncio"

for kind in "${@:-lowest newest}"; do
  for one in $kind; do
    venv=".venv-$one"
    [ -x "$venv/bin/python" ] || "$UV" venv -q --python .venv/bin/python "$venv"
    case "$one" in
      lowest) resolution=(--resolution lowest-direct) ;;
      newest) resolution=(--upgrade) ;;
      *) echo "matrix: unknown kind '$one' (lowest or newest)" >&2; exit 2 ;;
    esac
    VIRTUAL_ENV="$venv" "$UV" pip install -q "${resolution[@]}" -e '.[dev]'
    printf '== %s:' "$one"
    for name in $SHOWN; do
      printf ' %s' "$(VIRTUAL_ENV="$venv" "$UV" pip show "$name" 2>/dev/null \
        | awk -v n="$name" '/^Version:/ {print n "=" $2}')"
    done
    echo
    "$venv/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
  done
done
