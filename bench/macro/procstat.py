"""CPU and memory of a relay's whole process tree, read from /proc.

cpu_seconds(roots) sums, over every live process descended from `roots` (roots included),
utime+stime (the process's own CPU) + cutime+cstime (CPU of its children that exited and were
waited for). Forking relays (socat ..,fork; sshd) reap their per-connection children, so a child's
CPU is counted while it lives (its own utime/stime) and, once reaped, in its parent's cutime/cstime:
each CPU second is counted once. The delta between two calls is the tree's CPU in that window.
Resolution is one clock tick (1/CLK_TCK s, 10 ms) per process.
"""

import os
import subprocess
import tempfile
import threading

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid):
    """(ppid, own ticks, reaped-children ticks) of pid, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    ppid = int(rest[1])
    own = int(rest[11]) + int(rest[12])
    reaped = int(rest[13]) + int(rest[14])
    return ppid, own, reaped


def tree(roots):
    """Every live pid descended from roots, roots included."""
    if not roots:
        return []
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st:
                parent[int(name)] = st[0]
    kids = {}
    for pid, ppid in parent.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [r for r in roots if r in parent]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(roots):
    total = 0
    for pid in tree(roots):
        st = _stat(pid)
        if st:
            total += st[1] + st[2]
    return total / _TICK


def hwm_kib(roots):
    """Sum of VmHWM (peak resident set) over the live processes of the tree."""
    total = 0
    for pid in tree(roots):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


class TreeMonitor:
    """Samples a relay tree while a workload runs: CPU delta over the window, peak summed VmHWM."""

    def __init__(self, roots, interval=0.2):
        self.roots = list(roots)
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = None
        self._cpu0 = 0.0
        self.cpu = None

    def __enter__(self):
        self._cpu0 = cpu_seconds(self.roots)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, hwm_kib(self.roots))

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, hwm_kib(self.roots))
        self.cpu = cpu_seconds(self.roots) - self._cpu0 if self.roots else None
        return False


def run_counting_cpu(argv, timeout):
    """Runs argv to its end: (exit code, stdout, stderr, its user+sys CPU seconds, threads included).

    The CPU comes from wait4()'s rusage of that one child, so nothing else the bench reaps is
    counted. After `timeout` seconds the child is killed and the exit code is None.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        killed = []
        timer = threading.Timer(timeout, lambda: (killed.append(True), p.kill()))
        timer.start()
        try:
            _, status, ru = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
        code = None if killed else p.returncode
        out.seek(0)
        err.seek(0)
        return code, out.read().decode(errors="replace"), err.read().decode(errors="replace"), \
            ru.ru_utime + ru.ru_stime
