#!/usr/bin/env python3
"""Fails when the crate's modules import each other in a circle, or when a folder of the
nginx layer uses one above it in the layer order (docs/nginx-integration.md §1.2).

It reads `use` lines and `crate::`/`super::`/`self::` paths outside comments and outside
`#[cfg(test)]` blocks (tests may reach anywhere), resolves them to the module files under
src/, and checks three granularities: top-level modules (`core`, `nginx`, ...), their
children (`core::mux`, `nginx::conf`, ...) and their grandchildren (`core::mux::frame`,
`nginx::conf::srv`, ...). A parent's re-exports of its own children do not count.

Usage: scripts/check-imports.py [SRC_DIR]   (default: src/ beside this script)
"""
import os
import re
import sys

# The nginx layer's folders, lowest first: each may use only those before it.
NGINX_LAYERS = ["util", "conf", "keys", "conn", "mux", "server", "upstream", "http", "module"]

PATH = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{(.*)\}")


def module_of(root, path):
    parts = os.path.relpath(path, root)[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return ("crate",) + tuple(parts)


def expand_group(prefix, body, out):
    depth, current, items = 0, "", []
    for ch in body:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    items.append(current)
    for item in (i.strip() for i in items):
        if not item:
            continue
        nested = re.match(r"([A-Za-z_][A-Za-z0-9_:]*?)::\{(.*)\}$", item)
        if nested:
            expand_group(prefix + "::" + nested.group(1), nested.group(2), out)
        else:
            out.append(prefix + "::" + item.split(" ")[0])


def resolve(module, path):
    parts = path.split("::")
    if parts[0] == "crate":
        return ["crate"] + parts[1:]
    base = list(module)
    if parts[0] == "self":
        return base + parts[1:]
    while parts and parts[0] == "super":
        base, parts = base[:-1], parts[1:]
    return base + parts


def edges_of(root):
    files = []
    for d, _, names in os.walk(root):
        if os.path.relpath(d, root).split(os.sep)[0] == "bin":
            continue
        files += [os.path.join(d, n) for n in names if n.endswith(".rs")]
    modules = {module_of(root, f): f for f in files}
    edges = set()
    for module, path in modules.items():
        in_tests = False
        with open(path, encoding="utf-8") as f:
            for line in f:
                text = line.strip()
                if text.startswith("//"):
                    continue
                if text.startswith("#[cfg(test)]"):
                    in_tests = True  # test modules sit at the end of a file
                if in_tests:
                    continue
                paths = []
                for m in GROUP.finditer(text):
                    expand_group(m.group(1), m.group(2), paths)
                paths += [m.group(1) for m in PATH.finditer(text)]
                for p in paths:
                    target = resolve(module, p)
                    for k in range(len(target), 0, -1):
                        if tuple(target[:k]) in modules:
                            if tuple(target[:k]) != module:
                                edges.add((module, tuple(target[:k])))
                            break
    return edges


def cycles(edges, depth):
    graph = {}
    for a, b in edges:
        a, b = a[:depth], b[:depth]
        if a == b or a[: len(b)] == b or b[: len(a)] == a:
            continue  # same module, or a parent and its own child
        graph.setdefault(a, set()).add(b)
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def upward(edges):
    bad = set()
    for a, b in edges:
        if a[:2] != ("crate", "nginx") or b[:2] != ("crate", "nginx") or len(a) < 3 or len(b) < 3:
            continue
        la, lb = a[2], b[2]
        if la == lb or la not in NGINX_LAYERS or lb not in NGINX_LAYERS:
            continue
        if NGINX_LAYERS.index(lb) > NGINX_LAYERS.index(la) or {la, lb} == {"server", "upstream"}:
            bad.add((la, lb, "::".join(a[1:]), "::".join(b[1:])))
    return sorted(bad)


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "src")
    edges = edges_of(root)
    failed = False
    for depth in (2, 3, 4):
        for component in cycles(edges, depth):
            failed = True
            print("import circle: " + " <-> ".join("::".join(m[1:]) for m in component))
    for la, lb, a, b in upward(edges):
        failed = True
        print(f"nginx/{la} uses nginx/{lb} ({a} -> {b}), which is not below it")
    if failed:
        sys.exit(1)
    print(f"check-imports: {len(edges)} imports between modules, no circle, nginx layers in order")


if __name__ == "__main__":
    main()
