#!/usr/bin/env bash
# Holds one side's mount namespace open for tests/libvirt (started inside `unshare -m`, with
# SIGTERM as its parent-death signal).
#
# keeper.sh DIR: bind-mounts DIR's run/ etc/ lib/ cache/ log/ over /run, /etc/libvirt,
#   /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt, starts the watcher, and becomes
#   `sleep infinity`. The mount points outside /run are libvirt's own directories, created
#   empty when missing; mount -n keeps util-linux from writing /run/mount/utab on the real root.
# keeper.sh --watch: the watcher. libvirtd's double fork makes QEMU nobody's child, so nothing
#   else would stop the side's QEMUs when the test dies. The watcher's parent-death signal is
#   SIGTERM: however the keeper ends (SIGTERM because the test process died, SIGKILL from the
#   harness), the watcher kills every QEMU that the side's pid files name, and exits; the
#   namespace ends with the last of them.
set -eu

if [ "$1" = "--watch" ]; then
  kill_qemus() {
    local f pid
    for f in /run/libvirt/qemu/*.pid; do
      [ -f "$f" ] || continue
      [ "$(basename "$f")" != driver.pid ] || continue
      pid=$(cat "$f" 2>/dev/null || true)
      # Only a process that is still a QEMU: a stale pid file must not kill a stranger.
      case "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)" in
        *qemu-system*) kill -KILL "$pid" 2>/dev/null || true ;;
      esac
    done
    exit 0
  }
  trap kill_qemus TERM
  # The sleeper dies with the watcher, whatever kills it.
  setpriv --pdeathsig KILL sleep infinity &
  wait
  exit 0
fi

d=$1
mkdir -p /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
mount -n --bind "$d/run" /run
mount -n --bind "$d/etc" /etc/libvirt
mount -n --bind "$d/lib" /var/lib/libvirt
mount -n --bind "$d/cache" /var/cache/libvirt
mount -n --bind "$d/log" /var/log/libvirt
setpriv --pdeathsig TERM bash "$0" --watch &
echo "namespace ready"
exec sleep infinity
