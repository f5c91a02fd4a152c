#!/usr/bin/env bash
# Installs every build, test, demo, benchmark and fuzzing dependency of nbdtunnel on Debian 12.
# (dpkg-dev packs the .deb and computes its Depends; systemd brings systemd-analyze, with which
# tests/ops verifies the unit; groff-base renders the man page.)
# (clang-14 builds the libFuzzer targets; libclang-rt-14-dev holds libFuzzer and the sanitizer
# runtimes.)
# Idempotent: packages already present are left alone and apt is not touched at all.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git clang-format ccache
  libboost1.81-dev liburing-dev libnbd-dev libvirt-dev libssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  qemu-system-x86 qemu-utils nbdkit libnbd-bin
  socat openssh-server openssh-client python3 procps iproute2
  linux-perf
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  dpkg-dev systemd groff-base
  clang-14 libclang-rt-14-dev
)

# The privileged libvirtd resolves its compiled-in QEMU user and group at start, even when
# qemu.conf says root; libvirt-daemon-system would create them but also start a system daemon,
# so tests/libvirt runs its own daemons and only the accounts are made here.
ensure_libvirt_accounts() {
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  local g
  for g in kvm libvirt-qemu; do
    getent group "$g" >/dev/null || $sudo groupadd --system "$g"
  done
  getent passwd libvirt-qemu >/dev/null ||
    $sudo useradd --system --gid libvirt-qemu --groups kvm --no-create-home \
      --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} packages present"
  ensure_libvirt_accounts
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
ensure_libvirt_accounts
echo "setup: done"
