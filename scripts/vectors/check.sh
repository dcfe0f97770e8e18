#!/usr/bin/env bash
# Checks that vectors/sdk-test-vectors.json is exactly what scripts/vectors/generate.py produces
# now: regenerates into a temporary file and compares. Exit 0 when identical; otherwise prints
# the diff and exits 1 (2 when the generator itself cannot run).
#
# Python: $CMA_SDK_PYTHON (exported by .ci/run), else ~/.cache/cma-venv/bin/python; it needs
# scripts/vectors/requirements.txt installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

python="${CMA_SDK_PYTHON:-$HOME/.cache/cma-venv/bin/python}"
committed="vectors/sdk-test-vectors.json"
if ! "$python" -c 'import sys' 2>/dev/null; then
    echo "vectors: no Python at $python (set CMA_SDK_PYTHON or run bash .ci/run)" >&2
    exit 2
fi

fresh="$(mktemp)"
trap 'rm -f "$fresh" "$fresh.log"' EXIT
if ! "$python" scripts/vectors/generate.py --output "$fresh" 2>"$fresh.log"; then
    cat "$fresh.log" >&2
    rm -f "$fresh.log"
    exit 2
fi
rm -f "$fresh.log"
if ! diff -u "$committed" "$fresh"; then
    echo "vectors: $committed differs from what scripts/vectors/generate.py produces (diff above);" \
        "regenerate with: $python scripts/vectors/generate.py" >&2
    exit 1
fi
echo "vectors: $committed matches the SDK"
