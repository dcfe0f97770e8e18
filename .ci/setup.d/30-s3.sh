# S3-compatible server for cma-store's S3 tests: moto in server mode, from PyPI, in its own venv,
# on 127.0.0.1. Idempotent. Exports CMA_TEST_S3_ENDPOINT (and the bucket/credentials the tests use).
# Sourced by .ci/run (set -euo pipefail is in force).

CMA_MOTO_VENV="${CMA_MOTO_VENV:-$HOME/.cache/cma-moto}"
CMA_MOTO_PORT="${CMA_MOTO_PORT:-47950}"
CMA_MOTO_SPEC="moto[server]>=5.1,<6"

cma_moto_python_ok() {
    "$CMA_MOTO_VENV/bin/python" -c 'import moto.server, flask_cors' 2>/dev/null
}

if ! cma_moto_python_ok; then
    rm -rf "$CMA_MOTO_VENV"
    mkdir -p "$(dirname "$CMA_MOTO_VENV")"
    if ! python3 -m venv "$CMA_MOTO_VENV"; then
        rm -rf "$CMA_MOTO_VENV"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
        python3 -m venv "$CMA_MOTO_VENV"
    fi
    "$CMA_MOTO_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$CMA_MOTO_SPEC"
fi

cma_moto_up() {
    "$CMA_MOTO_VENV/bin/python" - "$CMA_MOTO_PORT" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=2)
PY
}

if ! cma_moto_up; then
    mkdir -p "$HOME/.cache"
    nohup setsid "$CMA_MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$CMA_MOTO_PORT" \
        >"$HOME/.cache/cma-moto.log" 2>&1 </dev/null &
    for _ in $(seq 1 100); do
        cma_moto_up && break
        sleep 0.2
    done
    if ! cma_moto_up; then
        echo "moto_server did not start on 127.0.0.1:$CMA_MOTO_PORT; see $HOME/.cache/cma-moto.log" >&2
        return 1 2>/dev/null || exit 1
    fi
fi

export CMA_TEST_S3_ENDPOINT="http://127.0.0.1:$CMA_MOTO_PORT"
export CMA_TEST_S3_BUCKET="cma-test"
echo "s3: moto on $CMA_TEST_S3_ENDPOINT (bucket $CMA_TEST_S3_BUCKET is created by the tests)"
