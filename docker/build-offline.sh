#!/usr/bin/env bash
# Build the OpenGrok images without a container registry, from Debian's packages and the package index:
#
#   1. opengrok-base:bookworm      debootstrap (minbase) + Debian's python3.11, venv and the CA bundle of this
#                                  machine (so pip and apt inside builds trust the same proxies the host does)
#   2. opengrok-postgres:bookworm  FROM the base: Debian's PostgreSQL, started like the official postgres image
#                                  (POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB)
#   3. opengrok:offline            docker/Dockerfile as it is, FROM the base (its BASE_IMAGE argument); torch is
#                                  the CPU wheel this machine's pip resolves for torch==2.13.0, served to the build
#                                  from a loopback index (its TORCH_INDEX_URL argument)
#
# Users with a registry need none of this: `docker compose -f docker/docker-compose.yml up --build`.
#
#   DOCKER_HOST=unix:///path/docker.sock docker/build-offline.sh      # or `make docker-images`
#
# Environment: OPENGROK_IMAGE (opengrok:offline), OPENGROK_BASE_IMAGE (opengrok-base:bookworm),
# OPENGROK_POSTGRES_IMAGE (opengrok-postgres:bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian),
# OPENGROK_BUILD_CACHE (/var/tmp/opengrok-build: the rootfs tarball and the torch wheelhouse, reused),
# PIP (python3 -m pip: the host pip that resolves the torch wheel), OPENGROK_WHEEL_INDEX_PORT (38765: the loopback
# index's port), REBUILD_BASE=1 to rebuild the base images.
# Needs root (debootstrap), debootstrap and a Docker engine (docker/dockerd-private.sh starts one).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${OPENGROK_IMAGE:-opengrok:offline}
BASE_IMAGE=${OPENGROK_BASE_IMAGE:-opengrok-base:bookworm}
POSTGRES_IMAGE=${OPENGROK_POSTGRES_IMAGE:-opengrok-postgres:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${OPENGROK_BUILD_CACHE:-/var/tmp/opengrok-build}
PIP=${PIP:-python3 -m pip}
TORCH_VERSION=2.13.0
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

die() { echo "build-offline: $*" >&2; exit 1; }
step() { echo "build-offline: $* ($(date -u +%T))"; }
[ "$(id -u)" = 0 ] || die "debootstrap needs root; run it as root (sudo -E $0)"
command -v debootstrap >/dev/null || die "debootstrap not found; apt-get install debootstrap (make docker-packages)"
docker version >/dev/null 2>&1 || die "no Docker engine at ${DOCKER_HOST:-the default socket}; start one with docker/dockerd-private.sh start"
[ -s "$CA_BUNDLE" ] || die "$CA_BUNDLE is missing; apt-get install ca-certificates"
mkdir -p "$CACHE"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

build_base() {
  local rootfs="$CACHE/rootfs" tarball="$CACHE/rootfs-bookworm.tar"
  if [ ! -s "$tarball" ] || [ "${REBUILD_BASE:-0}" = 1 ]; then
    step "debootstrap bookworm into $rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3.11,python3-venv,python3-dev,ca-certificates \
      bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log"
    # This machine's CA bundle, also where update-ca-certificates keeps it should a later apt run rebuild it.
    cp "$CA_BUNDLE" "$rootfs/usr/local/share/ca-certificates/build-host-bundle.crt"
    cp "$CA_BUNDLE" "$rootfs$CA_BUNDLE"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
    rm -rf "$rootfs"
  fi
  step "import $BASE_IMAGE"
  docker import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV PIP_CERT=$CA_BUNDLE" \
    --change "ENV SSL_CERT_FILE=$CA_BUNDLE" \
    --change "ENV REQUESTS_CA_BUNDLE=$CA_BUNDLE" \
    --change 'CMD ["python3"]' \
    "$tarball" "$BASE_IMAGE" >/dev/null
}

build_postgres() {
  step "build $POSTGRES_IMAGE"
  docker build --quiet --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$POSTGRES_IMAGE" docker/postgres >/dev/null
}

# The CPU torch wheel and its dependencies, as this machine's pip resolves them, in a PEP 503 index.
torch_wheelhouse() {
  local house="$CACHE/wheelhouse"
  if ! ls "$house"/torch-"$TORCH_VERSION"*.whl >/dev/null 2>&1; then
    step "download torch==$TORCH_VERSION and its dependencies into $house"
    $PIP download --quiet --only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 \
      -d "$house" "torch==$TORCH_VERSION" || die "pip could not download torch==$TORCH_VERSION"
  fi
  local wheel
  wheel=$(ls "$house"/torch-"$TORCH_VERSION"*.whl)
  case "$wheel" in
    *+cpu*) ;;
    *) die "pip resolved $wheel, not the CPU build; point pip at the CPU wheel (pip config set global.find-links DIR)";;
  esac
  rm -rf "$house/simple"
  local file name
  for file in "$house"/*.whl; do
    name=$(basename "$file" | cut -d- -f1 | tr '[:upper:]_.' '[:lower:]--')
    mkdir -p "$house/simple/$name"
    echo "<a href=\"../../$(basename "$file")\">$(basename "$file")</a>" >>"$house/simple/$name/index.html"
  done
}

# Only the files git knows (tracked, or new and not ignored): the context never carries .venv, .opengrok or .git.
build_context() {
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' path; do
    [ -e "$path" ] && printf '%s\0' "$path"
  done | tar --null -T - -cf -
}

build_image() {
  torch_wheelhouse
  # The index URL is a build argument of the torch layer: the same port every time keeps that layer cached (a
  # rebuild after a code change then reinstalls only the project); a busy port falls back to a free one.
  local port=${OPENGROK_WHEEL_INDEX_PORT:-38765}
  if ! python3 -c "import socket, sys; socket.socket().bind(('127.0.0.1', int(sys.argv[1])))" "$port" 2>/dev/null; then
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  python3 -m http.server --bind 127.0.0.1 --directory "$CACHE/wheelhouse" "$port" >"$CACHE/index.log" 2>&1 &
  local server=$!
  trap "kill $server 2>/dev/null" EXIT
  step "build $IMAGE FROM $BASE_IMAGE (torch from http://127.0.0.1:$port/simple)"
  build_context | docker build --network host -f docker/Dockerfile \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "TORCH_INDEX_URL=http://127.0.0.1:$port/simple" \
    -t "$IMAGE" - >"$CACHE/build.log" 2>&1 || die "docker build failed; see $CACHE/build.log"
  kill "$server" 2>/dev/null || true
  trap - EXIT
}

start=$(date +%s)
if ! image_exists "$BASE_IMAGE" || [ "${REBUILD_BASE:-0}" = 1 ]; then build_base; fi
if ! image_exists "$POSTGRES_IMAGE" || [ "${REBUILD_BASE:-0}" = 1 ]; then build_postgres; fi
build_image
docker image prune --force >/dev/null  # the image this build replaced, untagged: its own layers only
step "done in $(( $(date +%s) - start )) s: $IMAGE, $POSTGRES_IMAGE"
