"""Print the import graph of server/, tools/, model/ and sandbox/; fail on a circle, on model/
importing any of the others, or on an import of our own packages inside a function (unless its
line says `# import-graph: heavy`: it defers torch).

    python scripts/import_graph.py          # the graph, one module per line, then the verdict
    python scripts/import_graph.py --dot    # Graphviz

Reads the source with ast (imports nothing), so it runs without torch or the MCP SDK.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("server", "tools", "model", "sandbox")
# an import of our own module inside a function is allowed only when it defers a heavy package
# (torch) and says so on its line
HEAVY_MARK = "# import-graph: heavy"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(name: str, modules: set[str]) -> str | None:
    """The longest known module that `name` is (or is inside of)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path, me: str, modules: set[str]) -> tuple[set[str], list[str]]:
    source = path.read_text()
    tree, lines = ast.parse(source, str(path)), source.splitlines()
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    top, nested = set(), []

    def targets(node) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        base = node.module or ""
        if node.level:
            up = package.split(".")
            base = ".".join(up[: len(up) - node.level + 1] + ([base] if base else []))
        return [f"{base}.{a.name}" if base else a.name for a in node.names]

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found = {m for t in targets(child) if (m := resolve(t, modules)) and m != me}
                heavy = HEAVY_MARK in lines[child.lineno - 1]
                if in_function and not heavy:
                    nested.extend(f"{me}:{child.lineno} imports {m}" for m in sorted(found))
                else:
                    top.update(found)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, nested


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative enough for us)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def main(argv: list[str]) -> int:
    files = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))
             if "__pycache__" not in p.parts and "template" not in p.relative_to(ROOT).parts[1:2]
             and "templates" not in p.parts}
    modules = set(files)
    graph, nested = {}, []
    for name, path in files.items():
        graph[name], inner = imports_of(path, name, modules)
        nested += inner
    if "--dot" in argv:
        print("digraph imports {")
        for a in sorted(graph):
            for b in sorted(graph[a]):
                print(f'  "{a}" -> "{b}";')
        print("}")
    else:
        for a in sorted(graph):
            print(f"{a:28s} -> {', '.join(sorted(graph[a])) or '-'}")
    problems = [f"import circle: {' <-> '.join(c)}" for c in cycles(graph)]
    problems += [f"model/ must not import the others: {a} imports {b}" for a in graph for b in graph[a]
                 if a.split(".")[0] == "model" and b.split(".")[0] != "model"]
    problems += [f"import inside a function (move it to the top, or down a level): {n}" for n in nested]
    edges = sum(len(v) for v in graph.values())
    print(f"\n{len(graph)} modules, {edges} imports between them")
    for p in problems:
        print("FAIL:", p)
    print("OK: no circles, model/ stands alone, no imports inside functions" if not problems else
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
