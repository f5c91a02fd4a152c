"""Summaries of the runs: a Markdown report and the JSON record."""

import statistics

GiB = 1 << 30


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _per_gib(runs, key):
    """Median over runs of runs[key] per GiB moved (None where a run has no figure)."""
    return _median([r[key] / (r["bytes"] / GiB) for r in runs if r.get(key) is not None and r["bytes"]])


def summarize(runs, workloads, transports):
    """One row per (workload, transport) from the measured (non-warm-up) runs."""
    rows = []
    for wk in workloads:
        direct = None
        ref_rows = {}  # "<N>ms" -> the qemu-tcp@<N>ms row
        for t in transports:
            rs = [r for r in runs if r["workload"] == wk and r["transport"] == t and not r["warmup"]]
            if not rs:
                continue
            good = [r for r in rs if r["ok"]]
            row = {
                "workload": wk, "transport": t, "runs": len(rs), "passed": len(good),
                "errors": sorted({r["error"] for r in rs if not r["ok"]}),
                "mb_s": _median([r["mb_s"] for r in good]),
                "mb_s_all": [r["mb_s"] for r in good],
                "cpu_s_per_gib": _per_gib(good, "relay_cpu_s"),
                "src_cpu_s_per_gib": _per_gib(good, "src_cpu_s"),
                "dst_cpu_s_per_gib": _per_gib(good, "dst_cpu_s"),
                "all_cpu_s_per_gib": _median([sum(r.get(k) or 0 for k in ("relay_cpu_s", "src_cpu_s", "dst_cpu_s"))
                                              / (r["bytes"] / GiB) for r in good
                                              if r["bytes"] and r.get("dst_cpu_s") is not None]),
                "peak_rss_mib": max([r["relay_peak_kib"] / 1024 for r in good if r["relay_peak_kib"]],
                                    default=None),
            }
            for k in ("p50_us", "p99_us", "iops"):
                row[k] = _median([r["extra"].get(k) for r in good])
            if t == "direct" or (t == "qemu-tcp" and direct is None):
                direct = row
            if t.startswith("qemu-tcp@"):
                ref_rows[t.split("@", 1)[1]] = row
            # A transport across the delay line is set against qemu-tcp across the same delay.
            ref = ref_rows.get(t.split("@", 1)[1]) if "@" in t else direct
            row["ratio"] = (row["mb_s"] / ref["mb_s"]) if ref and ref["mb_s"] and row["mb_s"] else None
            if direct and row["p50_us"] is not None and direct["p50_us"] is not None:
                row["added_p50_us"] = row["p50_us"] - direct["p50_us"]
                row["added_p99_us"] = row["p99_us"] - direct["p99_us"]
            rows.append(row)
    return rows


def delay_cost(rows):
    """Lines reading the delay-line rows: the line's own cost (a transport at @0ms against itself
    without the line) and each transport across a delay against qemu-tcp across the same delay."""
    out = []
    by = {(r["workload"], r["transport"]): r for r in rows}
    for (wk, t), r in by.items():
        if "@" not in t or not r["mb_s"]:
            continue
        base, delay = t.split("@", 1)
        plain = by.get((wk, base))
        if delay == "0ms" and plain and plain["mb_s"]:
            out.append(f"- {wk}: {t} {r['mb_s']:.0f} MB/s = {r['mb_s'] / plain['mb_s']:.2f}× {base} without the "
                       f"line ({plain['mb_s']:.0f} MB/s): the delay line's own cost")
        ref = by.get((wk, f"qemu-tcp@{delay}"))
        if base != "qemu-tcp" and ref and ref["mb_s"]:
            out.append(f"- {wk}: {t} {r['mb_s']:.0f} MB/s = {r['mb_s'] / ref['mb_s']:.2f}× qemu-tcp@{delay} "
                       f"({ref['mb_s']:.0f} MB/s)")
    return out


def _f(v, fmt):
    return "—" if v is None else format(v, fmt)


# (encrypted, its plain reference): the pairs the TLS cost is read from, when both ran.
# nbdtunnel-tls runs in copy mode, so nbdtunnel:copy is its like-for-like reference; plain
# nbdtunnel (default mode) is what an operator who turns TLS on moves away from.
TLS_PAIRS = [("qemu-tls", "qemu-tcp"), ("nbdtunnel-tls", "nbdtunnel:copy"), ("nbdtunnel-tls", "nbdtunnel")]


