#!/usr/bin/env python3
"""Side-by-side benchmark figures of two builds (bench/ab/run.sh): per figure the median of each
side, the ratio of the medians, and the ratio of each round's pair (the two sides of a round ran
back to back, so a pair's ratio is the least disturbed by the machine's speed, which drifts 2x
over hours). Usage: compare.py <results dir>"""
import json, re, glob, os, statistics, sys
R = sys.argv[1]
UNIT = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}

def policy(txt):
    out = {}
    for m in re.finditer(r"^decide/(\S+)\s*\n?\s*time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", txt, re.M):
        out["policy " + m.group(1) + " (µs)"] = float(m.group(2)) * UNIT[m.group(3)]
    return out

def node(txt, tag=""):
    out = {}
    for m in re.finditer(r"writers\s+(\d+):\s+(\d+) writes/s\s+latency p50\s+(\d+) µs\s+p99\s+(\d+) µs.*?([\d.]+) writes/flush, flush ([\d.]+) ms", txt):
        w = m.group(1)
        out[f"node writes {w}w /s"] = float(m.group(2))
        out[f"node writes {w}w p99 µs"] = float(m.group(4))
        out[f"node writes {w}w per flush"] = float(m.group(5))
    m = re.search(r"loaded (\d+) subjects in ([\d.]+) s", txt)
    if m: out[f"node{tag} bulk load subjects/s"] = int(m.group(1)) / float(m.group(2))
    for m in re.finditer(r"(\d) caller\(s\): (\d+) decisions/s", txt):
        out[f"node{tag} batch {m.group(1)} caller /s"] = float(m.group(2))
    m = re.search(r"decide: p50 ([\d.]+) µs\s+p90 ([\d.]+) µs\s+p99 ([\d.]+) µs\s+max ([\d.]+)", txt)
    if m:
        out[f"node{tag} decide p50 µs"] = float(m.group(1)); out[f"node{tag} decide p99 µs"] = float(m.group(3))
    return out

def cold(txt):
    out = {}
    m = re.search(r"node data: (\d+) links written in ([\d.]+) s", txt)
    if m: out["cold: links written /s (bench setup)"] = int(m.group(1)) / float(m.group(2))
    m = re.search(r"cold start with \d+ links in the directory: ([\d.]+) s", txt)
    if m: out["cold start s"] = float(m.group(1))
    m = re.search(r"restart against the warm node, \d+ links: ([\d.]+) s", txt)
    if m: out["warm restart s"] = float(m.group(1))
    return out

def load(txt):
    out = {}
    line = [l for l in txt.splitlines() if l.startswith("{")]
    if not line: return out
    d = json.loads(line[-1])["scenarios"]
    g = lambda k: d[k]
    out["load echo /s"] = g("echo")["ops_per_sec"]
    out["load decide /s"] = g("decide")["ops_per_sec"]
    out["load decide x echo"] = g("decide")["ratio_to_echo"]["throughput"]
    out["load half-rate p50 ms"] = g("decide_at_half_max_rate")["latency"]["p50_us"] / 1e3
    out["load half-rate p99 ms"] = g("decide_at_half_max_rate")["latency"]["p99_us"] / 1e3
    out["load batch /s"] = g("batch")["ops_per_sec"]
    out["load batch x echo"] = g("batch")["ratio_to_echo"]["throughput"]
    out["load writes /s"] = g("writes")["ops_per_sec"]
    out["load writes x echo"] = g("writes")["ratio_to_echo"]["throughput"]
    out["load setup subjects/s"] = g("setup")["ops_per_sec"]
    out["load setup x echo"] = g("setup")["ratio_to_echo"]["throughput"]
    out["load withdrawal lag p99 ms"] = g("withdrawal")["latency"]["p99_us"] / 1e3
    out["load stale allows"] = g("withdrawal")["stale_allows"]
    out["load errors (all scenarios)"] = sum(v["errors"] for v in d.values()) + d["batch"].get("item_errors", 0)
    return out

PARSE = {"policy": policy, "node": node, "node1m": lambda t: node(t, " 1M"), "cold": cold, "load": load}
data = {}  # key -> side -> {round: value}
loads = {}
for f in sorted(glob.glob(f"{R}/round-*/*.txt")):
    r = int(f.split("round-")[1].split("/")[0]); side, bench = os.path.basename(f)[:-4].split("-", 1)
    txt = open(f).read()
    if "## rc=0" not in txt: continue
    m = re.search(r"start=\S+ loadavg=([\d.]+)", txt)
    loads.setdefault(r, {}).setdefault(side, []).append(float(m.group(1)))
    for k, v in PARSE[bench](txt).items():
        data.setdefault(k, {}).setdefault(side, {})[r] = v
fmt = lambda v: f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
print(f"{'figure':42} {'n':>3} {'prev med':>10} {'cur med':>10} {'cur/prev':>8} {'pair med':>8}  {'paired ratios (round order)':s}  {'prev min-max':>20} {'cur min-max':>20}")
for k, sides in data.items():
    p, c = sides.get("prev", {}), sides.get("cur", {})
    if not p or not c: continue
    pm, cm = statistics.median(p.values()), statistics.median(c.values())
    rounds = sorted(set(p) & set(c))
    pr = [c[r] / p[r] if p[r] else float('nan') for r in rounds]
    good = [x for x in pr if x == x]
    pair_median = statistics.median(good) if good else float('nan')
    print(f"{k:42} {len(rounds):>3} {fmt(pm):>10} {fmt(cm):>10} {cm/pm if pm else float('nan'):>8.3f} {pair_median:>8.3f}  "
          + " ".join(f"{x:.2f}" for x in pr)
          + f"  {fmt(min(p.values()))+'-'+fmt(max(p.values())):>20} {fmt(min(c.values()))+'-'+fmt(max(c.values())):>20}")
print()
for r in sorted(loads):
    print(f"round {r}: load avg at bench starts prev {loads[r].get('prev')} cur {loads[r].get('cur')}")
