"""The workloads W1..W5. Each run() takes a started-per-run transport and returns a RunResult."""

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import images
from procstat import TreeMonitor
from qsd import StorageDaemon

MiB = 1 << 20


@dataclass
class RunResult:
    ok: bool = False             # ran to the end and the destination data verified identical
    error: str = ""
    bytes: int = 0               # bytes the workload moved (logical, for MB/s)
    seconds: float = 0.0
    relay_cpu_s: float | None = None
    relay_peak_kib: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def mb_s(self):
        return self.bytes / self.seconds / 1e6 if self.ok and self.seconds > 0 else None


def _nbd_uri(sock, export):
    return f"nbd+unix:///{export}?socket={sock}"


def _measure(transport, res, body):
    """Runs body() inside a relay monitor; fills the CPU/RSS fields of res."""
    with TreeMonitor(transport.relay_pids()) as mon:
        body()
        if transport.relay_pids():
            time.sleep(0.3)  # let forking relays reap their per-connection children
    if transport.relay_pids():
        res.relay_cpu_s = mon.cpu
        res.relay_peak_kib = mon.peak_kib


class Mirror:
    """blockdev-mirror sync=full of N disks at once, READY -> block-job-cancel -> COMPLETED."""

    def __init__(self, key, title, sources, disk_size):
        self.key, self.title = key, title
        self.sources = sources      # callables returning the source image paths (made lazily)
        self.disk_size = disk_size

    def run(self, transport, rundir):
        res = RunResult()
        srcs = [make() for make in self.sources]
        dsts = [images.blank_image(Path(rundir) / f"dst{i}.img", self.disk_size) for i in range(len(srcs))]
        dst_sock = str(Path(rundir) / "dst-nbd.sock")
        dest = StorageDaemon("dst", rundir, [(f"disk{i}", d) for i, d in enumerate(dsts)], dst_sock)
        src = None
        try:
            src = StorageDaemon("src", rundir, [(f"src{i}", s) for i, s in enumerate(srcs)])
            sock = transport.start(dst_sock, rundir)
            try:
                q = src.qmp
                for i in range(len(srcs)):
                    q.execute("blockdev-add", {"driver": "nbd", "node-name": f"tgt{i}", "export": f"disk{i}",
                                               "server": {"type": "unix", "path": sock}})
                timeout = max(300.0, self.disk_size * len(srcs) / 20e6)

                def body():
                    t0 = time.monotonic()
                    for i in range(len(srcs)):
                        q.execute("blockdev-mirror", {"job-id": f"m{i}", "device": f"src{i}",
                                                      "target": f"tgt{i}", "sync": "full"})
                    for i in range(len(srcs)):
                        q.wait_event("BLOCK_JOB_READY", {"device": f"m{i}"}, timeout)
                        q.execute("block-job-cancel", {"device": f"m{i}"})
                    for i in range(len(srcs)):
                        ev = q.wait_event("BLOCK_JOB_COMPLETED", {"device": f"m{i}"}, timeout)
                        if "error" in ev["data"]:
                            raise RuntimeError(f"mirror m{i} failed: {ev['data']['error']}")
                    res.seconds = time.monotonic() - t0
                    for i in range(len(srcs)):
                        q.execute("blockdev-del", {"node-name": f"tgt{i}"})

                _measure(transport, res, body)
            finally:
                transport.stop()
        finally:
            if src:
                src.stop()
            dest.stop()
        bad = [str(d) for s, d in zip(srcs, dsts) if not images.identical(s, d)]
        res.bytes = self.disk_size * len(srcs)
        res.ok = not bad
        res.error = f"destination differs from source: {', '.join(bad)}" if bad else ""
        for d in dsts:
            d.unlink()
        return res


