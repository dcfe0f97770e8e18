#!/usr/bin/env bash
# Build the cargo-fuzz targets in fuzz/ and run each for N seconds (default 30); fail on any
# crash, hang (timeout) or out-of-memory. Installs the nightly toolchain and cargo-fuzz when
# missing. Idempotent; safe to run again on the same machine.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Saved inputs in fuzz/regressions/<target>/ (every crash found so far, minimised) are replayed
# first; fuzz/seeds/<target>/ seed the corpus and fuzz/dict/<target>.dict is its libFuzzer
# dictionary, when present. The growing corpus lives in fuzz/corpus/<target>/
# and crash artefacts in fuzz/artifacts/<target>/ (both ignored by git).
# Environment: CMA_FUZZ_TARGET_DIR (build dir, default ~/.cache/cma-fuzz-target),
# CMA_FUZZ_TIMEOUT (seconds one input may take, default 20), CMA_FUZZ_RSS_MB (default 2048),
# CMA_FUZZ_TOOLCHAIN (default nightly; e.g. nightly-2026-05-20 to pin one),
# CMA_FUZZ_CODEGEN_UNITS (default cargo-fuzz's 1: fastest targets, slowest build; CI's short run
# uses 16, which builds faster on two cores and runs somewhat slower).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS="${1:-30}"
shift || true
TIMEOUT="${CMA_FUZZ_TIMEOUT:-20}"
RSS_MB="${CMA_FUZZ_RSS_MB:-2048}"
export CARGO_TARGET_DIR="${CMA_FUZZ_TARGET_DIR:-$HOME/.cache/cma-fuzz-target}"

TOOLCHAIN="${CMA_FUZZ_TOOLCHAIN:-nightly}"
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the $TOOLCHAIN toolchain"
    rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
# cargo-fuzz drives the nightly build; libfuzzer-sys compiles libFuzzer with the system C++
# compiler (clang is not needed).
CARGO_FUZZ_VERSION="0.13.2"
if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "=$CARGO_FUZZ_VERSION"
fi
if ! command -v c++ >/dev/null 2>&1; then
    echo "fuzz: installing a C++ compiler for libFuzzer"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++
fi

cd fuzz
if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo "+$TOOLCHAIN" fuzz list)
fi

# No sanitizer: the crates forbid `unsafe`, so ASan would mostly slow the search; debug
# assertions (overflow checks) stay on.
BUILD=(cargo "+$TOOLCHAIN" fuzz build --sanitizer none --debug-assertions)
if [ -n "${CMA_FUZZ_CODEGEN_UNITS:-}" ]; then
    BUILD+=(--codegen-units "$CMA_FUZZ_CODEGEN_UNITS")
fi
start=$(date +%s)
if [ "$#" -gt 0 ]; then
    for t in "${TARGETS[@]}"; do
        "${BUILD[@]}" "$t"
    done
else
    "${BUILD[@]}"
fi
echo "fuzz: built ${#TARGETS[@]} targets in $(($(date +%s) - start)) s"

HOST="$(rustc "+$TOOLCHAIN" -vV | sed -n 's/^host: //p')"
BIN="$CARGO_TARGET_DIR/$HOST/release"
failed=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    flags=(-rss_limit_mb="$RSS_MB" -timeout="$TIMEOUT" -artifact_prefix="artifacts/$t/")
    case "$t" in
        # Slow, structured targets: allow long inputs (many ops, many entries) from the start.
        tool_run | tar_import | snapshot_decode | scenario) flags+=(-len_control=0) ;;
    esac
    if [ -d "regressions/$t" ] && [ -n "$(ls -A "regressions/$t")" ]; then
        if ! "$BIN/$t" "${flags[@]}" "regressions/$t"/* >"artifacts/$t/regressions.log" 2>&1; then
            echo "fuzz: $t: a saved regression input fails again (artifacts/$t/regressions.log)"
            tail -n 30 "artifacts/$t/regressions.log"
            failed+=("$t")
            continue
        fi
    fi
    [ -f "dict/$t.dict" ] && flags+=(-dict="dict/$t.dict")
    dirs=("corpus/$t")
    [ -d "seeds/$t" ] && dirs+=("seeds/$t")
    log="artifacts/$t/fuzz.log"
    if "$BIN/$t" "${flags[@]}" -max_total_time="$SECS" -print_final_stats=1 "${dirs[@]}" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n 1)
        echo "fuzz: $t: ok, ${runs:-?} runs in ${SECS} s (${rate:-?}/s), ${cov:-no coverage figure}"
    else
        echo "fuzz: $t: FAILED (log: fuzz/$log, inputs: fuzz/artifacts/$t/)"
        grep -E '^==[0-9]+==|panicked at|^SUMMARY|Test unit written' "$log" | head -n 20 || true
        failed+=("$t")
    fi
done
echo "fuzz: total $(($(date +%s) - start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: failing targets: ${failed[*]}"
    exit 1
fi
