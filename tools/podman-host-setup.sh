#!/usr/bin/env bash
# Prepare this host to build fedloom's image and run docker-compose.yml with podman.
#
# Machines of this project have a docker client but no engine and no reachable
# container registry; podman from Debian runs the compose file once the host is
# set up (see shared/containers.md). This script does the whole setup, as root,
# and is idempotent: every step checks whether it is already done.
#
#   1. Debian packages: podman, runc, netavark, ..., debootstrap.
#   2. /etc/containers/containers.conf: runc, cgroupfs, netavark, and ulimits
#      that this machine's kernel accepts (podman's default 1048576 is refused).
#   3. A local base image built with debootstrap (bookworm: python 3.11) with
#      the host's extra CA certificates, tagged docker.io/library/python:3.11-slim
#      so the unchanged Dockerfile builds without pulling.
#   4. The CPU torch wheel copied into a wheels folder, mounted at /wheels by
#      `podman build -v WHEELS:/wheels:ro` (otherwise pip pulls a CUDA build).
#   5. podman-compose 1.6 in its own venv, linked as /usr/local/bin/podman-compose.
#
# Environment (all optional):
#   FEDLOOM_WHEELS_DIR   wheels folder            (default /var/cache/fedloom/wheels)
#   FEDLOOM_TORCH_VERSION torch release to fetch  (default 2.13.0)
#   FEDLOOM_BASE_IMAGE   tag given to the base     (default docker.io/library/python:3.11-slim)
#   DEBIAN_MIRROR        debootstrap mirror        (default http://deb.debian.org/debian)
#
# Usage: sudo tools/podman-host-setup.sh     (prints "podman host ready" at the end)
set -euo pipefail

WHEELS_DIR="${FEDLOOM_WHEELS_DIR:-/var/cache/fedloom/wheels}"
TORCH_VERSION="${FEDLOOM_TORCH_VERSION:-2.13.0}"
BASE_IMAGE="${FEDLOOM_BASE_IMAGE:-docker.io/library/python:3.11-slim}"
LOCAL_BASE="localhost/pybase:bookworm"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
COMPOSE_VENV="/opt/podman-compose"
COMPOSE_SPEC="podman-compose>=1.6,<1.7"
CONF="/etc/containers/containers.conf"
PACKAGES=(podman runc netavark aardvark-dns iptables uidmap slirp4netns fuse-overlayfs
  catatonit debootstrap python3-venv)
ROOTFS=""

cleanup() {
  # --one-file-system: never follow a /proc a failed debootstrap left mounted.
  [[ -n "$ROOTFS" && -d "$ROOTFS" ]] && rm -rf --one-file-system "$ROOTFS"
  return 0
}
trap cleanup EXIT

log() { printf '[podman-host-setup] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ "$(id -u)" == 0 ]] || die "run as root (it installs packages and writes $CONF)"

install_packages() {
  local missing=()
  local pkg
  for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    log "packages already installed"
    return
  fi
  log "installing: ${missing[*]}"
  local apt_log
  apt_log="$(mktemp)"
  # apt's progress is noise in a test log: show it only when something fails.
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    rm -f "$apt_log"
    die "apt-get failed (output above)"
  fi
  rm -f "$apt_log"
}

# The hard limits this shell may raise to; podman sets these in every container.
nofile_limit() { ulimit -Hn; }
nproc_limit() {
  local hard pid_max
  hard="$(ulimit -Hu)"
  pid_max="$(cat /proc/sys/kernel/pid_max)"
  if [[ "$hard" == unlimited ]] || ((hard > pid_max)); then
    echo "$pid_max"
  else
    echo "$hard"
  fi
}

write_containers_conf() {
  local nofile nproc tmp
  nofile="$(nofile_limit)"
  [[ "$nofile" == unlimited ]] && nofile=1048576
  nproc="$(nproc_limit)"
  tmp="$(mktemp)"
  cat >"$tmp" <<EOF
# Written by fedloom tools/podman-host-setup.sh; rerun it to recompute the limits.
[containers]
# podman's default (1048576) exceeds this host's hard limits: use ulimit -Hn and
# min(ulimit -Hu, kernel.pid_max) as measured when this file was written.
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]

[engine]
# crun rejects this machine's mixed cgroup v1/v2 layout; runc does not.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
EOF
  mkdir -p "$(dirname "$CONF")"
  if [[ -f "$CONF" ]] && cmp -s "$tmp" "$CONF"; then
    log "$CONF up to date"
    rm -f "$tmp"
    return
  fi
  if [[ -f "$CONF" ]] && ! grep -q "fedloom tools/podman-host-setup.sh" "$CONF"; then
    cp -a "$CONF" "$CONF.bak.$(date +%s)"
    log "saved the previous $CONF beside it (.bak)"
  fi
  install -m 0644 "$tmp" "$CONF"
  rm -f "$tmp"
  log "wrote $CONF (nofile=$nofile, nproc=$nproc)"
}