class NbdCopy:
    """nbdcopy of the source image into the destination export through the transport."""

    def __init__(self, key, title, source, disk_size):
        self.key, self.title = key, title
        self.source = source
        self.disk_size = disk_size

    def run(self, transport, rundir):
        res = RunResult()
        srcimg = self.source()
        dst = images.blank_image(Path(rundir) / "dst0.img", self.disk_size)
        dst_sock = str(Path(rundir) / "dst-nbd.sock")
        dest = StorageDaemon("dst", rundir, [("disk0", dst)], dst_sock)
        try:
            sock = transport.start(dst_sock, rundir)
            try:
                def body():
                    t0 = time.monotonic()
                    p = subprocess.run(["nbdcopy", str(srcimg), _nbd_uri(sock, "disk0")],
                                       capture_output=True, text=True, timeout=max(300, self.disk_size / 20e6))
                    res.seconds = time.monotonic() - t0
                    if p.returncode != 0:
                        raise RuntimeError(f"nbdcopy failed ({p.returncode}): {p.stderr.strip()[-300:]}")

                _measure(transport, res, body)
            finally:
                transport.stop()
        finally:
            dest.stop()
        res.bytes = self.disk_size
        res.ok = images.identical(srcimg, dst)
        res.error = "" if res.ok else "destination differs from source"
        dst.unlink()
        return res


class Latency:
    """4 KiB random writes at queue depth 1 (bench/tools/nbd_latency), read back directly."""

    def __init__(self, key, title, tool, disk_size, requests, seconds):
        self.key, self.title = key, title
        self.tool, self.disk_size = tool, disk_size
        self.requests, self.seconds = requests, seconds

    def run(self, transport, rundir):
        res = RunResult()
        dst = images.blank_image(Path(rundir) / "dst0.img", self.disk_size)
        dst_sock = str(Path(rundir) / "dst-nbd.sock")
        dest = StorageDaemon("dst", rundir, [("disk0", dst)], dst_sock)
        try:
            sock = transport.start(dst_sock, rundir)
            try:
                out = {}

                def body():
                    p = subprocess.run([self.tool, "--uri", _nbd_uri(sock, "disk0"),
                                        "--requests", str(self.requests), "--seconds", str(self.seconds),
                                        "--verify-uri", _nbd_uri(dst_sock, "disk0")],
                                       capture_output=True, text=True, timeout=self.seconds + 300)
                    if p.returncode not in (0, 3):
                        raise RuntimeError(f"nbd_latency failed ({p.returncode}): {p.stderr.strip()[-300:]}")
                    out.update(json.loads(p.stdout))

                _measure(transport, res, body)
            finally:
                transport.stop()
        finally:
            dest.stop()
        dst.unlink()
        res.bytes = out["requests"] * 4096
        res.seconds = out["elapsed_s"]
        res.extra = {k: out[k] for k in ("iops", "mean_us", "p50_us", "p90_us", "p99_us", "max_us",
                                         "requests", "verified_blocks")}
        res.ok = out["mismatches"] == 0
        res.error = "" if res.ok else f"{out['mismatches']} of {out['verified_blocks']} blocks differ"
        return res


def build(workdir, size, w5_disks, w5_disk_size, w4_requests, w4_seconds, latency_tool):
    """The workloads by key, their source images created on first use."""
    imgdir = Path(workdir) / "images"
    imgdir.mkdir(parents=True, exist_ok=True)
    rand = lambda: images.random_image(imgdir / f"random-{size}.img", size)
    sparse = lambda: images.sparse_image(imgdir / f"sparse-{size}.img", size)
    w5 = [(lambda i=i: images.random_image(imgdir / f"w5-{i}-{w5_disk_size}.img", w5_disk_size))
          for i in range(w5_disks)]
    g = lambda n: f"{n / (1 << 30):g} GiB" if n >= 1 << 30 else f"{n / MiB:g} MiB"
    return {
        "W1": Mirror("W1", f"blockdev-mirror sync=full, {g(size)} random", [rand], size),
        "W2": NbdCopy("W2", f"nbdcopy {g(size)} random", rand, size),
        "W3": Mirror("W3", f"blockdev-mirror sync=full, {g(size)} sparse (25% data, 1 MiB extents)",
                     [sparse], size),
        "W4": Latency("W4", f"4 KiB random writes QD1, {w4_requests} requests (max {w4_seconds:g} s)",
                      latency_tool, 1 << 30, w4_requests, w4_seconds),
        "W5": Mirror("W5", f"{w5_disks} x {g(w5_disk_size)} random mirrored at once, one transport",
                     w5, w5_disk_size),
    }
