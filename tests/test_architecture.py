"""The dependency rules of docs/architecture.md, read from that table and checked against every
import in replay/ and kernels/ (lazy imports inside functions included)."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREES = {"replay": os.path.join(ROOT, "replay"), "replay.kernels": os.path.join(ROOT, "kernels")}
ROW = re.compile(r"^\| `(?P<mod>[\w.]+)` \| (?P<rule>[^|]+?) \| (?P<mods>[^|]+?) \|$")


def modules() -> dict[str, str]:
    """Module name -> file, for every .py file of replay/ and kernels/ (replay.kernels)."""
    out = {}
    for pkg, top in TREES.items():
        for d, _, files in os.walk(top):
            for f in files:
                if not f.endswith(".py") or (pkg == "replay" and d.startswith(TREES["replay.kernels"])):
                    continue
                rel = os.path.relpath(os.path.join(d, f), top)[:-3].replace(os.sep, ".")
                name = pkg if rel == "__init__" else f"{pkg}.{rel.removesuffix('.__init__')}"
                out[name] = os.path.join(d, f)
    return out


def imports(name: str, path: str, known: set[str]) -> set[str]:
    """The replay modules that the module imports anywhere in its body."""
    pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from replay import ops` imports the module replay.ops; `from x import f`, x
            out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                    for a in node.names}
    return {m for m in out if m in known}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def rules(path=os.path.join(ROOT, "docs", "architecture.md")) -> list[tuple[str, str, list]]:
    out = []
    for line in open(path, encoding="utf-8"):
        m = ROW.match(line.strip())
        if m and m["mod"] != "module":
            mods = [] if m["mods"].strip() == "-" else re.findall(r"`([\w.]+)`", m["mods"])
            out.append((m["mod"], m["rule"].strip(), mods))
    return out


def under(m: str, prefix: str) -> bool:
    return m == prefix or m.startswith(prefix + ".")


def violations(g: dict[str, set[str]], table) -> list[str]:
    """Every broken rule, as 'rule: a -> b -> c'."""
    out = []
    for mod, rule, mods in table:
        starts = [m for m in g if under(m, mod)]
        if rule == "only":
            for a in starts:
                out += [f"{mod} imports only {mods or 'nothing from replay'}: {a} -> {b}"
                        for b in sorted(g[a]) if b != "replay" and not any(under(b, x) for x in mods)
                        and not under(b, mod)]
            continue
        assert rule in ("never", "never, nor through its imports"), f"unknown rule {rule!r}"
        for a in starts:
            # breadth-first over the imports, remembering how each module was reached
            seen, todo = {a: [a]}, [a]
            while todo:
                cur = todo.pop(0)
                for b in sorted(g[cur]):
                    if any(under(b, x) for x in mods):
                        out.append(f"{mod} {rule} {mods}: {' -> '.join(seen[cur] + [b])}")
                    elif b not in seen and rule != "never":
                        seen[b] = seen[cur] + [b]
                        todo.append(b)
    return out


def test_the_table_is_read():
    table = rules()
    assert {m for m, _, _ in table} >= {"replay.verify", "replay.kernels", "replay.ops",
                                         "replay.records"}
    g = graph()
    assert "replay.kernels.matmul" in g and "replay.model" in g["replay.verify"]


def test_no_forbidden_import():
    assert violations(graph(), rules()) == []


@pytest.mark.parametrize("edge,rule", [
    (("replay.report", "replay.engine"), "replay.verify never, nor through its imports"),
    (("replay.kernels.matmul", "replay.model"), "replay.kernels imports only"),
    (("replay.records", "replay.sampling"), "replay.records imports only"),
    (("replay._ext", "replay.model"), "replay.ops never, nor through its imports"),
])
def test_an_added_forbidden_import_is_named(edge, rule):
    """The check itself: one import added to the real graph breaks the rule, with its chain."""
    g = graph()
    g[edge[0]].add(edge[1])
    found = violations(g, rules())
    assert any(v.startswith(rule) and v.endswith(" -> ".join(edge)) for v in found), found


def test_package_names_are_one_thing():
    """replay.verify is always the module (callable: replay.verify(...) verifies), and
    replay.kernels.matmul always the submodule, whatever was imported first."""
    import subprocess
    import sys

    code = ("import replay, types; f = replay.verify; import replay.verify as m; "
            "import replay.kernels as k; "
            "print(f is m, isinstance(m, types.ModuleType), callable(m), m.verify.__name__, "
            "isinstance(k.__getattr__('matmul'), types.ModuleType))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "verify", "True"]


def test_fleet_reader_loads_no_torch():
    """Ray's reader worker imports replay.fleet to read and pack shards: that must not load torch,
    the model or the verifier (seconds per worker start). The report's result rows and the
    watcher's imports stay as light."""
    import subprocess
    import sys

    code = ("import sys, replay.fleet, replay.report, replay.watch; "
            "print(sorted(m for m in ('torch', 'numpy', 'replay.verify', 'replay.model', "
            "'replay._C') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]"], out.stdout
