"""The workloads W1..W5. Each run() takes a started-per-run transport and returns a RunResult."""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import images
from procstat import TreeMonitor, cpu_seconds, run_counting_cpu
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
    src_cpu_s: float | None = None   # the source side: its QEMU (W1/W3/W5), nbdcopy (W2), nbd_latency (W4)
    dst_cpu_s: float | None = None   # the destination QEMU
    extra: dict = field(default_factory=dict)

    @property
    def mb_s(self):
        return self.bytes / self.seconds / 1e6 if self.ok and self.seconds > 0 else None


def _measure(transport, res, body, dest, src=None):
    """Runs body() inside a relay monitor; fills the CPU/RSS fields of res.

    dest and src are the StorageDaemons whose CPU is counted over the same window (src is None
    when the source side is a tool run by body(), which then sets res.src_cpu_s itself).
    """
    qemus = [dest] + ([src] if src else [])
    cpu0 = [cpu_seconds([q.pid]) for q in qemus]
    with TreeMonitor(transport.relay_pids()) as mon:
        body()
        cpu1 = [cpu_seconds([q.pid]) for q in qemus]
        if transport.relay_pids():
            time.sleep(0.3)  # let forking relays reap their per-connection children
    res.dst_cpu_s = cpu1[0] - cpu0[0]
    if src:
        res.src_cpu_s = cpu1[1] - cpu0[1]
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
        dst_addr = transport.listen(rundir)
        dest = StorageDaemon("dst", rundir, [(f"disk{i}", d) for i, d in enumerate(dsts)], dst_addr)
        src = None
        try:
            src = StorageDaemon("src", rundir, [(f"src{i}", s) for i, s in enumerate(srcs)])
            addr = transport.start(dst_addr, rundir)
            try:
                q = src.qmp
                for i in range(len(srcs)):
                    src.add_nbd_target(f"tgt{i}", f"disk{i}", addr)
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

                _measure(transport, res, body, dest, src)
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
        dst_addr = transport.listen(rundir)
        dest = StorageDaemon("dst", rundir, [("disk0", dst)], dst_addr)
        try:
            addr = transport.start(dst_addr, rundir)
            try:
                def body():
                    t0 = time.monotonic()
                    timeout = max(300, self.disk_size / 20e6)
                    code, _, err, res.src_cpu_s = run_counting_cpu(["nbdcopy", srcimg, addr.uri("disk0")], timeout)
                    res.seconds = time.monotonic() - t0
                    if code != 0:
                        why = f"timed out after {timeout:.0f} s" if code is None else f"exit code {code}"
                        raise RuntimeError(f"nbdcopy failed ({why}): {err.strip()[-300:]}")

                _measure(transport, res, body, dest)
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
        dst_addr = transport.listen(rundir)
        dest = StorageDaemon("dst", rundir, [("disk0", dst)], dst_addr)
        try:
            addr = transport.start(dst_addr, rundir)
            try:
                out = {}

                def body():
                    # The read-back check goes to the destination directly; its CPU is counted too.
                    code, stdout, err, res.src_cpu_s = run_counting_cpu(
                        [self.tool, "--uri", addr.uri("disk0"), "--requests", self.requests,
                         "--seconds", self.seconds, "--verify-uri", dst_addr.uri("disk0")], self.seconds + 300)
                    if code not in (0, 3):
                        raise RuntimeError(f"nbd_latency failed ({code}): {err.strip()[-300:]}")
                    out.update(json.loads(stdout))

                _measure(transport, res, body, dest)
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


def build(workdir, size, w5_disks, w5_disk_size, w4_requests, w4_seconds, latency_tool, w6_size):
    """The workloads by key, their source images created on first use."""
    imgdir = Path(workdir) / "images"
    imgdir.mkdir(parents=True, exist_ok=True)
    rand = lambda: images.random_image(imgdir / f"random-{size}.img", size)
    sparse = lambda: images.sparse_image(imgdir / f"sparse-{size}.img", size)
    w5 = [(lambda i=i: images.random_image(imgdir / f"w5-{i}-{w5_disk_size}.img", w5_disk_size))
          for i in range(w5_disks)]
    w6 = lambda: images.random_image(imgdir / f"random-{w6_size}.img", w6_size)
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
        # W1's mirror at another size, meant for transports with a delay line on their TCP hop.
        "W6": Mirror("W6", f"blockdev-mirror sync=full, {g(w6_size)} random, across a long link "
                     "(transports ...@<N>ms: N ms each way)", [w6], w6_size),
    }
