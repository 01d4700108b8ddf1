#!/usr/bin/env python3
"""Turns run.sh's raw measurements into the table (stdout), results.json and load.png.

    report.py OUT/raw.jsonl OUT/meta.json OUT

One raw line per measurement (phase, contender, round, CPU ticks, VmHWM, the load tool's summary).
Per contender: medians over rounds. Ratios are to nginx-proxy in the same phase: req/s and p99
(h2load: mean latency) as the median of per-round ratios (each round's contender / that round's
nginx-proxy, so slow drift of the machine cancels), the others as ratios of the medians
(results.json also keeps p99's ratio of the medians, as p99_vs_nginx_of_medians).
"""

import json
import statistics
import sys
from collections import OrderedDict, defaultdict

BASELINE = {"admitted": "nginx-proxy", "refused": "nginx-proxy", "h2": "nginx-proxy/h2"}
PHASE_TITLE = {
    "admitted": "admitted (HTTP/1.1, wrk)",
    "refused": "refused (HTTP/1.1, wrk; baseline: nginx proxying admitted requests)",
    "h2": "HTTP/2 cleartext (h2load -m 10; latency: mean)",
}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(rows):
    phases = OrderedDict()
    for r in rows:
        phases.setdefault(r["phase"], OrderedDict()).setdefault(r["contender"], []).append(r)
    out = OrderedDict()
    for phase, contenders in phases.items():
        base_name = BASELINE.get(phase)
        base_rps = {}
        base_lat = {}
        for r in contenders.get(base_name, []):
            base_rps[r["round"]] = rps(r)
            base_lat[r["round"]] = latency(r)
        res = OrderedDict()
        for name, rs in contenders.items():
            secs = [r["load"]["duration_us"] / 1e6 for r in rs]
            s = {
                "rounds": len(rs),
                "rps": med(rps(r) for r in rs),
                "p50_ms": med(ms(r["load"]["p50_us"]) for r in rs),
                "p99_ms": med(ms(r["load"]["p99_us"]) for r in rs),
                "mean_ms": med(ms(r["load"]["mean_us"]) for r in rs),
                "cpu_us_per_req": med(cpu_us(r) for r in rs),
                "core_busy": med(
                    r["cpu_ticks"] / r["clk_tck"] / sec for r, sec in zip(rs, secs) if sec
                ),
                # Busy time of the proxy's core not charged to the proxy: interrupts, softirqs,
                # and anything else that ran there (should be small).
                "proxy_core_other": med(r.get("proxy_core_other") for r in rs),
                "load_core_other": med(r.get("load_core_other") for r in rs),
                "load_core_busy": med(
                    r.get("load_core_ticks", 0) / r["clk_tck"] / sec for r, sec in zip(rs, secs) if sec
                ),
                "peak_rss_mib": max(r["vmhwm_kib"] for r in rs) / 1024,
                "non_2xx": sum(r["load"]["errors_status"] for r in rs),
                "requests": sum(r["load"]["requests"] for r in rs),
                "socket_errors": sum(
                    r["load"][k]
                    for r in rs
                    for k in ("errors_connect", "errors_read", "errors_write", "errors_timeout")
                ),
                "per_round_rps": [rps(r) for r in rs],
            }
            ratios = [rps(r) / base_rps[r["round"]] for r in rs if base_rps.get(r["round"])]
            s["rps_vs_nginx"] = med(ratios)
            lat = [latency(r) / base_lat[r["round"]] for r in rs
                   if latency(r) is not None and base_lat.get(r["round"])]
            s["latency_vs_nginx"] = med(lat)
            res[name] = s
        base = res.get(base_name)
        for name, s in res.items():
            for key, field in (("p99_vs_nginx_of_medians", "p99_ms"), ("mean_vs_nginx", "mean_ms"),
                               ("cpu_vs_nginx", "cpu_us_per_req"), ("rss_vs_nginx", "peak_rss_mib")):
                b = base.get(field) if base else None
                s[key] = s[field] / b if (b and s[field] is not None) else None
        out[phase] = res
    return out


def latency(r):
    """p99 where the load tool reports it (wrk), else the mean (h2load), in us."""
    p99 = r["load"].get("p99_us")
    return p99 if p99 is not None else r["load"].get("mean_us")


def rps(r):
    d = r["load"]["duration_us"] / 1e6
    return r["load"]["requests"] / d if d else 0.0


def ms(us):
    return None if us is None else us / 1000.0


def cpu_us(r):
    n = r["load"]["requests"]
    return r["cpu_ticks"] / r["clk_tck"] * 1e6 / n if n else None


def fmt(v, spec, suffix=""):
    return "-" if v is None else format(v, spec) + suffix


