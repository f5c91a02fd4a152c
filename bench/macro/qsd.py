"""qemu-storage-daemon instances: a source with disks to mirror, a destination exporting targets."""

import json
from pathlib import Path

from nbdaddr import tls_object_qmp
from procs import Proc, wait_for_unix_socket
from qmp import QmpClient


class StorageDaemon:
    """One qemu-storage-daemon with a QMP monitor; `disks` is [(node_name, image_path)].

    export: an NbdAddress; when set, every disk is exported writable over NBD there (UNIX socket,
    TCP, or TCP with x509 TLS) under its node name, and its file node gets cache.no-flush=on
    (flushes are acknowledged without fsync, so the destination disk's speed does not enter the
    figures).
    """

    def __init__(self, name, rundir, disks, export=None):
        rundir = Path(rundir)
        self.qmp_path = str(rundir / f"{name}-qmp.sock")
        args = ["qemu-storage-daemon",
                "--chardev", f"socket,path={self.qmp_path},server=on,wait=off,id=mon0",
                "--monitor", "chardev=mon0"]
        for node, image in disks:
            file_node = {"driver": "file", "filename": str(image), "node-name": f"f-{node}"}
            if export:
                file_node["cache"] = {"no-flush": True}
            args += ["--blockdev", json.dumps(file_node),
                     "--blockdev", json.dumps({"driver": "raw", "file": f"f-{node}", "node-name": node})]
        if export:
            args += export.nbd_server_args()
            for i, (node, _) in enumerate(disks):
                args += ["--export", f"type=nbd,id=e{i},node-name={node},name={node},writable=on"]
        self.proc = Proc(args, rundir / f"{name}.log")
        wait_for_unix_socket(self.qmp_path, proc=self.proc)
        if export:
            export.wait_listening(proc=self.proc)
        self.qmp = QmpClient(self.qmp_path)
        self._client_tls = {}  # certificate directory -> tls-creds object id

    @property
    def pid(self):
        return self.proc.pid

    def add_nbd_target(self, node, export, addr):
        """blockdev-add of an NBD client node for `export` at addr; a TLS client object on first use."""
        opts = {"driver": "nbd", "node-name": node, "export": export, "server": addr.qapi()}
        if addr.tls_dir:
            if addr.tls_dir not in self._client_tls:
                # Client endpoint: QEMU presents client-cert.pem/client-key.pem from the directory
                # and checks the server's certificate against ca-cert.pem and the host dialled.
                obj = f"tls-client{len(self._client_tls)}"
                self.qmp.execute("object-add", tls_object_qmp(obj, "client", addr.tls_dir))
                self._client_tls[addr.tls_dir] = obj
            opts["tls-creds"] = self._client_tls[addr.tls_dir]
        self.qmp.execute("blockdev-add", opts)

    def stop(self):
        self.qmp.close()
        rc = self.proc.stop()
        if rc not in (0, -15):
            raise RuntimeError(f"qemu-storage-daemon exited with {rc}: {self.proc.output()[-400:]}")