build_base_image() {
  if podman image exists "$BASE_IMAGE"; then
    log "base image $BASE_IMAGE present"
    return
  fi
  if ! podman image exists "$LOCAL_BASE"; then
    ROOTFS="$(mktemp -d /var/tmp/fedloom-rootfs.XXXXXX)"
    local rootfs="$ROOTFS"
    log "debootstrap bookworm into $rootfs (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$rootfs" "$DEBIAN_MIRROR" >/dev/null
    # Outbound TLS here may pass a proxy whose CA the host trusts: pip in the
    # image needs the same certificates.
    local crt copied=0
    for crt in /usr/local/share/ca-certificates/*.crt; do
      [[ -e "$crt" ]] || continue
      install -D -m 0644 "$crt" "$rootfs/usr/local/share/ca-certificates/$(basename "$crt")"
      copied=$((copied + 1))
    done
    chroot "$rootfs" update-ca-certificates >/dev/null
    log "copied $copied extra CA certificate(s) into the base image"
    rm -f "$rootfs"/usr/lib/python3.*/EXTERNALLY-MANAGED
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import - "$LOCAL_BASE" >/dev/null
    log "imported $LOCAL_BASE"
    cleanup
    ROOTFS=""
  fi
  podman tag "$LOCAL_BASE" "$BASE_IMAGE"
  log "tagged $LOCAL_BASE as $BASE_IMAGE"
}

fetch_torch_wheel() {
  mkdir -p "$WHEELS_DIR"
  if compgen -G "$WHEELS_DIR/torch-${TORCH_VERSION}*.whl" >/dev/null; then
    log "torch wheel present in $WHEELS_DIR"
    return
  fi
  # The host's pip finds the CPU build on local disk (its find-links); the
  # image's python is bookworm's 3.11, the same ABI as the host's.
  local py
  py="$(command -v python3.11 || command -v python3)"
  log "downloading torch==$TORCH_VERSION into $WHEELS_DIR with $py"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    -d "$WHEELS_DIR" "torch==$TORCH_VERSION"
  compgen -G "$WHEELS_DIR/torch-${TORCH_VERSION}*.whl" >/dev/null ||
    die "no torch-$TORCH_VERSION wheel landed in $WHEELS_DIR"
  case "$(ls "$WHEELS_DIR"/torch-"${TORCH_VERSION}"*.whl)" in
  *+cpu*) ;;
  *) log "warning: the torch wheel in $WHEELS_DIR is not a +cpu build (several GB of CUDA)" ;;
  esac
}

install_podman_compose() {
  if [[ -x "$COMPOSE_VENV/bin/podman-compose" ]] &&
    "$COMPOSE_VENV/bin/python" -c 'import sys
from importlib.metadata import version
major, minor = (int(p) for p in version("podman-compose").split(".")[:2])
sys.exit(0 if (major, minor) == (1, 6) else 1)'; then
    log "podman-compose 1.6 present"
  else
    # Debian's python3-venv is among the packages: the system python keeps the
    # tool independent of a developer's pyenv or project venv.
    log "installing $COMPOSE_SPEC into $COMPOSE_VENV"
    /usr/bin/python3 -m venv --clear "$COMPOSE_VENV"
    "$COMPOSE_VENV/bin/pip" install -q --disable-pip-version-check "$COMPOSE_SPEC"
  fi
  ln -sf "$COMPOSE_VENV/bin/podman-compose" /usr/local/bin/podman-compose
}

install_packages
write_containers_conf
build_base_image
fetch_torch_wheel
install_podman_compose
log "podman $(podman --version | awk '{print $3}'), $(podman-compose --version 2>/dev/null | head -n1)"
log "wheels in $WHEELS_DIR"
echo "podman host ready"
