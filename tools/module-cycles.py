#!/usr/bin/env python3
"""Import circles among a crate's modules, from `cargo modules dependencies` (cargo-modules).

Usage: tools/module-cycles.py <package> [<package> ...]
Needs `cargo install cargo-modules --version 0.27.0 --locked` (rust-analyzer based). Every item
of the graph is folded into the module that declares it and every "uses" edge becomes an edge
between modules (a module's own items excluded); a module's submodules count as the module
itself only through its `mod` items, so `a::b` using `a` is an edge `a::b -> a`. Prints each
package's module edges and cycles, and exits 1 if any package has one.

cargo-modules names a method by its type's path (`model::pack::Pack::evaluate`) wherever its
`impl` block is; a method is folded into the module whose file holds that block instead, since
that file is what imports what the method uses. (`cargo modules dependencies --acyclic` checks
items, not modules, and reports every type with a method mentioning the type as a circle.)
"""
import json, os, re, subprocess, sys

def src_dir(package):
    meta = json.loads(subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1"],
                                     check=True, capture_output=True, text=True).stdout)
    for p in meta["packages"]:
        if p["name"] == package:
            for t in p["targets"]:
                if "lib" in t["kind"]:
                    return os.path.dirname(t["src_path"])
    raise SystemExit(f"no library target for {package}")

def method_homes(package, crate):
    """(Type, method) -> module path of the file whose `impl ... Type` block defines it."""
    root = src_dir(package)
    homes = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            rel = os.path.relpath(path, root)[:-3].split(os.sep)
            if rel[-1] in ("lib", "mod"):
                rel = rel[:-1]
            if rel and rel[-1] == "tests":
                continue
            module = "::".join([crate] + rel)
            text = open(path, encoding="utf-8").read()
            # `impl<..> Type<..> {` or `impl<..> Trait for Type<..> {`, then the block by brace depth.
            for m in re.finditer(r"^impl(?:<[^{]*?>)?\s+(?:[\w:<>, ']+\s+for\s+)?([A-Za-z_]\w*)[^{;]*\{", text, re.M):
                depth, i = 1, m.end()
                while i < len(text) and depth:
                    depth += {"{": 1, "}": -1}.get(text[i], 0)
                    i += 1
                for fn in re.findall(r"\bfn\s+([A-Za-z_]\w*)", text[m.end():i]):
                    homes.setdefault((m.group(1), fn), module)
    return homes

def graph(package):
    dot = subprocess.run(
        ["cargo", "modules", "dependencies", "-p", package, "--lib", "--no-externs", "--no-sysroot", "--no-owns"],
        check=True, capture_output=True, text=True).stdout
    kinds = {}
    for name, kind in re.findall(r'^\s+"([^"]+)" \[label="([^"|]*)\|', dot, re.M):
        kinds[name] = kind.split()[-1]
    modules = {n for n, k in kinds.items() if k in ("mod", "crate")}
    types = {n for n, k in kinds.items() if k in ("struct", "enum", "union", "type", "trait")}
    homes = method_homes(package, package.replace("-", "_"))
    def module_of(name):
        owner, _, item = name.rpartition("::")
        if owner in types and (owner.rsplit("::", 1)[-1], item) in homes:
            return homes[(owner.rsplit("::", 1)[-1], item)]
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
