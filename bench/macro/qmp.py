"""A tiny synchronous QMP client: greeting, capabilities, commands by id, events kept apart."""

import json
import socket
import time


class QmpError(Exception):
    """A QMP command returned an error, or the connection failed."""


class QmpClient:
    def __init__(self, path, timeout=30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(path)
                break
            except OSError as e:
                self._sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"cannot connect to QMP socket {path}: {e}") from e
                time.sleep(0.05)
        self._file = self._sock.makefile("rb")
        self._events = []
        self._next_id = 0
        greeting = self._read()
        if "QMP" not in greeting:
            raise QmpError(f"{path}: not a QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def close(self):
        try:
            self._file.close()
            self._sock.close()
        except OSError:
            pass

    def _read(self, timeout=None):
        self._sock.settimeout(timeout)
        line = self._file.readline()
        if not line:
            raise QmpError("QMP connection closed")
        return json.loads(line)

    def execute(self, cmd, args=None, timeout=60.0):
        """Runs one command and returns its 'return' value; events seen meanwhile are kept."""
        self._next_id += 1
        msg = {"execute": cmd, "id": self._next_id}
        if args is not None:
            msg["arguments"] = args
        self._sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read(timeout)
            if "event" in r:
                self._events.append(r)
            elif r.get("id") == self._next_id:
                if "error" in r:
                    raise QmpError(f"{cmd}: {r['error'].get('desc', r['error'])}")
                return r.get("return")

    def wait_event(self, name, match=None, timeout=60.0):
        """Returns the first event called `name` whose data contains every item of `match`."""
        match = match or {}

        def fits(ev):
            return ev["event"] == name and all(ev.get("data", {}).get(k) == v for k, v in match.items())

        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self._events):
                if fits(ev):
                    return self._events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"timed out after {timeout:.0f}s waiting for {name} {match}")
            try:
                self._events.append(self._read(left))
            except socket.timeout:
                pass
