"""Summaries of the runs: a Markdown report and the JSON record."""

import statistics

GiB = 1 << 30


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs, workloads, transports):
    """One row per (workload, transport) from the measured (non-warm-up) runs."""
    rows = []
    for wk in workloads:
        direct = None
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
                "cpu_s_per_gib": _median([r["relay_cpu_s"] / (r["bytes"] / GiB)
                                          for r in good if r["relay_cpu_s"] is not None and r["bytes"]]),
                "peak_rss_mib": max([r["relay_peak_kib"] / 1024 for r in good if r["relay_peak_kib"]],
                                    default=None),
            }
            for k in ("p50_us", "p99_us", "iops"):
                row[k] = _median([r["extra"].get(k) for r in good])
            if t == "direct":
                direct = row
            row["ratio"] = (row["mb_s"] / direct["mb_s"]) if direct and direct["mb_s"] and row["mb_s"] else None
            if direct and row["p50_us"] is not None and direct["p50_us"] is not None:
                row["added_p50_us"] = row["p50_us"] - direct["p50_us"]
                row["added_p99_us"] = row["p99_us"] - direct["p99_us"]
            rows.append(row)
    return rows


def _f(v, fmt):
    return "—" if v is None else format(v, fmt)


def markdown(meta, rows, titles, transports_desc):
    out = [f"# nbdtunnel macro benchmark — {meta['date']}", ""]
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
    out += ["", "MB/s = 10^6 bytes/s of logical disk size (median of the measured runs); "
            "× direct = ratio of medians; relay CPU = user+sys of every relay process "
            "(children included) per GiB moved, median; peak RSS = summed VmHWM of the relay's "
            "processes, max over runs; verify = runs whose destination matched the source byte for byte.", ""]
    out += ["| workload | transport | MB/s | × direct | relay CPU s/GiB | peak RSS MiB | p50 / p99 µs (W4) | verify |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lat = "—"
        if r["p50_us"] is not None:
            lat = f"{r['p50_us']:.0f} / {r['p99_us']:.0f}"
            if r["transport"] != "direct" and "added_p50_us" in r:
                lat += f" (+{r['added_p50_us']:.0f} / +{r['added_p99_us']:.0f})"
        verify = f"ok {r['passed']}/{r['runs']}" if r["passed"] == r["runs"] else \
            f"**FAILED** {r['runs'] - r['passed']}/{r['runs']}: {'; '.join(r['errors'])[:160]}"
        mbs = (_f(r["mb_s"], ".0f" if (r["mb_s"] or 0) >= 100 else ".1f")) if r["passed"] else "**FAILED**"
        out.append(f"| {r['workload']} | {r['transport']} | {mbs} | {_f(r['ratio'], '.2f')} | "
                   f"{_f(r['cpu_s_per_gib'], '.2f')} | {_f(r['peak_rss_mib'], '.1f')} | {lat} | {verify} |")
    out += ["", f"Total wall time: {meta['elapsed_min']:.1f} min.", ""]
    return "\n".join(out)
