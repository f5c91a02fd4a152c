#!/usr/bin/env bash
# Holds one side's mount namespace open for tests/libvirt (started inside `unshare -m`).
# $1: the side's directory; its run/ etc/ lib/ cache/ log/ are bind-mounted over /run,
# /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt.
# The mount points outside /run are libvirt's own directories, created empty when missing;
# mount -n keeps util-linux from writing /run/mount/utab on the real root.
# On SIGTERM (its parent-death signal: the test process died) it kills the side's QEMUs, which
# libvirtd's double fork makes nobody's child, and exits; the namespace ends with it.
set -eu
d=$1
mkdir -p /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
mount -n --bind "$d/run" /run
mount -n --bind "$d/etc" /etc/libvirt
mount -n --bind "$d/lib" /var/lib/libvirt
mount -n --bind "$d/cache" /var/cache/libvirt
mount -n --bind "$d/log" /var/log/libvirt

kill_qemus() {
  local f
  for f in /run/libvirt/qemu/*.pid; do
    if [ -f "$f" ]; then kill -KILL "$(cat "$f")" 2>/dev/null || true; fi
  done
  exit 0
}
trap kill_qemus TERM

echo "namespace ready"
# The sleeper dies with the keeper, even when the keeper is killed with SIGKILL.
setpriv --pdeathsig KILL sleep infinity &
wait
