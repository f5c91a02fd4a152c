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
  dpkg-dev systemd groff-base
  clang-14 libclang-rt-14-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
