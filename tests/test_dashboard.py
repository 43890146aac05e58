"""`autoresearch dashboard`: its JSON, its token rule, and the page in a real headless browser.

The browser tests need Debian's chromium (`apt-get install -y chromium`); without it they skip with
that command, and with AUTORESEARCH_REQUIRE_EXTERNAL=1 (CI) they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import wait_until
from server import dashboard
from tools import experiments as ex
from tools.errors import ToolError

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--hide-scrollbars", "--disable-dev-shm-usage"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        msg = "chromium is not installed. Fix: apt-get install -y chromium"
        if os.environ.get("AUTORESEARCH_REQUIRE_EXTERNAL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def browse(url: str, *, screenshot: Path | None = None, size=(1400, 1000), wait_ms: int = 4000) -> str:
    """The DOM after the page's scripts ran (and a screenshot), from headless chromium."""
    with tempfile.TemporaryDirectory() as profile:
        args = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                f"--virtual-time-budget={wait_ms}"]
        args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        proc = subprocess.run([*args, url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture
def served(lab):
    """A workspace with a baseline, a change, a failed run and a note; its dashboard on a free port."""
    ex.run_experiment(lab, "baseline")
    ex.run_experiment(lab, "LR 0.1 -> 0.3", params={"LR": 0.3})
    train = lab.root / "train.py"
    good = train.read_text()
    train.write_text("raise SystemExit('broken on purpose')\n")
    ex.run_experiment(lab, "broken on purpose")
    train.write_text(good)
    ex.write_note(lab, "LR 0.3 trains faster; <b>not bold</b>", 2, ["lr"])
    server = dashboard.make_server(lab, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield lab, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def get(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.headers, r.read()


def test_state_and_experiment_json(served):
    lab, base = served
    state = json.loads(get(base + "/api/state")[2])
    assert state["metric"] == "val_loss" and state["best_id"] == 1 and state["total"] == 3
    rows = {r["id"]: r for r in state["experiments"]}
    assert rows[3]["status"] == "failed" and rows[1]["kept"] and rows[2]["verdict_words"]
    d = json.loads(get(base + "/api/experiment/2")[2])
    assert "+LR = 0.3" in d["diff"] and d["loss_curve"] and d["notes"] == ["LR 0.3 trains faster; <b>not bold</b>"]
    assert "sandbox" not in d["config"] and d["config"]["provenance"]["constants"]["LR"] == 0.3
    status, headers, png = get(base + "/plot/progress.png?v=" + state["version"])
    assert status == 200 and png.startswith(b"\x89PNG") and headers["Content-Type"] == "image/png"
    with pytest.raises(urllib.error.HTTPError) as err:
        get(base + "/api/experiment/99")
    assert err.value.code == 404 and "experiment 99 does not exist" in err.value.read().decode()
    # a rebinding attack's page comes with its own Host name: refused
    with pytest.raises(urllib.error.HTTPError) as err:
        get(base + "/api/state", {"Host": "evil.example:80"})
    assert err.value.code == 421


def test_token_rule(lab, tmp_path):
    with pytest.raises(ToolError, match="token"):
        dashboard.make_server(lab, "0.0.0.0", 0)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-of-some-length\n")
    token_file.chmod(0o644)
    with pytest.raises(ToolError, match="chmod 600"):
        dashboard.load_token(token_file)
    token_file.chmod(0o600)
    token = dashboard.load_token(token_file)
    server = dashboard.make_server(lab, "127.0.0.1", 0, token=token)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            get(base + "/api/state")
        assert err.value.code == 401
        assert get(base + "/api/state", {"Authorization": f"Bearer {token}"})[0] == 200
        opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,),
                                                  {"redirect_request": lambda *a, **k: None}))
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(base + f"/?token={token}", timeout=30)
        assert err.value.code == 303 and "HttpOnly" in err.value.headers["Set-Cookie"]
        cookie = err.value.headers["Set-Cookie"].split(";")[0]
        assert get(base + "/api/state", {"Cookie": cookie})[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_cli_refuses_an_open_bind_without_a_token(toy_ws):
    import sys
    proc = subprocess.run([sys.executable, "-m", "server.cli", "dashboard", "--host", "0.0.0.0"], cwd=toy_ws,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--token-file" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_page_in_a_headless_browser(served, tmp_path):
    lab, base = served
    dom = browse(base + "/#2")
    assert "LR 0.1 -&gt; 0.3" in dom or "LR 0.1 -> 0.3" in dom
    assert "broken on purpose" in dom and "failed" in dom and "baseline" in dom
    assert "val loss" in dom                               # the metric's name, not "objective"
    assert "Experiment #2" in dom and "+LR = 0.3" in dom   # the detail: code diff against the parent
    assert "&lt;b&gt;not bold&lt;/b&gt;" in dom             # a note is text, never markup
    assert "<polyline" in dom                              # the loss curve
    assert 'data-version="' in dom                         # the live poll ran
    shot = tmp_path / "dashboard.png"
    browse(base + "/#2", screenshot=shot)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


def test_page_shows_a_run_while_it_goes(lab):
    exp_id = ex.submit_experiment(lab, "slow run", params={"SLEEP_PER_STEP": 0.05})
    server = dashboard.make_server(lab, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert wait_until(lambda: (ex.summary(lab, exp_id).step or 0) > 1, timeout=60)
        dom = browse(base + "/")
        assert "running" in dom and "/600" in dom   # step N/600 of the live row
        ex.runs.request_cancel(lab, exp_id)
        assert wait_until(lambda: ex.summary(lab, exp_id).status == "cancelled", timeout=60)
        assert "cancelled" in browse(base + "/")
    finally:
        server.shutdown()
        server.server_close()
