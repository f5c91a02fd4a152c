#!/usr/bin/env bash
# A real storage migration on this machine, end to end, through nbdtunnel:
#
#   qemu-storage-daemon (source disk)                           qemu-storage-daemon (destination)
#        ^ QMP: blockdev-mirror into the tunnel                        ^ QMP: NBD server, exports
#        |                                                             |
#   nbdtunnel migrate  ===== one mutual-TLS channel on loopback ====>  nbdtunnel dest --qmp
#
# The certificates are made for the demo by scripts/make-certs.sh (a throw-away CA).
# Builds nbdtunnel (Release, build-release/), makes a disk of random data (DEMO_SIZE_MIB,
# default 1024), runs `nbdtunnel migrate` (its checks table and progress bars), checks the copy
# with cmp and stops everything.
# Works from any directory. Set DEMO_KEEP=1 to keep the temp dir and its logs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE_MIB="${DEMO_SIZE_MIB:-1024}"
BUILD="$ROOT/build-release"

if [[ -t 1 ]]; then BOLD=$'\033[1m' RED=$'\033[31m' PLAIN=$'\033[0m'; else BOLD="" RED="" PLAIN=""; fi
say() { printf '%s==> %s%s\n' "$BOLD" "$*" "$PLAIN"; }
die() { printf '%serror: %s%s\n' "$RED" "$*" "$PLAIN" >&2; exit 1; }

[[ "$SIZE_MIB" =~ ^[1-9][0-9]*$ ]] || die "DEMO_SIZE_MIB must be a positive integer, not '$SIZE_MIB'"

# --- 1. dependencies and build --------------------------------------------------------------
needs_setup=0
for tool in cmake ninja pkg-config g++ qemu-storage-daemon python3 cmp; do
  command -v "$tool" >/dev/null || needs_setup=1
done
for pkg in libnbd liburing libvirt; do
  pkg-config --exists "$pkg" 2>/dev/null || needs_setup=1
done
[[ -f /usr/include/CLI/CLI.hpp && -f /usr/include/boost/version.hpp ]] || needs_setup=1
if ((needs_setup)); then
  say "installing missing dependencies (scripts/setup.sh)"
  "$ROOT/scripts/setup.sh"
fi

say "building nbdtunnel (Release) in $BUILD"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DNBDTUNNEL_TESTS=OFF -DNBDTUNNEL_BENCH=OFF >/dev/null
cmake --build "$BUILD" --target nbdtunnel -j "$(nproc)" | tail -n 1
NBDTUNNEL="$BUILD/engine/nbdtunnel"
[[ -x "$NBDTUNNEL" ]] || die "the build did not produce $NBDTUNNEL"

# --- 2. a scratch directory, and cleanup whatever happens ------------------------------------
WORK="$(mktemp -d /tmp/nbdtunnel-demo-XXXXXX)"
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((status != 0)); then
    printf '%sdemo failed (exit %d); last lines of each log:%s\n' "$RED" "$status" "$PLAIN" >&2
    for log in "$WORK"/*.log; do
      [[ -f "$log" ]] && { echo "--- $log" >&2; tail -n 15 "$log" >&2; }
    done
  fi
  if [[ "${DEMO_KEEP:-0}" != 0 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, output to $WORK/NAME.log
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
}

# wait_for FILE REGEX [SECONDS]: waits until a line of FILE matches, prints the match
wait_for() {
  local deadline=$((SECONDS + ${3:-15}))
  until grep -Eo -m 1 "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || die "timed out waiting for '$2' in $1"
    sleep 0.1
  done
}

wait_socket() {
  local deadline=$((SECONDS + 15))
  until [[ -S "$1" ]]; do
    ((SECONDS < deadline)) || die "no socket at $1"
    sleep 0.05
  done
}

# --- 3. disks, QEMU on both sides, the tunnel ------------------------------------------------
say "making a ${SIZE_MIB} MiB source disk of random data"
head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/src.raw"
truncate -s "$((SIZE_MIB * 1024 * 1024))" "$WORK/dst.raw"

say "starting the destination and source qemu-storage-daemons"
for side in dst src; do
  start "qsd-$side" qemu-storage-daemon \
    --chardev "socket,path=$WORK/qmp-$side.sock,server=on,wait=off,id=qmp0" \
    --monitor chardev=qmp0 \
    --blockdev "driver=file,node-name=$side-file,filename=$WORK/$side.raw" \
    --blockdev "driver=raw,node-name=disk0,file=$side-file"
  wait_socket "$WORK/qmp-$side.sock"
done

say "making a CA and certificates for the channel (scripts/make-certs.sh)"
"$ROOT/scripts/make-certs.sh" "$WORK/pki" --key-type ec >"$WORK/make-certs.log" 2>&1 ||
  { cat "$WORK/make-certs.log" >&2; die "making certificates failed"; }

say "starting nbdtunnel dest --qmp (mutual TLS 1.3)"
# Both ends run on this one machine: the dest gets an identity of its own, or the checks would
# (rightly) refuse a migration to the same host.
start dest "$NBDTUNNEL" dest --listen 127.0.0.1:0 --tls-dir "$WORK/pki" --qmp "$WORK/qmp-dst.sock" \
  --host-id demo-destination-host
PORT="$(wait_for "$WORK/dest.log" 'listening on [^ ]*:[0-9]+' | sed 's/.*://')"
echo "    dest listens on 127.0.0.1:$PORT and prepares the destination QEMU's disks over QMP"

# --- 4. the migration ------------------------------------------------------------------------
say "nbdtunnel migrate: checks, prepare, mirror disk0 through one channel, complete"
"$NBDTUNNEL" migrate --source-qmp "$WORK/qmp-src.sock" --dest "127.0.0.1:$PORT" \
  --disk disk0 --tls-dir "$WORK/pki"

# --- 5. verify ------------------------------------------------------------------------------
say "verifying: cmp source.raw destination.raw"
cmp "$WORK/src.raw" "$WORK/dst.raw"
echo "    identical (${SIZE_MIB} MiB)"
grep -o 'over tls1.3 [^)]*)' "$WORK/dest.log" | head -1 | sed 's/^/    the channel ran /' || true
grep -q "removing its exports" "$WORK/dest.log" && echo "    the destination removed its exports"
say "done"
