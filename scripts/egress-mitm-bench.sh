#!/usr/bin/env bash
# Requests/s through the cma egress proxy against mitmproxy on this machine, both intercepting
# TLS and injecting the same `authorization` header, driven by the same load tool
# (`cma-egress/examples/egress_bench.rs`: keep-alive HTTPS over CONNECT) against the same local
# HTTPS upstream. Prints both figures and the ratio (target: ours >= 10x mitmproxy).
#
# mitmproxy comes from PyPI into its own venv (MITM_VENV, default ~/.cache/mitm-venv).
# With two or more CPUs, the proxy under test is pinned to CPU 1 and the load tool and upstream
# to CPU 0; our proxy runs one worker thread, like mitmproxy's single event loop.
# Knobs: CONNS (concurrent keep-alive connections, default 8), SECS (per run, default 10).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${MITM_VENV:-$HOME/.cache/mitm-venv}
CONNS=${CONNS:-8}
SECS=${SECS:-10}

if [ ! -x "$VENV/bin/mitmdump" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet mitmproxy
fi

cargo build --release --quiet -p cma-egress --example egress_bench
BIN=${CARGO_TARGET_DIR:-target}/release/examples/egress_bench

DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

# Command prefixes pinning to CPU 0 / CPU 1 (taskset execs the command, so `$!` is its pid).
CPU0=()
CPU1=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    CPU0=(taskset -c 0)
    CPU1=(taskset -c 1)
fi

wait_for_file() {
    for _ in $(seq 1 200); do
        [ -s "$1" ] && return 0
        sleep 0.1
    done
    echo "timed out waiting for $1" >&2
    exit 1
}

wait_for_port() {
    for _ in $(seq 1 300); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1)" "$1" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "timed out waiting for port $1" >&2
    exit 1
}

"${CPU0[@]}" "$BIN" upstream --dir "$DIR" &
PIDS+=($!)
wait_for_file "$DIR/upstream.port"
UPSTREAM=$(cat "$DIR/upstream.port")

"${CPU1[@]}" "$BIN" proxy --dir "$DIR" --threads 1 &
PIDS+=($!)
wait_for_file "$DIR/proxy.port"
OURS_PORT=$(cat "$DIR/proxy.port")

cat >"$DIR/inject.py" <<'EOF'
from mitmproxy import http


class Inject:
    def request(self, flow: http.HTTPFlow) -> None:
        flow.request.headers["authorization"] = "Bearer bench-secret-value"


addons = [Inject()]
EOF
MITM_PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
mkdir -p "$DIR/mitm"
"${CPU1[@]}" "$VENV/bin/mitmdump" --quiet --listen-host 127.0.0.1 --listen-port "$MITM_PORT" \
    --set confdir="$DIR/mitm" --set ssl_verify_upstream_trusted_ca="$DIR/upstream-ca.pem" \
    --set connection_strategy=lazy -s "$DIR/inject.py" &
PIDS+=($!)
wait_for_port "$MITM_PORT"
wait_for_file "$DIR/mitm/mitmproxy-ca-cert.pem"

run() {
    "${CPU0[@]}" "$BIN" load --proxy "127.0.0.1:$1" --port "$UPSTREAM" --ca "$2" \
        --connections "$CONNS" --seconds "$SECS"
}
OURS=$(run "$OURS_PORT" "$DIR/sandbox-ca.pem")
THEIRS=$(run "$MITM_PORT" "$DIR/mitm/mitmproxy-ca-cert.pem")
echo "cma egress proxy: $OURS"
echo "mitmproxy $("$VENV/bin/python" -c "import mitmproxy.version as v; print(v.VERSION)"): $THEIRS"
python3 - "$OURS" "$THEIRS" <<'EOF'
import sys
rps = [float(s.split("rps=")[1]) for s in sys.argv[1:3]]
print(f"ratio (ours / mitmproxy): {rps[0] / rps[1]:.1f}x  (target >= 10x)")
EOF
