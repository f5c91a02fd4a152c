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
#
# scripts/demo.sh --libvirt: the same job through libvirt. Two real libvirtd ("source" and
# "destination" host, each in its own mount namespace with its own /run, /etc/libvirt and
# /var), a running TCG guest with a DEMO_SIZE_MIB disk, and `nbdtunnel migrate --domain --p2p`:
# memory, disk and libvirt's RPC through one mutual-TLS channel to `nbdtunnel dest --libvirt`.
# Needs root.
# Works from any directory. Set DEMO_KEEP=1 to keep the temp dir and its logs.
set -euo pipefail

LIBVIRT=0
case "${1:-}" in
  "") ;;
  --libvirt) LIBVIRT=1 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--libvirt]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE_MIB="${DEMO_SIZE_MIB:-1024}"
BUILD="$ROOT/build-release"

if [[ -t 1 ]]; then BOLD=$'\033[1m' RED=$'\033[31m' PLAIN=$'\033[0m'; else BOLD="" RED="" PLAIN=""; fi
say() { printf '%s==> %s%s\n' "$BOLD" "$*" "$PLAIN"; }
die() { printf '%serror: %s%s\n' "$RED" "$*" "$PLAIN" >&2; exit 1; }

[[ "$SIZE_MIB" =~ ^[1-9][0-9]*$ ]] || die "DEMO_SIZE_MIB must be a positive integer, not '$SIZE_MIB'"

# --- 1. dependencies and build --------------------------------------------------------------
needs_setup=0
for tool in cmake ninja pkg-config g++ qemu-storage-daemon python3 cmp libvirtd virsh; do
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
  # QEMUs libvirtd started (they are not its children and would outlive it). driver.pid there
  # is libvirtd's own lock file: libvirtd gets a SIGTERM below, like every child of this script.
  for pidfile in "$WORK"/*/run/libvirt/qemu/*.pid; do
    [[ -f "$pidfile" && ${pidfile##*/} != driver.pid ]] && kill -9 "$(cat "$pidfile")" 2>/dev/null || true
  done
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

if ((LIBVIRT)); then
  [[ $(id -u) -eq 0 ]] || die "--libvirt runs two libvirtd and needs root"
  getent passwd libvirt-qemu >/dev/null || "$ROOT/scripts/setup.sh"

  # side NAME UUID: a libvirtd in its own mount namespace, with $WORK/NAME bind-mounted over
  # /run, /var/lib, /var/cache, /var/log and /etc/libvirt. Prints its pid.
  side() {
    local d="$WORK/$1"
    mkdir -p "$d/etc" "$d/run" "$d/varlib/libvirt/images" "$d/varcache" "$d/varlog/libvirt"
    cp /etc/libvirt/libvirt.conf "$d/etc/" 2>/dev/null || true
    printf 'host_uuid = "%s"\nunix_sock_rw_perms = "0700"\n' "$2" >"$d/etc/libvirtd.conf"
    cat >"$d/etc/qemu.conf" <<'EOC'
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
remember_owner = 0
EOC
    start "libvirtd-$1" unshare -m --propagation private bash -c "
      mount --bind '$d/etc' /etc/libvirt && mount --bind '$d/run' /run &&
      mount --bind '$d/varlib' /var/lib && mount --bind '$d/varcache' /var/cache &&
      mount --bind '$d/varlog' /var/log && mkdir -p /run/libvirt /run/nbdtunnel &&
      exec libvirtd"
  }
  say "starting two libvirtd: 'source' and 'destination' hosts in their own mount namespaces"
  side src 5a1c0000-0000-4000-8000-00000000000a
  SRC=${PIDS[-1]}
  side dst 5a1c0000-0000-4000-8000-00000000000b
  DST=${PIDS[-1]}
  in_src() { nsenter -m -t "$SRC" -- "$@"; }
  in_dst() { nsenter -m -t "$DST" -- "$@"; }
  deadline=$((SECONDS + 90))
  until in_src virsh -q version >/dev/null 2>&1 && in_dst virsh -q version >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "libvirtd did not answer within 90 s"
    sleep 0.5
  done
  echo "    $(in_src virsh -q version | grep -i 'running hypervisor')"

  say "a running guest 'demo' on the source with a ${SIZE_MIB} MiB disk of random data"
  head -c "$((SIZE_MIB * 1024 * 1024))" /dev/urandom >"$WORK/src/varlib/libvirt/images/demo.raw"
  truncate -s "$((SIZE_MIB * 1024 * 1024))" "$WORK/dst/varlib/libvirt/images/demo.raw"
  cat >"$WORK/demo.xml" <<'EOX'
<domain type='qemu'>
  <name>demo</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/demo.raw'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
</domain>
EOX
  in_src virsh -q create "$WORK/demo.xml" >/dev/null
  in_src virsh -q list

  say "making a CA and certificates for the channel (scripts/make-certs.sh)"
  "$ROOT/scripts/make-certs.sh" "$WORK/pki" --key-type ec >"$WORK/make-certs.log" 2>&1 ||
    { cat "$WORK/make-certs.log" >&2; die "making certificates failed"; }

  say "starting nbdtunnel dest --libvirt on the destination (mutual TLS 1.3)"
  start dest nsenter -m -t "$DST" -- "$NBDTUNNEL" dest --listen 127.0.0.1:0 --libvirt \
    --tls-dir "$WORK/pki"
  PORT="$(wait_for "$WORK/dest.log" 'listening on [^ ]*:[0-9]+' | sed 's/.*://')"

  say "nbdtunnel migrate --domain demo --p2p: checks, then libvirt moves memory and disk"
  in_src "$NBDTUNNEL" migrate --domain demo --dest "127.0.0.1:$PORT" --tls-dir "$WORK/pki" --p2p

  say "verifying"
  in_dst virsh -q list | grep -q ' demo .*running' || die "demo is not running on the destination"
  echo "    'demo' runs on the destination; the source has $(in_src virsh -q list | wc -l) domain(s)"
  in_dst virsh -q destroy demo >/dev/null
  cmp "$WORK/src/varlib/libvirt/images/demo.raw" "$WORK/dst/varlib/libvirt/images/demo.raw"
  echo "    the destination's disk is identical to the source's (${SIZE_MIB} MiB)"
  echo "    streams over the one channel: $(grep -c 'stream .* opened to target' "$WORK/dest.log")" \
    "($(grep -o "to target '[^']*'" "$WORK/dest.log" | sed "s/.*'\(.*\)'/\1/; s|migration/[^/]*/||" |
      sort | uniq -c | awk '{printf "%s%s x%s", sep, $2, $1; sep=", "}'))"
  say "done"
  exit 0
fi

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
