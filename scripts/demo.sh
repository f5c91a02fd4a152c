#!/usr/bin/env bash
# A real storage migration on this machine, end to end, through nbdtunnel:
#
#   qemu-storage-daemon (source disk, blockdev-mirror)          qemu-storage-daemon (NBD server)
#        | NBD over UNIX socket                                        ^ NBD over UNIX socket
#        v                                                             |
#   nbdtunnel source  ===== one mutual-TLS channel on loopback ====>  nbdtunnel dest
#
# The certificates are made for the demo by scripts/make-certs.sh (a throw-away CA).
# Builds nbdtunnel (Release, build-release/), makes a disk of random data (DEMO_SIZE_MIB,
# default 1024), mirrors it through the tunnel, checks the copy with cmp and stops everything.
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

say "starting nbdtunnel dest and source (mutual TLS 1.3)"
start dest "$NBDTUNNEL" dest --listen 127.0.0.1:0 --tls-dir "$WORK/pki" \
  --target "nbd=$WORK/dst-nbd.sock"
PORT="$(wait_for "$WORK/dest.log" 'listening on [^ ]*:[0-9]+' | sed 's/.*://')"
echo "    dest listens on 127.0.0.1:$PORT, target nbd = $WORK/dst-nbd.sock"
start source "$NBDTUNNEL" source --connect "127.0.0.1:$PORT" --tls-dir "$WORK/pki" \
  --forward "$WORK/tunnel.sock=nbd"
wait_for "$WORK/source.log" 'channel connected to .*' >/dev/null
echo "    source forwards $WORK/tunnel.sock over one channel to 127.0.0.1:$PORT"

# --- 4. the migration, over QMP --------------------------------------------------------------
say "mirroring disk0 through the tunnel"
cat >"$WORK/migrate.py" <<'EOF'
import json, socket, sys, time

class Qmp:
    """Just enough QMP: one command at a time, events set aside."""
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.file = self.sock.makefile("rw")
        self.events = []
        self.read()  # greeting
        self.cmd("qmp_capabilities")

    def read(self):
        line = self.file.readline()
        if not line:
            sys.exit("QMP connection closed")
        return json.loads(line)

    def cmd(self, execute, /, **args):
        self.file.write(json.dumps({"execute": execute, "arguments": args}) + "\n")
        self.file.flush()
        while True:
            msg = self.read()
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                sys.exit(f"{execute} failed: {msg['error']['desc']}")
            else:
                return msg["return"]

    def event(self, name):
        while True:
            for ev in self.events:
                if ev["event"] == name:
                    self.events.remove(ev)
                    return ev["data"]
            self.events.append(self.read())

work, mib, tty = sys.argv[1], 1024 * 1024, sys.stdout.isatty()
dst, src = Qmp(f"{work}/qmp-dst.sock"), Qmp(f"{work}/qmp-src.sock")
dst.cmd("nbd-server-start", addr={"type": "unix", "data": {"path": f"{work}/dst-nbd.sock"}})
dst.cmd("block-export-add", type="nbd", id="exp0", **{"node-name": "disk0"}, name="disk0",
        writable=True)
src.cmd("blockdev-add", driver="nbd", **{"node-name": "tgt0"}, export="disk0",
        server={"type": "unix", "path": f"{work}/tunnel.sock"})
start = last_print = time.monotonic()
src.cmd("blockdev-mirror", **{"job-id": "m0"}, device="disk0", target="tgt0", sync="full")
while not any(e["event"] == "BLOCK_JOB_READY" for e in src.events):
    now = time.monotonic()
    if now - last_print >= (0.25 if tty else 1.0):
        last_print = now
        for job in src.cmd("query-block-jobs"):
            done, total = job["offset"], max(job["len"], 1)
            line = (f"    {done // mib:6d} / {total // mib} MiB  {100 * done // total:3d}%"
                    f"  {done / mib / (now - start):7.1f} MiB/s")
            print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
    else:
        src.cmd("query-version")  # a cheap round trip that picks up events
    time.sleep(0.05)
ready = time.monotonic() - start
src.event("BLOCK_JOB_READY")
print(f"{chr(10) if tty else ''}    READY after {ready:.2f} s: source and destination in sync")
src.cmd("block-job-cancel", device="m0")
completed = src.event("BLOCK_JOB_COMPLETED")
if "error" in completed:
    sys.exit(f"mirror failed: {completed['error']}")
total = time.monotonic() - start
print(f"    COMPLETED: {completed['offset'] // mib} MiB in {total:.2f} s"
      f" = {completed['offset'] / mib / total:.1f} MiB/s through the tunnel")
for q in (src, dst):
    q.cmd("quit")
EOF
python3 "$WORK/migrate.py" "$WORK"

# --- 5. verify ------------------------------------------------------------------------------
say "verifying: cmp source.raw destination.raw"
for pid in "${PIDS[@]:0:2}"; do wait "$pid" 2>/dev/null || true; done  # both QEMUs quit
cmp "$WORK/src.raw" "$WORK/dst.raw"
echo "    identical (${SIZE_MIB} MiB)"
streams=$(grep -c 'stream .* open' "$WORK/source.log" || true)
echo "    the source tunnelled $streams NBD connection(s) over one channel"
grep -o 'over tls1.3 [^)]*)' "$WORK/dest.log" | head -1 | sed 's/^/    the channel ran /' || true
say "done"
