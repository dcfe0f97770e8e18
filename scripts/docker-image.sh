#!/usr/bin/env bash
# Build the Docker backend's test image without any registry: a small root file system assembled
# from this host's own binaries (bash, coreutils, grep, findutils, sed, gawk or mawk, procps,
# curl, iproute2, python3) and
# their shared libraries, plus a non-root user `sandbox` (uid 1000) owning /workspace, imported
# with `docker import`.
#
# Usage: scripts/docker-image.sh [TAG]      (default: $CMA_DOCKER_IMAGE or cma-sandbox-test:2)
# Idempotent: skips the build when TAG exists and carries this script's hash as its
# `cma.image-hash` label. Prints the tag on success.
set -euo pipefail

TAG="${1:-${CMA_DOCKER_IMAGE:-cma-sandbox-test:2}}"
SELF="$(readlink -f "${BASH_SOURCE[0]}")"
HASH="$(sha256sum "$SELF" | cut -c1-16)"

existing="$(docker image inspect --format '{{ index .Config.Labels "cma.image-hash" }}' "$TAG" 2>/dev/null || true)"
if [ "$existing" = "$HASH" ]; then
    echo "$TAG"
    exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"
mkdir -p "$ROOT"/{usr/bin,usr/lib,usr/lib64,etc,tmp,workspace,home/sandbox,root,proc,sys,dev,run,var/tmp}
# The merged-/usr layout of Debian 12.
ln -s usr/bin "$ROOT/bin"
ln -s usr/bin "$ROOT/sbin"
ln -s usr/lib "$ROOT/lib"
ln -s usr/lib64 "$ROOT/lib64"

# Binaries of these packages (their /usr/bin and /bin entries), plus python3 when present.
# curl and iproute2 are what the egress tests run inside sandboxes (HTTP/2, proxies, `ip`).
PACKAGES=(bash coreutils grep findutils sed gawk mawk procps curl iproute2)
BINS=()
for pkg in "${PACKAGES[@]}"; do
    # Packages missing on this host are skipped (e.g. gawk where only mawk is installed).
    dpkg -s "$pkg" >/dev/null 2>&1 || continue
    while IFS= read -r f; do
        case "$f" in
            /bin/* | /usr/bin/* | /sbin/* | /usr/sbin/*)
                [ -f "$f" ] && [ ! -L "$f" ] && BINS+=("$f")
                ;;
        esac
    done < <(dpkg -L "$pkg")
done
PYTHON=""
if [ -x /usr/bin/python3.11 ] && [ -d /usr/lib/python3.11 ]; then
    PYTHON=/usr/bin/python3.11
    BINS+=("$PYTHON")
fi

copy_file() { # copy a host file to the same path in the rootfs, keeping symlink chains
    local src="$1"
    local dst="$ROOT${src}"
    [ -e "$dst" ] && return 0
    mkdir -p "$(dirname "$dst")"
    if [ -L "$src" ]; then
        cp -P "$src" "$dst"
        local target
        target="$(readlink -f "$src")"
        copy_file "$target"
    else
        cp "$src" "$dst"
    fi
}

for b in "${BINS[@]}"; do
    # Binaries go to /usr/bin whatever their Debian location (/bin is a link to it anyway).
    dst="$ROOT/usr/bin/$(basename "$b")"
    [ -e "$dst" ] || cp "$b" "$dst"
    # Shared libraries, with their symlinks and the loader.
    while IFS= read -r lib; do
        [ -n "$lib" ] && copy_file "$lib"
    done < <(ldd "$b" 2>/dev/null | grep -oE '/[^ ]+' || true)
done
ln -sf bash "$ROOT/usr/bin/sh"
for awk in gawk mawk; do
    if [ -e "$ROOT/usr/bin/$awk" ]; then
        ln -sf "$awk" "$ROOT/usr/bin/awk"
        break
    fi
done
if [ -n "$PYTHON" ]; then
    ln -sf python3.11 "$ROOT/usr/bin/python3"
    mkdir -p "$ROOT/usr/lib/python3.11"
    tar -C /usr/lib/python3.11 \
        --exclude=test --exclude=tests --exclude=idlelib --exclude=tkinter --exclude=turtledemo \
        --exclude=ensurepip --exclude=lib2to3 --exclude=pydoc_data --exclude=site-packages \
        --exclude=dist-packages --exclude='config-*' -cf - . | tar -C "$ROOT/usr/lib/python3.11" -xf -
    for so in "$ROOT"/usr/lib/python3.11/lib-dynload/*.so; do
        while IFS= read -r lib; do
            [ -n "$lib" ] && copy_file "$lib"
        done < <(ldd "$so" 2>/dev/null | grep -oE '/[^ ]+' || true)
    done
fi

cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
sandbox:x:1000:1000:sandbox:/home/sandbox:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
sandbox:x:1000:
nogroup:x:65534:
EOF
echo "hosts: files" >"$ROOT/etc/nsswitch.conf"
: >"$ROOT/etc/resolv.conf"
: >"$ROOT/etc/hosts"
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"
chmod 700 "$ROOT/root"

# Owners are set in the archive (no chown on the host files needed).
tar --numeric-owner -C "$ROOT" \
    --owner=0 --group=0 --exclude=./workspace --exclude=./home/sandbox -cf "$WORK/rootfs.tar" .
tar --numeric-owner -C "$ROOT" --owner=1000 --group=1000 \
    -rf "$WORK/rootfs.tar" ./workspace ./home/sandbox

docker import \
    --change "USER sandbox" \
    --change "WORKDIR /workspace" \
    --change "ENV PATH=/usr/local/bin:/usr/bin:/bin HOME=/home/sandbox LANG=C.UTF-8" \
    --change "LABEL cma.image-hash=$HASH" \
    --change 'CMD ["/usr/bin/sleep", "infinity"]' \
    "$WORK/rootfs.tar" "$TAG" >/dev/null
echo "$TAG"