def table(summary):
    head = ("| phase | contender | req/s | p50 ms | p99 ms | mean ms | CPU us/req | core busy "
            "| peak RSS MiB | req/s vs nginx | p99 vs nginx | CPU vs nginx | non-2xx |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for phase, res in summary.items():
        for name, s in res.items():
            lines.append(
                "| " + " | ".join([
                    phase, name,
                    fmt(s["rps"], ",.0f"),
                    fmt(s["p50_ms"], ".2f"), fmt(s["p99_ms"], ".2f"), fmt(s["mean_ms"], ".2f"),
                    fmt(s["cpu_us_per_req"], ".2f"),
                    fmt(s["core_busy"] * 100 if s["core_busy"] is not None else None, ".0f", "%"),
                    fmt(s["peak_rss_mib"], ".1f"),
                    fmt(s["rps_vs_nginx"], ".2f", "x"),
                    fmt(s["latency_vs_nginx"], ".2f", "x"),
                    fmt(s["cpu_vs_nginx"], ".2f", "x"),
                    "{:.1f}%".format(100.0 * s["non_2xx"] / s["requests"]) if s["requests"] else "-",
                ]) + " |"
            )
    return "\n".join(lines)


def plot(summary, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, rps_v, ratio_v, lat_v, lat_kind, colors = [], [], [], [], [], []
    palette = {"admitted": "#4c72b0", "refused": "#dd8452", "h2": "#55a868"}
    for phase, res in summary.items():
        for name, s in res.items():
            labels.append(f"{phase}: {name}")
            rps_v.append(s["rps"] or 0)
            ratio_v.append(s["rps_vs_nginx"])
            if s["p99_ms"] is not None:
                lat_v.append(s["p99_ms"])
                lat_kind.append("p99")
            else:
                lat_v.append(s["mean_ms"] or 0)
                lat_kind.append("mean")
            colors.append(palette.get(phase, "#8172b3"))
    n = len(labels)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 0.45 * n + 2.2), sharey=True)
    ys = list(range(n))[::-1]
    ax1.barh(ys, [v / 1000 for v in rps_v], color=colors)
    for y, v, r in zip(ys, rps_v, ratio_v):
        ratio = f" ({r:.2f}x nginx)" if r is not None else ""
        ax1.text(v / 1000, y, f" {v/1000:.1f}k{ratio}", va="center", fontsize=8)
    ax1.set_yticks(ys)
    ax1.set_yticklabels(labels, fontsize=8)
    ax1.set_xlabel("throughput, thousand requests/s (median of rounds)")
    ax1.set_title("Throughput (higher is better)")
    ax1.margins(x=0.3)
    ax2.barh(ys, lat_v, color=colors)
    for y, v, k in zip(ys, lat_v, lat_kind):
        ax2.text(v, y, f" {v:.2f} ms" + (" (mean)" if k == "mean" else ""), va="center", fontsize=8)
    ax2.set_xscale("log")
    ax2.set_xlabel("latency, ms, log scale (p99; h2load: mean)")
    ax2.set_title("p99 latency (lower is better)")
    ax2.set_xlim(min(v for v in lat_v if v > 0) / 2, max(lat_v) * 4)
    tree = meta.get("tree", {})
    fig.suptitle(
        f"Tollgate vs nginx, each proxy pinned to one core ({meta.get('cpu_model', '?')}); "
        f"{meta.get('rounds')} rounds x {meta.get('duration_s')} s, {meta.get('connections')} connections; "
        f"tree {tree.get('parents', '?'):,} parents / {tree.get('children', '?'):,} children, "
        f"load over {tree.get('active_keys', '?'):,} keys",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    raw, meta_path, out = sys.argv[1:4]
    all_rows = [json.loads(l) for l in open(raw) if l.strip()]
    rows = [r for r in all_rows if not r.get("discarded")]
    meta = json.load(open(meta_path))
    summary = summarize(rows)
    for phase, res in summary.items():
        for name, st in res.items():
            st["discarded_rounds"] = sum(
                1 for r in all_rows if r.get("discarded") and r["phase"] == phase and r["contender"] == name)
    json.dump({"meta": meta, "summary": summary, "raw": all_rows}, open(f"{out}/results.json", "w"), indent=2)
    print()
    print(f"Medians over {meta['rounds']} round(s) of {meta['duration_s']} s, {meta['connections']} connections; "
          f"each proxy on CPU {meta['proxy_cpu']}, load and upstream on CPU {meta['load_cpu']}.")
    print(table(summary))
    if not meta.get("h2_nginx"):
        print("\nnginx here has no HTTP/2 module: the h2 phase measures Tollgate only.")
    bad = [(p, n) for p, res in summary.items() for n, s in res.items()
           if p != "refused" and s["non_2xx"] and not n.endswith(("unknown-key", "disabled-child"))]
    for p, res in summary.items():
        for n, st in res.items():
            if st["discarded_rounds"]:
                print(f"note: {p}/{n}: {st['discarded_rounds']} round(s) measured again "
                      "(other work on the cores)")
            if max(st["proxy_core_other"] or 0, st["load_core_other"] or 0) > 0.08:
                print(f"note: {p}/{n}: other work took {st['proxy_core_other']*100:.0f}% of the proxy's "
                      f"core and {st['load_core_other']*100:.0f}% of the load core (median)")
    for p, n in bad:
        print(f"warning: {p}/{n} had non-2xx responses: its numbers are not all admitted requests")
    plot(summary, meta, f"{out}/load.png")
    print(f"\nwrote {out}/results.json and {out}/load.png")


if __name__ == "__main__":
    main()
