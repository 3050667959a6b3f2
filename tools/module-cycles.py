#!/usr/bin/env python3
"""Import circles among a crate's modules, from `cargo modules dependencies` (cargo-modules).

Usage: tools/module-cycles.py <package> [<package> ...]
Needs `cargo install cargo-modules --version 0.27.0 --locked` (rust-analyzer based). Every item
of the graph is folded into the module that declares it and every "uses" edge becomes an edge
between modules (a module's own items excluded); a module's submodules count as the module
itself only through its `mod` items, so `a::b` using `a` is an edge `a::b -> a`. Prints each
package's module edges and cycles, and exits 1 if any package has one.
"""
import re, subprocess, sys

def graph(package):
    dot = subprocess.run(
        ["cargo", "modules", "dependencies", "-p", package, "--lib", "--no-externs", "--no-sysroot", "--no-owns"],
        check=True, capture_output=True, text=True).stdout
    kinds = {}
    for name, kind in re.findall(r'^\s+"([^"]+)" \[label="([^"|]*)\|', dot, re.M):
        kinds[name] = kind.split()[-1]
    modules = {n for n, k in kinds.items() if k in ("mod", "crate")}
    def module_of(name):
        while name not in modules and "::" in name:
            name = name.rsplit("::", 1)[0]
        return name
    edges = set()
    for a, b in re.findall(r'^\s+"([^"]+)" -> "([^"]+)" \[label="uses"', dot, re.M):
        ma, mb = module_of(a), module_of(b)
        # A module using its own items or a parent's re-export of a child's item: not a circle.
        if ma != mb and not mb.startswith(ma + "::") and "::" in ma:
            edges.add((ma, mb))
    return edges

def cycles(edges):
    succ = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)
        succ.setdefault(b, set())
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop(); on.discard(w); scc.append(w)
                if w == v: break
            if len(scc) > 1: out.append(sorted(scc))
    sys.setrecursionlimit(10000)
    for v in sorted(succ):
        if v not in index: visit(v)
    return out

failed = False
for package in sys.argv[1:]:
    edges = graph(package)
    found = cycles(edges)
    print(f"{package}: {len(edges)} module edges, {'no import circle' if not found else f'{len(found)} import circle(s)'}")
    for scc in found:
        failed = True
        print("  circle:", " <-> ".join(scc))
sys.exit(1 if failed else 0)
