"""The CLI as a person sees it, in a pseudo-terminal: progress bars that redraw in place, Ctrl-C
that cancels the run and leaves no process, bad arguments as one line with exit code 2, and
messages in the words of the command line (no MCP tool calls)."""

from __future__ import annotations

import re
import sys

import pytest

from conftest import processes_with_marker, wait_until
from terminal import Term
from tools.lab import Lab

BAR = re.compile(r"exp (\d+) (\w+)(?: fold \d+/\d+)? .*?step (\d+|-)(?:/(\d+))? +loss \S+ +(\d+):(\d\d) elapsed"
                 r"(?:, eta \d+:\d\d)?$")
MCP_WORDS = ("read_results", "revert('", "experiment_status(", "cancel_experiment(", "write_note", "show_experiment(",
             "rerun_experiment", "tool's schema")


def bar_lines(text: str) -> list[re.Match]:
    return [m for line in text.splitlines() if (m := BAR.search(line.strip()))]


def test_run_progress_redraws_in_place(toy_ws):
    t = Term(["run", "-m", "a run that lasts", "--params", '{"SLEEP_PER_STEP": 0.008}'], toy_ws)
    seen, elapsed = [], []
    while t.returncode is None:
        t.read(0.3)
        for m in bar_lines(t.screen.text()):
            seen.append(m)
            elapsed.append(int(m.group(5)) * 60 + int(m.group(6)))
        if len(seen) > 4000:
            break
    assert t.finish(120) == 0, t.screen.text()
    assert elapsed == sorted(elapsed), f"elapsed went back: {elapsed}"
    totals = {m.group(4) for m in seen if m.group(3) != "-"}
    assert totals == {"600"}, totals            # step/total: 3 folds x 200 steps
    assert any(m.group(2) == "running" and m.group(3) not in ("-", "600") for m in seen)
    final = t.screen.text()
    bars = [line for line in final.splitlines() if "elapsed" in line]
    assert len(bars) == 1, final                  # one line, redrawn in place: no trail of old frames
    assert re.search(r"exp 1 succeeded .* step 600/600 +loss [\d.]+ +\d+:\d\d elapsed$", bars[0].strip()), bars
    assert "experiment 1: succeeded, verdict baseline" in final
    assert "val loss" in final and not any(w in final for w in MCP_WORDS), final


def _runs_that_never_end_first(ws) -> None:
    """A run a test must interrupt: a workspace budget far beyond what a busy machine could use up
    (600 steps x 0.2 s = 2 min of sleep, budget 30 min), so it never finishes on its own first."""
    toml = ws / "autoresearch.toml"
    toml.write_text(re.sub(r"(?m)^time_budget_s = [0-9.]+", "time_budget_s = 1800", toml.read_text()))


def test_ctrl_c_cancels_the_run_and_leaves_no_process(toy_ws):
    _runs_that_never_end_first(toy_ws)
    t = Term(["run", "-m", "a run to interrupt", "--params", '{"SLEEP_PER_STEP": 0.2}'], toy_ws)
    assert t.wait_for(r"running .*step \d+/600", timeout=90), t.screen.text()
    t.ctrl_c()
    rc = t.finish(90)
    text = t.screen.text()
    assert rc == 130, text
    assert "cancelling experiment 1" in text and "experiment 1: cancelled" in text
    assert "Traceback" not in text and "--detach" in text
    lab = Lab.open(toy_ws)
    try:
        assert lab.store.get_experiment(1)["status"] == "cancelled"
    finally:
        lab.close()
    assert wait_until(lambda: not processes_with_marker(str(toy_ws)), timeout=30), \
        [p.cmdline() for p in processes_with_marker(str(toy_ws))]


def test_detach_leaves_it_running_and_says_how_to_cancel(toy_ws):
    _runs_that_never_end_first(toy_ws)
    t = Term(["run", "--detach", "-m", "a detached run", "--params", '{"SLEEP_PER_STEP": 0.2}'], toy_ws)
    assert t.finish(60) == 0
    assert "autoresearch cancel 1" in t.screen.text() and "autoresearch watch 1" in t.screen.text()
    w = Term(["watch", "1"], toy_ws)
    assert w.wait_for(r"exp 1 running", timeout=90), w.screen.text()
    w.ctrl_c()
    assert w.finish(60) == 130
    assert "goes on" in w.screen.text() and "autoresearch cancel 1" in w.screen.text()
    c = Term(["cancel", "1"], toy_ws)
    assert c.finish(60) == 0 and "cancel" in c.screen.text()
    lab = Lab.open(toy_ws)
    try:
        assert wait_until(lambda: lab.store.get_experiment(1)["status"] == "cancelled", timeout=60)
    finally:
        lab.close()
    assert wait_until(lambda: not processes_with_marker(str(toy_ws)), timeout=30)


@pytest.mark.parametrize("args, where, fix", [
    (["run", "-m", "lr change", "--params", "{LR: 1e-4}"], "", '"LR"'),
    (["run", "-m", "lr change", "--params", '{"lr": 1e-4}'], "", "--params"),
    (["revert", "abc"], "", "autoresearch revert best"),
    (["show", "abc"], "", "autoresearch results"),
    (["show", "77"], "", "autoresearch results"),
    (["compare", "1"], "", "--help"),
    (["run"], "", "-m/--message"),
    (["results"], "outside", "autoresearch init DIR"),
    (["frobnicate"], "", "--help"),
    (["dashboard", "--host", "0.0.0.0"], "", "--token-file"),
])
def test_bad_arguments_are_one_line_and_exit_2(toy_ws, tmp_path, args, where, fix):
    cwd = tmp_path / "elsewhere" if where == "outside" else toy_ws
    cwd.mkdir(exist_ok=True)
    t = Term(args, cwd)
    rc = t.finish(60)
    lines = [line for line in t.raw.decode(errors="replace").replace("\r", "").splitlines() if line.strip()]
    assert rc == 2, t.screen.text()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert fix in lines[0] and "Fix" in lines[0], lines[0]
    assert not any(w in lines[0] for w in MCP_WORDS), lines[0]


def test_a_subfolder_finds_its_workspace(toy_ws):
    data = toy_ws / "data" / "deeper"
    data.mkdir(parents=True)
    t = Term(["results"], data)
    assert t.finish(60) == 0
    assert "0 experiments" in t.screen.text() and "init" not in t.screen.text()


@pytest.mark.slow
def test_init_shows_the_data_being_made(tmp_path):
    t = Term(["init", str(tmp_path / "eclip"), "--preset", "tiny", "--synthetic", "small"], tmp_path)
    assert t.wait_for(r"preparing the data", timeout=60), t.screen.text()
    assert t.finish(600) == 0, t.screen.text()
    text = t.screen.text()
    assert re.search(r"data ready \(\d+s\)", text) and "workspace ready" in text
    assert b"synthetic prints" in t.raw and b"data:" in t.raw   # the child's own lines drove the spinner line
    assert sys.executable  # (keeps the import used on every platform)
