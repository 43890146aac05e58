"""The module boundaries hold: no import circles, model/ and sandbox/ stand alone, no imports of our
own packages inside functions (scripts/import_graph.py, also run by .ci/run)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_graph_has_no_circles_and_model_stands_alone():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    graph = dict(line.split(" -> ") for line in proc.stdout.splitlines() if " -> " in line)
    for name, deps in graph.items():
        deps = [] if deps.strip() == "-" else [d.strip() for d in deps.split(",")]
        top = name.strip().split(".")[0]
        if top in ("model", "sandbox"):
            assert all(d.split(".")[0] == top for d in deps), (name, deps)
        if top == "tools":
            assert not any(d.startswith("server") for d in deps), (name, deps)


def test_the_checker_can_fail(tmp_path):
    """A circle and a nested import in a copy of a package are reported (the check is not a no-op)."""
    import shutil
    copy = tmp_path / "repo"
    (copy / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "import_graph.py", copy / "scripts")
    for pkg in ("server", "tools", "model", "sandbox"):
        (copy / pkg).mkdir()
        (copy / pkg / "__init__.py").write_text("")
    (copy / "tools" / "a.py").write_text("from tools import b\n")
    (copy / "tools" / "b.py").write_text("def f():\n    from tools import a\n")
    (copy / "model" / "m.py").write_text("import tools.a\n")
    (copy / "server" / "s.py").write_text("from tools.b import f\nfrom server import s2\n")
    (copy / "server" / "s2.py").write_text("import server.s\n")
    proc = subprocess.run([sys.executable, str(copy / "scripts" / "import_graph.py")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "import circle: server.s <-> server.s2" in proc.stdout
    assert "model/ must not import the others: model.m imports tools.a" in proc.stdout
    assert "import inside a function" in proc.stdout and "tools.b:2 imports tools.a" in proc.stdout
