"""The `autoresearch` command line, as a user types it (real subprocesses)."""

import json
import subprocess
import sys


def ar(*args, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_init_run_results_revert_note_audit(tmp_path):
    ws = tmp_path / "lab"
    out = ar("init", str(ws), "--preset", "toy", "--client", "vscode").stdout
    assert "workspace ready" in out
    for f in ("autoresearch.toml", "train.py", "AGENTS.md", ".mcp.json", ".claude/settings.json",
              ".vscode/mcp.json", ".gitignore"):
        assert (ws / f).is_file(), f
    assert json.loads((ws / ".mcp.json").read_text())["mcpServers"]["autoresearch"]["args"][-1] == str(ws)
    again = ar("init", str(ws), "--preset", "toy", check=False)
    assert again.returncode == 2 and "already a workspace" in again.stderr

    r = ar("run", "-m", "baseline", cwd=ws)
    assert "succeeded, verdict baseline" in r.stdout
    original = (ws / "train.py").read_bytes()
    (ws / "train.py").write_text("raise SystemExit('broken on purpose')\n")
    r = ar("run", "-m", "broken", cwd=ws, check=False)
    assert r.returncode == 1 and "broken on purpose" in r.stdout

    table = ar("results", cwd=ws).stdout
    assert "2 experiments" in table and "failed" in table and "baseline" in table
    rows = json.loads(ar("results", "--json", "--order-by", "objective", cwd=ws).stdout)["rows"]
    assert rows[0]["id"] == 1 and rows[0]["kept"]

    ar("revert", "best", cwd=ws)
    assert (ws / "train.py").read_bytes() == original
    ar("note", "baseline is fine", "--experiment", "1", "--tag", "baseline", cwd=ws)
    assert "baseline is fine" in ar("notes", "--tag", "baseline", cwd=ws).stdout

    bad = ar("revert", "77", cwd=ws, check=False)
    assert bad.returncode == 2 and "experiment 77 does not exist" in bad.stderr and "read_results" not in bad.stderr
    bad = ar("run", "-m", "x", cwd=ws, check=False)  # description too short
    assert bad.returncode == 2 and "-m/--message" in bad.stderr and "autoresearch run --help" in bad.stderr
    bad = ar("results", cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "autoresearch init" in bad.stderr


def test_doctor_reports_the_backend():
    out = ar("doctor", "--json").stdout
    report = json.loads(out)
    assert report.get("backend") or report.get("chosen")
    human = ar("doctor").stdout
    assert human.startswith(f"sandbox: {report['backend']}") and "None" not in human and "{'" not in human


def test_server_process_stays_light():
    # (numpy may load: sqlite-utils imports it when installed; torch and open_clip must not)
    code = "import sys, server.app, server.cli; print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_init_tiny_and_a_short_eclip_run(tmp_path):
    """The real template end to end through the product: synthetic prints, sandbox, metrics contract."""
    ws = tmp_path / "eclip"
    ar("init", str(ws), "--preset", "tiny", "--synthetic", "small")
    toml = (ws / "autoresearch.toml").read_text()
    assert 'data = "data/synthetic-prints"' in toml and "heldout" in toml
    r = ar("run", "-m", "three-step smoke run", "--params", '{"MAX_STEPS": 3, "EVAL_BATCH_SIZE": 64}', cwd=ws)
    assert "succeeded, verdict baseline" in r.stdout, r.stdout
    human = ar("show", "1", cwd=ws).stdout
    assert "mean rank" in human and "code diff against its parent" in human and not human.startswith("{")
    show = json.loads(ar("show", "1", "--json", cwd=ws).stdout)
    m = show["metrics"]
    for key in ("objective", "mean_rank", "random_mean_rank", "i2t_r1", "t2i_r1", "i2t_median_rank", "steps"):
        assert key in m, key
    assert m["objective"] == m["mean_rank"] and m["steps"] == 3
    assert show["config"]["run"]["objective_name"] == "mean_rank"
