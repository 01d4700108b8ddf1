#!/usr/bin/env python3
"""Pools the rounds of several load runs (their results.json) and says how sure the ratios are.

    benches/load/pool.py OUT1/results.json OUT2/results.json ...  [--bin SUBSTRING]

For every phase and contender: the number of rounds, the median of its per-round ratios to
nginx-proxy (req/s and p99; h2load: mean latency), their quartiles, how many rounds fell on
each side of 1, and a distribution-free 95% confidence interval for the median ratio (from the
order statistics, the interval a sign test gives: no assumption about the shape of the host's
noise). A ratio whose interval contains 1 is one these runs cannot tell from nginx's. `--bin`
keeps only runs whose Tollgate binary path contains SUBSTRING. Rounds the run measured again
(`discarded`) are left out, as in report.py.
"""
import json
import math
import statistics
import sys


def sign_interval(xs, level=0.95):
    """The order-statistic interval [x_(k), x_(n-k+1)] with P(Binom(n, 1/2) < k) <= (1-level)/2."""
    xs = sorted(xs)
    n = len(xs)
    tail = (1 - level) / 2
    k, below = 0, 0.0
    while k < n:
        p = math.comb(n, k) / 2**n
        if below + p > tail:
            break
        below += p
        k += 1
    if k == 0:
        return None  # too few rounds for this level
    return xs[k - 1], xs[n - k]


def quartiles(xs):
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def main():
    args = sys.argv[1:]
    only = None
    if "--bin" in args:
        i = args.index("--bin")
        only = args[i + 1]
        del args[i:i + 2]
    if not args:
        print(__doc__.strip())
        sys.exit(2)
    ratios = {}  # (phase, contender, metric) -> [ratio per round]
    runs = 0
    for path in args:
        d = json.load(open(path))
        if only and only not in str(d["meta"].get("tollgate_bin", "")):
            continue
        runs += 1
        rows = [r for r in d["raw"] if not r.get("discarded")]
        base = {}
        for r in rows:
            if r["contender"].startswith("nginx-proxy"):
                base[(path, r["phase"], r["round"])] = r
        for r in rows:
            b = base.get((path, r["phase"], r["round"]))
            if b is None or r is b:
                continue
            rr, br = rate(r), rate(b)
            if rr and br:
                ratios.setdefault((r["phase"], r["contender"], "req/s"), []).append(rr / br)
            lr, lb = latency(r), latency(b)
            if lr and lb:
                kind = "p99" if r["load"].get("p99_us") is not None else "mean latency"
                ratios.setdefault((r["phase"], r["contender"], kind), []).append(lr / lb)
    print(f"{runs} run(s); per-round ratios to nginx-proxy in the same round\n")
    print("| phase | contender | ratio | rounds | median | quartiles | 95% interval of the median | rounds below 1 / above 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for (phase, name, metric), xs in sorted(ratios.items()):
        lo_q, hi_q = quartiles(xs)
        ci = sign_interval(xs)
        ci_s = f"{ci[0]:.2f}x-{ci[1]:.2f}x" if ci else "-"
        below = sum(1 for x in xs if x < 1)
        above = sum(1 for x in xs if x > 1)
        print(f"| {phase} | {name} | {metric} | {len(xs)} | {statistics.median(xs):.2f}x "
              f"| {lo_q:.2f}x-{hi_q:.2f}x | {ci_s} | {below} / {above} |")


def rate(r):
    d = r["load"]["duration_us"] / 1e6
    return r["load"]["requests"] / d if d else 0.0


def latency(r):
    p99 = r["load"].get("p99_us")
    return p99 if p99 is not None else r["load"].get("mean_us")


if __name__ == "__main__":
    main()
