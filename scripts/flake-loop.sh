#!/usr/bin/env bash
# Runs every test binary of the workspace many times and reports each one that ever failed, to
# find tests that pass or fail by luck.
#
# Usage: scripts/flake-loop.sh [RUNS] [FILTER]
#   RUNS    how many times each test binary runs (default 20)
#   FILTER  only binaries whose name contains FILTER (default: all)
# FLAKE_SKIP (environment): names of binaries to leave out, separated by spaces (for example the
# ones a previous loop already ran).
# Environment: what `.ci/run` exports for the tests (CMA_SDK_PYTHON, the S3/Postgres/Docker
# variables from .ci/setup.d); CARGO_TARGET_DIR as for the tests. Logs of failed runs go to
# $FLAKE_LOG_DIR (default: a temporary folder, printed at the end).
# Exit status: 0 when every run of every binary passed, 1 otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS="${1:-20}"
FILTER="${2:-}"
LOG_DIR="${FLAKE_LOG_DIR:-$(mktemp -d)}"
mkdir -p "$LOG_DIR"

# Build every test binary once and list them with the folder of their package (cargo runs a
# test binary in its package's folder; some tests read files relative to it).
mapfile -t BINARIES < <(
    cargo test --workspace --all-features --no-run --message-format=json |
        python3 -c '
import json, os, sys
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    exe = msg.get("executable")
    if msg.get("reason") == "compiler-artifact" and exe and msg.get("profile", {}).get("test"):
        pkg_dir = os.path.dirname(msg["manifest_path"])
        name = msg["target"]["name"]
        print(f"{exe}\t{pkg_dir}\t{name}")
'
)

if [ "${#BINARIES[@]}" -eq 0 ]; then
    echo "flake-loop: no test binary was built (see cargo's output above)" >&2
    exit 2
fi

total_fail=0
declare -a REPORT=()
for entry in "${BINARIES[@]}"; do
    IFS=$'\t' read -r exe dir name <<<"$entry"
    if [ -n "$FILTER" ] && [[ "$name" != *"$FILTER"* ]]; then
        continue
    fi
    if [[ " ${FLAKE_SKIP:-} " == *" $name "* ]]; then
        continue
    fi
    fails=0
    started=$SECONDS
    for ((i = 1; i <= RUNS; i++)); do
        log="$LOG_DIR/$name.$i.log"
        if (cd "$dir" && "$exe" >"$log" 2>&1); then
            rm -f "$log"
        else
            fails=$((fails + 1))
        fi
    done
    REPORT+=("$(printf '%-32s %3d/%d failed  (%d s)' "$name" "$fails" "$RUNS" $((SECONDS - started)))")
    echo "${REPORT[-1]}"
    total_fail=$((total_fail + fails))
done

echo "binaries: ${#REPORT[@]}, runs each: $RUNS, failed runs: $total_fail, logs: $LOG_DIR"
[ "$total_fail" -eq 0 ]
