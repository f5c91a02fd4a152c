"""Child processes of the bench: started with their stderr kept in a log file, stopped by pid."""

import os
import re
import signal
import socket
import subprocess
import threading
import time


class Proc:
    """One child process; its stdout+stderr go to `log` and are kept for wait_for_line()."""

    def __init__(self, argv, log, env=None):
        self.argv = [str(a) for a in argv]
        self._log = open(log, "ab")
        self._log.write(("$ " + " ".join(self.argv) + "\n").encode())
        self._log.flush()
        self._lines = []
        self._cv = threading.Condition()
        self.p = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, env=env)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    @property
    def pid(self):
        return self.p.pid

    def _drain(self):
        for raw in self.p.stdout:
            self._log.write(raw)
            self._log.flush()
            with self._cv:
                self._lines.append(raw.decode(errors="replace"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_for_line(self, pattern, timeout=20.0):
        """Returns the regex match of the first output line matching pattern."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cv:
            while True:
                for line in self._lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self._lines)
                if self.p.poll() is not None:
                    raise RuntimeError(f"{self.argv[0]} exited ({self.p.returncode}) before "
                                       f"printing /{pattern}/: {''.join(self._lines[-5:])}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{self.argv[0]}: no /{pattern}/ within {timeout}s")
                self._cv.wait(min(left, 0.2))

    def output(self):
        with self._cv:
            return "".join(self._lines)

    def stop(self, timeout=10.0):
        """SIGTERM, then SIGKILL after timeout; returns the exit code."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._reader.join(2)
        self._log.close()
        return self.p.returncode


def wait_for_unix_socket(path, timeout=20.0, proc=None):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc is not None and proc.p.poll() is not None:
            raise RuntimeError(f"{proc.argv[0]} exited ({proc.p.returncode}) before creating "
                               f"{path}: {proc.output()[-400:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)


def wait_for_tcp_listen(port, timeout=20.0):
    """Waits until something listens on 127.0.0.1:port, without connecting to it."""
    want = f"0100007F:{port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/net/tcp") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[1] == want and parts[3] == "0A":
                    return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listening on 127.0.0.1:{port} within {timeout}s")
        time.sleep(0.02)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
