"""Where an NBD server listens and a client connects: a UNIX socket, or TCP with or without TLS.

One value says it for every consumer: qemu-storage-daemon's --nbd-server, QMP's blockdev-add
(SocketAddress), and libnbd URIs for nbdcopy and nbd_latency.
"""

from procs import wait_for_tcp_listen, wait_for_unix_socket

# QEMU's TLS objects in the bench accept TLS 1.3 only, so a run cannot quietly fall back to 1.2.
TLS13_PRIORITY = "NORMAL:-VERS-ALL:+VERS-TLS1.3"


class NbdAddress:
    """A UNIX socket path, or host:port on TCP; tls_dir set means x509 TLS with that directory."""

    def __init__(self, path=None, host=None, port=None, tls_dir=None):
        if (path is None) == (host is None):
            raise ValueError("an NbdAddress is either a UNIX path or a TCP host:port")
        if tls_dir and path:
            raise ValueError("TLS is only set up for TCP addresses here")
        self.path, self.host, self.port, self.tls_dir = path, host, port, tls_dir

    @classmethod
    def unix(cls, path):
        return cls(path=str(path))

    @classmethod
    def tcp(cls, host, port, tls_dir=None):
        return cls(host=host, port=int(port), tls_dir=str(tls_dir) if tls_dir else None)

    def __str__(self):
        if self.path:
            return f"unix:{self.path}"
        return f"tcp:{self.host}:{self.port}" + (f" tls({self.tls_dir})" if self.tls_dir else "")

    def qapi(self):
        """The QAPI SocketAddress (blockdev-add's `server`)."""
        if self.path:
            return {"type": "unix", "path": self.path}
        return {"type": "inet", "host": self.host, "port": str(self.port)}

    def nbd_server_args(self, tls_id="tls0"):
        """qemu-storage-daemon arguments for an NBD server listening here (TLS object included)."""
        if self.path:
            return ["--nbd-server", f"addr.type=unix,addr.path={self.path}"]
        args = ["--nbd-server", f"addr.type=inet,addr.host={self.host},addr.port={self.port}"]
        if self.tls_dir:
            args[-1] += f",tls-creds={tls_id}"
            args = ["--object", tls_object_opts(tls_id, "server", self.tls_dir)] + args
        return args

    def uri(self, export):
        """The libnbd URI of `export` (nbds:// with the certificate directory under TLS)."""
        if self.path:
            return f"nbd+unix:///{export}?socket={self.path}"
        if self.tls_dir:
            return f"nbds://{self.host}:{self.port}/{export}?tls-certificates={self.tls_dir}"
        return f"nbd://{self.host}:{self.port}/{export}"

    def wait_listening(self, proc=None):
        if self.path:
            wait_for_unix_socket(self.path, proc=proc)
        else:
            wait_for_tcp_listen(self.port)


def tls_object_opts(obj_id, endpoint, tls_dir):
    """--object value of a tls-creds-x509 that verifies its peer (mutual TLS), TLS 1.3 only."""
    return (f"tls-creds-x509,id={obj_id},endpoint={endpoint},dir={tls_dir},verify-peer=on,"
            f"priority={TLS13_PRIORITY}")


def tls_object_qmp(obj_id, endpoint, tls_dir):
    """The same object as QMP object-add arguments."""
    return {"qom-type": "tls-creds-x509", "id": obj_id, "endpoint": endpoint, "dir": str(tls_dir),
            "verify-peer": True, "priority": TLS13_PRIORITY}
