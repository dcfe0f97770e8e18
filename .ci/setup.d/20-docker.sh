# Docker Engine for the Docker backend tests (cma-sandbox feature `docker`). Sourced by .ci/run.
# Installs Debian's docker.io (and curl, iproute2) if missing, starts dockerd in the background if the
# engine does not answer, waits for it, builds the registry-free test image, and exports
# CMA_DOCKER_IMAGE. Idempotent.

if ! command -v dockerd >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    mkdir -p /var/log
    # Not a child of this shell's job control: it must outlive .ci/run's subshells.
    nohup dockerd --host=unix:///var/run/docker.sock >/var/log/cma-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    if ! docker info >/dev/null 2>&1; then
        echo "setup: dockerd did not start; see /var/log/cma-dockerd.log" >&2
        tail -20 /var/log/cma-dockerd.log >&2 || true
        return 1 2>/dev/null || exit 1
    fi
fi

# The test image carries the host's curl and iproute2 (the egress suites run them inside
# sandboxes); the egress suites also use `ip netns` on the host. Tag 2: the image with them.
for pkg in curl iproute2; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl iproute2 >/dev/null
        break
    fi
done

export CMA_DOCKER_IMAGE="${CMA_DOCKER_IMAGE:-cma-sandbox-test:2}"
bash scripts/docker-image.sh "$CMA_DOCKER_IMAGE" >/dev/null
echo "setup: docker $(docker version --format '{{.Server.Version}}' 2>/dev/null), image $CMA_DOCKER_IMAGE"
