# Postgres for the cma-store StateStore tests (feature `postgres`).
# Sourced by .ci/run. Installs Debian's postgresql if missing, creates a dedicated cluster
# `cma` listening on 127.0.0.1:$CMA_PG_PORT only, starts it, creates the role and database the
# tests use, waits until it answers, and exports CMA_TEST_POSTGRES_URL. Idempotent.
# Each test creates its own schema inside that database, so tests run in parallel.

CMA_PG_PORT="${CMA_PG_PORT:-55432}"
CMA_PG_CLUSTER=cma

if ! command -v pg_createcluster >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

CMA_PG_VERSION="$(ls /usr/lib/postgresql | sort -n | tail -1)"

# Read the cluster list first: `grep -q` in a pipeline under pipefail can fail on SIGPIPE.
cma_pg_clusters="$(pg_lsclusters -h 2>/dev/null || true)"
if ! awk -v v="$CMA_PG_VERSION" -v c="$CMA_PG_CLUSTER" '$1==v && $2==c {found=1} END {exit !found}' <<<"$cma_pg_clusters"; then
    pg_createcluster "$CMA_PG_VERSION" "$CMA_PG_CLUSTER" -p "$CMA_PG_PORT" \
        -o max_connections=200 -o fsync=off -o synchronous_commit=off -o full_page_writes=off >/dev/null
    # Debian's postgresql.conf reads conf.d/; loopback only.
    echo "listen_addresses = '127.0.0.1'" >"/etc/postgresql/$CMA_PG_VERSION/$CMA_PG_CLUSTER/conf.d/cma.conf"
fi

cma_pg_clusters="$(pg_lsclusters -h)"
if ! awk -v v="$CMA_PG_VERSION" -v c="$CMA_PG_CLUSTER" '$1==v && $2==c && $4=="online" {found=1} END {exit !found}' <<<"$cma_pg_clusters"; then
    pg_ctlcluster "$CMA_PG_VERSION" "$CMA_PG_CLUSTER" start
fi

cma_pg_ready=0
for _ in $(seq 1 60); do
    if pg_isready -q -h 127.0.0.1 -p "$CMA_PG_PORT"; then cma_pg_ready=1; break; fi
    sleep 0.5
done
if [ "$cma_pg_ready" != 1 ]; then
    echo "setup: postgres on 127.0.0.1:$CMA_PG_PORT did not answer" >&2
    return 1 2>/dev/null || exit 1
fi

cma_psql() { runuser -u postgres -- psql -q -X -v ON_ERROR_STOP=1 -h /var/run/postgresql -p "$CMA_PG_PORT" "$@"; }
if [ "$(cma_psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='cma'")" != 1 ]; then
    cma_psql -c "CREATE ROLE cma LOGIN PASSWORD 'cma'"
fi
if [ "$(cma_psql -tAc "SELECT 1 FROM pg_database WHERE datname='cma_test'")" != 1 ]; then
    cma_psql -c "CREATE DATABASE cma_test OWNER cma"
fi

export CMA_TEST_POSTGRES_URL="postgres://cma:cma@127.0.0.1:$CMA_PG_PORT/cma_test"
echo "setup: postgres $CMA_PG_VERSION cluster $CMA_PG_CLUSTER at 127.0.0.1:$CMA_PG_PORT (CMA_TEST_POSTGRES_URL)"
unset -f cma_psql
unset cma_pg_clusters cma_pg_ready
