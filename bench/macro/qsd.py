"""qemu-storage-daemon instances: a source with disks to mirror, a destination exporting targets."""

import json
from pathlib import Path

from procs import Proc, wait_for_unix_socket
from qmp import QmpClient


class StorageDaemon:
    """One qemu-storage-daemon with a QMP monitor; `disks` is [(node_name, image_path)].

    export_sock: when set, every disk is exported writable over NBD on that UNIX socket under its
    node name, and its file node gets cache.no-flush=on (flushes are acknowledged without
    fsync, so the destination disk's speed does not enter the figures).
    """

    def __init__(self, name, rundir, disks, export_sock=None):
        rundir = Path(rundir)
        self.qmp_path = str(rundir / f"{name}-qmp.sock")
        args = ["qemu-storage-daemon",
                "--chardev", f"socket,path={self.qmp_path},server=on,wait=off,id=mon0",
                "--monitor", "chardev=mon0"]
        for node, image in disks:
            file_node = {"driver": "file", "filename": str(image), "node-name": f"f-{node}"}
            if export_sock:
                file_node["cache"] = {"no-flush": True}
            args += ["--blockdev", json.dumps(file_node),
                     "--blockdev", json.dumps({"driver": "raw", "file": f"f-{node}", "node-name": node})]
        if export_sock:
            args += ["--nbd-server", f"addr.type=unix,addr.path={export_sock}"]
            for i, (node, _) in enumerate(disks):
                args += ["--export", f"type=nbd,id=e{i},node-name={node},name={node},writable=on"]
        self.proc = Proc(args, rundir / f"{name}.log")
        wait_for_unix_socket(self.qmp_path, proc=self.proc)
        if export_sock:
            wait_for_unix_socket(export_sock, proc=self.proc)
        self.qmp = QmpClient(self.qmp_path)

    def stop(self):
        self.qmp.close()
        rc = self.proc.stop()
        if rc not in (0, -15):
            raise RuntimeError(f"qemu-storage-daemon exited with {rc}: {self.proc.output()[-400:]}")
