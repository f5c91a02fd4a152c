#!/usr/bin/env python3
"""nbdtunnel macro benchmark: the same workloads over direct NBD, nbdtunnel, socat and ssh.

Usage: run_bench.py --nbdtunnel BIN --latency-tool BIN [options]; see --help and bench/README.md.
--tls compares the encrypted transports instead: W1 and W2 over direct, QEMU's own NBD over TCP
and over mutual TLS, nbdtunnel without and with TLS, and ssh with AES-128-GCM.
--w6 runs W6, a mirror across a 20 ms round trip: QEMU's own NBD on TCP and nbdtunnel, each with
and without bench/tools/delay_line on its TCP hop (a transport name ending in @<N>ms).
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys

sys.dont_write_bytecode = True
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
import transports as tp  # noqa: E402
import workloads as wl  # noqa: E402

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRANSPORTS = "direct,naive-relay,nbdtunnel,socat,socat-b262144,ssh,ssh-aes128-gcm"
TLS_TRANSPORTS = "direct,qemu-tcp,qemu-tls,nbdtunnel:default,nbdtunnel:copy,nbdtunnel-tls,ssh-aes128-gcm"
# W6: the line's own cost (qemu-tcp@0ms against qemu-tcp), then both across the 20 ms round trip.
W6_TRANSPORTS = ("qemu-tcp,qemu-tcp@0ms,nbdtunnel:default,nbdtunnel:default@0ms,qemu-tcp@10ms,nbdtunnel:default@10ms,"
                 "nbdtunnel:copy@10ms")


def parse_size(s):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?", s.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (e.g. 256M, 2G)")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nbdtunnel", required=True, help="the nbdtunnel binary")
    p.add_argument("--latency-tool", required=True, help="bench/tools nbd_latency binary")
    p.add_argument("--delay-line", default=None,
                   help="bench/tools delay_line binary (transports named ...@<N>ms; default: next to "
                        "--latency-tool)")
    p.add_argument("--naive-relay", default=None,
                   help="bench/tools naive_relay binary (the naive-relay transport; default: next "
                        "to --latency-tool)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 256 MiB, W5 4 x 64 MiB, 1000 W4 requests, no warm-up, 1 run")
    p.add_argument("--tls", action="store_true",
                   help=f"TLS comparison: workloads W1,W2, transports {TLS_TRANSPORTS}, 5 runs "
                   "(each still settable); results in RESULTS-<date>-tls.md")
    p.add_argument("--w6", action="store_true",
                   help=f"W6 (mirror across a 20 ms round trip): workload W6, transports {W6_TRANSPORTS}, "
                   "3 runs (each still settable); results in RESULTS-<date>-w6.md")
    p.add_argument("--size", type=parse_size, help="image size for W1-W3 (default 2G)")
    p.add_argument("--w6-size", type=parse_size, help="image size for W6 (default 256M)")
    p.add_argument("--w5-disks", type=int, default=4)
    p.add_argument("--w5-disk-size", type=parse_size, help="size of each W5 disk (default 512M)")
    p.add_argument("--w4-requests", type=int, help="W4 requests per run (default 20000)")
    p.add_argument("--w4-seconds", type=float, default=10.0, help="W4 time bound per run (timed requests stop after it)")
    p.add_argument("--runs", type=int, help="measured runs per (transport, workload) (default 3)")
    p.add_argument("--warmup", type=int, help="warm-up runs, discarded (default 1)")
    p.add_argument("--workloads", help="comma list (default W1,W2,W3,W4,W5; --tls: W1,W2)")
    p.add_argument("--transports",
                   help=f"comma list (default {DEFAULT_TRANSPORTS}; --tls: {TLS_TRANSPORTS}); "
                   "'nbdtunnel' means every copy mode offered, 'nbdtunnel:default' one run without "
                   "--copy-mode, 'nbdtunnel-tls' mutual TLS in copy mode (skipped while the binary "
                   "has no --tls-dir), 'qemu-tcp' / 'qemu-tls' QEMU's own NBD over TCP / mutual TLS")
    p.add_argument("--modes", help="nbdtunnel copy modes to run (default: read from --help)")
    p.add_argument("--baseline", help="a second nbdtunnel binary (e.g. a build of the previous commit): "
                   "each nbdtunnel transport gets a 'baseline:<mode>' twin, interleaved in the same run")
    p.add_argument("--nbdtunnel-args", default="", help="extra arguments for both nbdtunnel roles")
    p.add_argument("--workdir", help="scratch directory (default /dev/shm/nbdtunnel-bench if it has room)")
    p.add_argument("--results-dir", default=str(Path(__file__).resolve().parents[1] / "results"))
    p.add_argument("--keep-images", action="store_true")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep every run's directory (its relays' logs, e.g. with --nbdtunnel-args "
                        "'--log-level debug'), not only a failed run's")
    p.add_argument("--note", action="append", default=[],
                   help="a paragraph put at the top of the results file (repeatable)")
    a = p.parse_args()
    quick = a.quick
    a.size = a.size or (256 * MiB if quick else 2 << 30)
    a.w6_size = a.w6_size or (64 * MiB if quick else 256 * MiB)
    a.w5_disk_size = a.w5_disk_size or (64 * MiB if quick else 512 * MiB)
    a.w4_requests = a.w4_requests or (1000 if quick else 20000)
    a.runs = a.runs if a.runs is not None else (1 if quick else 5 if a.tls else 3)
    a.workloads = a.workloads or ("W1,W2" if a.tls else "W6" if a.w6 else "W1,W2,W3,W4,W5")
    # W6 alone means its own transports (a delay line makes no sense for direct, socat, ssh).
    w6_only = a.workloads.replace(" ", "") == "W6"
    a.transports = a.transports or (TLS_TRANSPORTS if a.tls else W6_TRANSPORTS if w6_only else DEFAULT_TRANSPORTS)
    a.warmup = a.warmup if a.warmup is not None else (0 if quick else 1)
    return a


def pick_workdir(a):
    if a.workdir:
        return Path(a.workdir)
    need = 3 * a.size + 2 * a.w5_disks * a.w5_disk_size + 2 * a.w6_size + (2 << 30)
    shm = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    return Path("/dev/shm/nbdtunnel-bench" if shm > need + (4 << 30) else "/var/tmp/nbdtunnel-bench")


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "mem_gib": mem,
            "loadavg_start": os.getloadavg()}


def version(argv, pattern=None):
    """The first line of argv's output (or the first matching pattern)."""
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        lines = (p.stdout + p.stderr).strip().splitlines()
        return next((ln for ln in lines if pattern and re.search(pattern, ln)), lines[0]).strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def make_certs(workdir):
    """A fresh CA, server and client certificate for this bench run, by scripts/make-certs.sh."""
    tls_dir = workdir / "tls"
    shutil.rmtree(tls_dir, ignore_errors=True)
    p = subprocess.run([str(ROOT / "scripts" / "make-certs.sh"), str(tls_dir)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"scripts/make-certs.sh failed: {p.stderr.strip()}")
    return tls_dir


def make_transports(a, workdir):
    """The transports asked for, and {name: reason} for those that cannot run with this binary."""
    wanted = [t.strip() for t in a.transports.split(",") if t.strip()]
    extra = a.nbdtunnel_args.split()
    offered = tp.copy_modes(a.nbdtunnel)
    roles = tuple(offered)
    modes = [m for m in a.modes.split(",") if m] if a.modes else sorted({m for ms in offered.values() for m in ms},
                                                                      key=lambda m: next(
                                                                          (ms.index(m) for ms in offered.values() if m in ms), 0))
    if a.modes and not roles:
        roles = ("dest", "source")  # the user asked for modes: pass them to both roles
    has_tls, has_no_tls = tp.tls_support(a.nbdtunnel)
    # Once the binary speaks TLS, the plain transports say --no-tls (loopback only, as here).
    plain = ["--no-tls"] if has_no_tls else []
    base_plain = ["--no-tls"] if a.baseline and tp.tls_support(a.baseline)[1] else []
    keys = None
    tls_dir = None
    out, skipped = [], {}

    def certs():
        nonlocal tls_dir
        tls_dir = tls_dir or make_certs(workdir)
        return tls_dir

    def add_transport(w):
        nonlocal keys, out
        if w == "direct":
            out.append(tp.Direct())
        elif w == "nbdtunnel":
            out += [tp.Nbdtunnel(a.nbdtunnel, m, roles, extra, plain_flags=plain) for m in modes] or [
                tp.Nbdtunnel(a.nbdtunnel, None, (), extra, plain_flags=plain)]
            if a.baseline:
                out += [tp.Nbdtunnel(a.baseline, m, roles, extra, "baseline", plain_flags=base_plain)
                        for m in modes] or [tp.Nbdtunnel(a.baseline, None, (), extra, "baseline", plain_flags=base_plain)]
        elif w.startswith("nbdtunnel-noresume"):
            # The channel as it was before resume: outbound splice, nothing kept for the peer.
            mode = w.split(":", 1)[1] if ":" in w else None
            t = tp.Nbdtunnel(a.nbdtunnel, mode, roles or ("dest", "source"), extra, "nbdtunnel-noresume",
                             plain_flags=plain, dest_args=["--resume-timeout", "0"])
            out.append(t)
        elif w == "nbdtunnel:default":
            out.append(tp.Nbdtunnel(a.nbdtunnel, None, (), extra, plain_flags=plain))
        elif w.startswith("nbdtunnel:"):
            out.append(tp.Nbdtunnel(a.nbdtunnel, w.split(":", 1)[1], roles or ("dest", "source"), extra,
                                    plain_flags=plain))
        elif w == "nbdtunnel-tls":
            if not has_tls:
                skipped[w] = (f"`{a.nbdtunnel} dest --help` (or `source --help`) offers no --tls-dir: "
                              "this build has no TLS yet")
                return
            # TLS is user-space crypto here (no kTLS), so splice is not on offer: copy mode.
            mode = "copy" if "copy" in modes else None
            t = tp.Nbdtunnel(a.nbdtunnel, mode, roles, extra, tls_dir=certs())
            t.name = "nbdtunnel-tls"
            out.append(t)
        elif w == "naive-relay":
            relay = a.naive_relay or str(Path(a.latency_tool).parent / "naive_relay")
            if not Path(relay).exists():
                skipped[w] = f"{relay} is not built (cmake --build ... --target naive_relay)"
                return
            out.append(tp.NaiveRelay(relay))
        elif w == "qemu-tcp":
            out.append(tp.QemuTcp())
        elif w == "qemu-tls":
            out.append(tp.QemuTls(certs()))
        elif w == "socat":
            out.append(tp.Socat())
        elif w.startswith("socat-b"):
            out.append(tp.Socat(int(w[len("socat-b"):])))
        elif w.startswith("ssh"):
            keys = keys or tp.SshKeys(workdir / "ssh-keys")
            cipher = w[len("ssh-"):] if w != "ssh" else None
            if cipher == "aes128-gcm":
                cipher = "aes128-gcm@openssh.com"
            out.append(tp.Ssh(keys, cipher))
        else:
            raise SystemExit(f"unknown transport {w!r}")

    for spec in wanted:
        w, delay = spec, None
        m = re.fullmatch(r"(.+)@(\d+(?:\.\d+)?)ms", spec)
        if m:
            w, delay = m.group(1), float(m.group(2))
        first = len(out)
        add_transport(w)
        if delay is not None:
            line = a.delay_line or str(Path(a.latency_tool).parent / "delay_line")
            if not Path(line).exists():
                raise SystemExit(f"{line} is not built (cmake --build ... --target delay_line)")
            for t in out[first:]:
                tp.through_delay_line(t, tp.DelayLine(line, delay))
    if not any(t.name in ("direct", "qemu-tcp") or t.name.startswith("qemu-tcp@") for t in out):
        print("note: without 'direct' (or 'qemu-tcp'), no ratios are computed", file=sys.stderr)
    for name, why in skipped.items():
        print(f"note: transport {name} skipped: {why}", file=sys.stderr)
    return out, offered, skipped


def main():
    a = parse_args()
    started = time.monotonic()
    now = datetime.datetime.now()
    workdir = pick_workdir(a)
    workdir.mkdir(parents=True, exist_ok=True)
    transports, offered, skipped = make_transports(a, workdir)
    works = wl.build(workdir, a.size, a.w5_disks, a.w5_disk_size, a.w4_requests, a.w4_seconds,
                     a.latency_tool, a.w6_size)
    keys = [k.strip() for k in a.workloads.split(",") if k.strip()]
    for k in keys:
        if k not in works:
            raise SystemExit(f"unknown workload {k!r}; have {', '.join(works)}")

    settings = {
        "mode": ("TLS comparison (--tls)" if a.tls else "W6 (--w6)" if a.w6 else "full") if not a.quick else
                ("quick, TLS comparison" if a.tls else "quick, W6" if a.w6 else "quick"),
        "image size (W1-W3)": f"{a.size / MiB:g} MiB",
        "W5": f"{a.w5_disks} x {a.w5_disk_size / MiB:g} MiB",
        "W4": f"{a.w4_requests} requests of 4 KiB, queue depth 1, 1 GiB export, time bound {a.w4_seconds:g} s, "
              "200 untimed warm-up requests",
        "runs": f"{a.warmup} warm-up (discarded) + {a.runs} measured, median reported",
        "workloads": ",".join(keys),
        "destination": "qemu-storage-daemon raw over file, cache.no-flush=on (flushes acknowledged "
                       "without fsync); images on " + str(workdir),
        "mirror": "blockdev-mirror sync=full with QEMU defaults (granularity, buf-size), "
                  "timed from blockdev-mirror to BLOCK_JOB_COMPLETED after block-job-cancel at READY",
        "nbdcopy": "nbdcopy SRC.img URI with its defaults; URI nbd+unix:///disk0?socket=... (nbd://127.0.0.1:PORT/disk0 "
                   "for qemu-tcp, nbds://127.0.0.1:PORT/disk0?tls-certificates=DIR for qemu-tls)",
        "nbdtunnel copy modes offered": json.dumps(offered) if offered else "none (no --copy-mode in --help)",
        "nbdtunnel extra args": a.nbdtunnel_args or "none",
        "CPU columns": "user+sys CPU seconds per GiB over the timed window: the relay's processes; the source "
                       "side (its qemu-storage-daemon in W1/W3/W5, nbdcopy in W2, nbd_latency in W4); the "
                       "destination qemu-storage-daemon; and their sum (every process on the data path)",
        "versions": "; ".join([version([a.nbdtunnel, "--version"]), version(["qemu-storage-daemon", "--version"]),
                               version(["nbdcopy", "--version"]), version(["socat", "-V"], r"socat version").split(" on ")[0],
                               version(["ssh", "-V"]), version(["openssl", "version"]),
                               version(["certtool", "--version"], r"certtool")]),
    }
    if "W6" in keys:
        settings["W6"] = (f"{a.w6_size / MiB:g} MiB; a transport named ...@<N>ms has bench/tools/delay_line on "
                          "its TCP hop, holding every chunk N ms each way; × direct is against qemu-tcp with "
                          "the same delay")
    meta = {"date": now.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "settings": settings}
    print(f"nbdtunnel macro bench {meta['date']}; workdir {workdir}", flush=True)
    for k, v in settings.items():
        print(f"  {k}: {v}", flush=True)

    runs = []
    total = a.warmup + a.runs
    for k in keys:
        w = works[k]
        for i in range(total):
            for t in transports:
                rundir = workdir / "runs" / re.sub(r"[^A-Za-z0-9_-]", "_", f"{k}-{i}-{t.name}")
                shutil.rmtree(rundir, ignore_errors=True)
                rundir.mkdir(parents=True)
                t_run = time.monotonic()
                try:
                    r = w.run(t, rundir)
                except Exception as e:  # noqa: BLE001 - one failed run must not stop the bench
                    r = wl.RunResult(ok=False, error=f"{type(e).__name__}: {e}"[:300])
                    try:
                        t.stop()
                    except Exception:  # noqa: BLE001
                        pass
                rec = {"workload": k, "transport": t.name, "run": i, "warmup": i < a.warmup, "ok": r.ok,
                       "error": r.error, "bytes": r.bytes, "seconds": r.seconds, "mb_s": r.mb_s,
                       "relay_cpu_s": r.relay_cpu_s, "relay_peak_kib": r.relay_peak_kib,
                       "src_cpu_s": r.src_cpu_s, "dst_cpu_s": r.dst_cpu_s, "extra": r.extra}
                runs.append(rec)
                tag = "warm-up" if rec["warmup"] else f"run {i - a.warmup + 1}/{a.runs}"
                if r.ok:
                    cpu = f"{r.relay_cpu_s:.2f} s" if r.relay_cpu_s is not None else "-"
                    cpu += f", src {r.src_cpu_s:.2f} s" if r.src_cpu_s is not None else ""
                    cpu += f", dst {r.dst_cpu_s:.2f} s" if r.dst_cpu_s is not None else ""
                    lat = f" p50 {r.extra['p50_us']:.0f} us p99 {r.extra['p99_us']:.0f} us" if r.extra else ""
                    print(f"{k} {tag:9} {t.name:24} {r.mb_s:8.1f} MB/s  relay cpu {cpu}{lat}  verified  [{time.monotonic() - t_run:.1f} s]",
                          flush=True)
                    if not a.keep_logs:
                        shutil.rmtree(rundir, ignore_errors=True)
                else:
                    print(f"{k} {tag:9} {t.name:24} FAILED: {r.error} (logs in {rundir})", flush=True)

    meta["elapsed_min"] = (time.monotonic() - started) / 60
    meta["machine"]["loadavg_end"] = os.getloadavg()
    rows = report.summarize(runs, keys, [t.name for t in transports])
    titles = {k: works[k].title for k in keys}
    descs = {t.name: t.description for t in transports}
    md = report.markdown(meta, rows, titles, descs, skipped, a.note)
    res = Path(a.results_dir)
    res.mkdir(parents=True, exist_ok=True)
    stamp = (now.strftime("%Y-%m-%dT%H%M") + ("-tls" if a.tls else "") + ("-w6" if a.w6 else "")
             + ("-quick" if a.quick else ""))
    (res / f"RESULTS-{stamp}.md").write_text(md)
    (res / f"results-{stamp}.json").write_text(json.dumps(
        {"meta": meta, "workloads": titles, "transports": descs, "skipped": skipped, "summary": rows,
         "runs": runs}, indent=1))
    print()
    print(md)
    print(f"written: {res}/RESULTS-{stamp}.md and results-{stamp}.json")
    if not a.keep_images:
        shutil.rmtree(workdir / "images", ignore_errors=True)
    return 0 if all(r["passed"] == r["runs"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