def tls_cost(rows):
    """Lines comparing each encrypted transport with its plain reference, per workload."""
    out = []
    by = {(r["workload"], r["transport"]): r for r in rows}
    for wk in dict.fromkeys(r["workload"] for r in rows):
        for enc, ref in TLS_PAIRS:
            e, p = by.get((wk, enc)), by.get((wk, ref))
            if not e or not p or not e["mb_s"] or not p["mb_s"]:
                continue
            extra = ""
            if e["all_cpu_s_per_gib"] is not None and p["all_cpu_s_per_gib"] is not None:
                extra = (f", all-process CPU {e['all_cpu_s_per_gib']:.2f} against {p['all_cpu_s_per_gib']:.2f} s/GiB "
                         f"({e['all_cpu_s_per_gib'] - p['all_cpu_s_per_gib']:+.2f})")
            out.append(f"- {wk}: {enc} {e['mb_s']:.0f} MB/s = {e['mb_s'] / p['mb_s']:.2f}× {ref} "
                       f"({p['mb_s']:.0f} MB/s){extra}")
    return out


def markdown(meta, rows, titles, transports_desc, skipped=None, notes=()):
    skipped = skipped or {}
    out = [f"# nbdtunnel macro benchmark — {meta['date']}", ""]
    for n in notes:
        out += [n, ""]
    m = meta["machine"]
    out += [f"Machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']}, {m['mem_gib']:.0f} GiB RAM.", ""]
    la0, la1 = m.get("loadavg_start"), m.get("loadavg_end")
    if la0 and la1:
        out += [f"Load average (1/5/15 min) at start {la0[0]:.1f}/{la0[1]:.1f}/{la0[2]:.1f}, at end "
                f"{la1[0]:.1f}/{la1[1]:.1f}/{la1[2]:.1f}"
                + (f" — **other work was running: figures are noisy**" if max(la0[0], la1[0]) > m["nproc"] / 2 else "")
                + ".", ""]
    out += ["Settings:", ""]
    out += [f"- {k}: {v}" for k, v in meta["settings"].items()]
    out += ["", "Workloads:", ""]
    out += [f"- **{k}**: {v}" for k, v in titles.items()]
    out += ["", "Transports:", ""]
    out += [f"- **{k}**: {v}" for k, v in transports_desc.items()]
    out += [f"- **{k}**: skipped — {v}" for k, v in skipped.items()]
    out += ["", "MB/s = 10^6 bytes/s of logical disk size (median of the measured runs); "
            "× direct = ratio of medians; CPU columns are user+sys seconds per GiB moved, median over "
            "runs: relay = every relay process (children included); src = the source side (source "
            "qemu-storage-daemon for mirrors, nbdcopy for W2, nbd_latency for W4); dst = the destination "
            "qemu-storage-daemon; all = their sum per run, the whole data path; peak RSS = summed VmHWM "
            "of the relay's processes, max over runs; verify = runs whose destination matched the "
            "source byte for byte.", ""]
    out += ["| workload | transport | MB/s | × direct | relay CPU s/GiB | src CPU s/GiB | dst QEMU CPU s/GiB "
            "| all CPU s/GiB | peak RSS MiB | p50 / p99 µs (W4) | verify |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    def skipped_rows(wk):
        return [f"| {wk} | {name} | skipped | — | — | — | — | — | — | — | skipped (see Transports) |"
                for name in skipped]

    for i, r in enumerate(rows):
        if i and rows[i - 1]["workload"] != r["workload"]:
            out += skipped_rows(rows[i - 1]["workload"])
        lat = "—"
        if r["p50_us"] is not None:
            lat = f"{r['p50_us']:.0f} / {r['p99_us']:.0f}"
            if r["transport"] != "direct" and "added_p50_us" in r:
                lat += f" ({r['added_p50_us']:+.0f} / {r['added_p99_us']:+.0f})"
        verify = f"ok {r['passed']}/{r['runs']}" if r["passed"] == r["runs"] else \
            f"**FAILED** {r['runs'] - r['passed']}/{r['runs']}: {'; '.join(r['errors'])[:160]}"
        mbs = (_f(r["mb_s"], ".0f" if (r["mb_s"] or 0) >= 100 else ".1f")) if r["passed"] else "**FAILED**"
        out.append(f"| {r['workload']} | {r['transport']} | {mbs} | {_f(r['ratio'], '.2f')} | "
                   f"{_f(r['cpu_s_per_gib'], '.2f')} | {_f(r.get('src_cpu_s_per_gib'), '.2f')} | "
                   f"{_f(r.get('dst_cpu_s_per_gib'), '.2f')} | {_f(r.get('all_cpu_s_per_gib'), '.2f')} | "
                   f"{_f(r['peak_rss_mib'], '.1f')} | {lat} | {verify} |")
    if rows:
        out += skipped_rows(rows[-1]["workload"])
    delays = delay_cost(rows)
    if delays:
        out += ["", "Delay line (bench/tools/delay_line on the TCP hop, N ms each way):", ""] + delays
    cost = tls_cost(rows)
    if cost:
        out += ["", "TLS cost (each encrypted transport against its plain reference, same run):", ""] + cost
    out += ["", f"Total wall time: {meta['elapsed_min']:.1f} min.", ""]
    return "\n".join(out)
