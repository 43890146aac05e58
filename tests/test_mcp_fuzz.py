"""Issue 13: >= 2,000 generated tool calls, raw JSON-RPC over stdio to `autoresearch serve`: wrong types,
huge and negative ids (2^63, 2^64), NUL and lone surrogates, deep nesting, long strings, unknown and
misspelt arguments and tools, arguments that are not objects. Every call gets a clear answer (no bare
'Error executing tool', no internal error, no silence), every request leaves an audit row, and the
store passes `PRAGMA integrity_check`. Seeded: a failure names the call to replay."""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.slow

N_CALLS = 2200
BATCH = 25
SEED = 1413

TOOLS = {
    "run_experiment": ["description", "hypothesis", "time_budget_s", "params", "wait_s"],
    "experiment_status": ["experiment_id", "wait_s"],
    "cancel_experiment": ["experiment_id", "wait_s"],
    "read_results": ["limit", "status", "order_by", "include_metrics"],
    "show_experiment": ["experiment_id"],
    "revert": ["target"],
    "write_note": ["text", "experiment_id", "tags"],
    "read_notes": ["limit", "tag", "query"],
    "rerun_experiment": ["experiment_id", "seeds", "wait_s"],
    "suggest": ["n"],
    "reproduce": ["experiment_id", "wait_s"],
    "plot_progress": ["limit"],
    "search_experiments": ["query", "status", "verdict", "limit"],
    "compare_experiments": ["a", "b"],
    "best_trajectory": ["limit"],
    "evaluate_test": ["experiment_id"],
}
# tools that would start real runs with valid arguments: the fuzz always breaks one of their fields
SPAWNS = {"run_experiment", "rerun_experiment", "reproduce", "evaluate_test"}
SLOW = {"suggest": 0.02, "plot_progress": 0.02}  # Optuna / matplotlib: a few of them are enough
NOT_IDS = [0, -1, -2**63, 2**63, 2**64, 10**9 + 1, 10**30, 999_999, 1.5, "1", "one", None, True, [], {}, "\x00"]
WEIRD = ["", "x", "\x00", "a\x00b", "\ud800", "\udfff tail", "é" * 3, "🙂" * 50, "A" * 100_000, "' OR 1=1 --",
         "*", "\"", "NEAR(", "lr AND", "../../etc/passwd", "%s%n", "\n\t\r", "𝔘𝔫𝔦", "null", "{}"]


def weird_value(rng: random.Random, depth: int = 0):
    pick = rng.random()
    if pick < 0.25:
        return rng.choice(WEIRD)
    if pick < 0.45:
        return rng.choice(NOT_IDS)
    if pick < 0.55:
        return rng.uniform(-1e300, 1e300)
    if pick < 0.65 and depth < 3:
        return [weird_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if pick < 0.75 and depth < 3:
        return {rng.choice(["LR", "x", "", "\x00", "SEED", "A" * 70]): weird_value(rng, depth + 1)
                for _ in range(rng.randint(0, 3))}
    if pick < 0.8:
        deep = 1
        for _ in range(rng.randint(20, 200)):
            deep = [deep]
        return deep
    return rng.choice([1, 2, 3, 5, 20, 200, 201, "best", "created", "objective", "succeeded", "improved", False])


def valid_value(rng: random.Random, tool: str, arg: str):
    return {
        "experiment_id": rng.choice([1, 1, 2, 7, 10**9]), "a": 1, "b": rng.choice([1, 2]),
        "target": rng.choice(["best", 1, 3]), "limit": rng.choice([1, 5, 20]), "n": 1, "seeds": 1,
        "status": rng.choice(["succeeded", "failed"]), "order_by": rng.choice(["objective", "created"]),
        "include_metrics": rng.choice([True, False]), "verdict": "baseline", "text": "a note from the fuzz",
        "tags": ["fuzz"], "tag": "fuzz", "query": rng.choice(["baseline", "lr warm*", "fuzz"]), "wait_s": 0,
        "description": "fuzz run", "hypothesis": "none", "time_budget_s": 10, "params": {"LR": 0.2},
    }.get(arg, 1)


def generate(rng: random.Random) -> tuple[object, object]:
    """(name, arguments) of one call."""
    roll = rng.random()
    if roll < 0.08:
        name = rng.choice(["run_experiments", "experimentstatus", "Read_Results", "", "x" * 300, "tools/list",
                           "../evaluate_test", "revert\x00", 42, None, ["revert"], {"name": "revert"}])
        return name, {}
    name = rng.choice(list(TOOLS))
    if name in SLOW and rng.random() > SLOW[name] * 10:
        name = "read_results"
    args = {a: valid_value(rng, name, a) for a in TOOLS[name] if rng.random() < 0.6}
    mutation = rng.random()
    if mutation < 0.45 and TOOLS[name]:
        args[rng.choice(TOOLS[name])] = weird_value(rng)
    elif mutation < 0.55:
        key = rng.choice(TOOLS[name] or ["x"])
        args[key[:-1] + rng.choice("sxz_") if len(key) > 1 else "zz"] = weird_value(rng)  # misspelt
    elif mutation < 0.62:
        return name, rng.choice([[], "text", 7, None, [1, 2], True])  # arguments that are not an object
    elif mutation < 0.66:
        args = {"wait_seconds": 1, "experimentId": 1}
    if name in SPAWNS:  # never start a real run (or a test evaluation) from the fuzz
        args["experiment_id" if name != "run_experiment" else "description"] = rng.choice(
            [999_999, 0, 2**63, "", "x", None] if name != "run_experiment" else ["", "x", None, 5, "\x00bad"])
    return name, args


class Server:
    """`autoresearch serve` over raw newline-delimited JSON-RPC (pipelined; answers matched by id)."""

    def __init__(self, ws):
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "server.cli", "serve", "--workspace", str(ws)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")})
        self.answers: dict[int, dict] = {}
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.next_id = 0

    def _read(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and "id" in msg and ("result" in msg or "error" in msg):
                with self.cond:
                    self.answers[msg["id"]] = msg
                    self.cond.notify_all()

    def send(self, method: str, params=None, notify: bool = False) -> int | None:
        msg = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        rid = None
        if not notify:
            self.next_id += 1
            rid = msg["id"] = self.next_id
        # ensure_ascii: lone surrogates travel as \ud800 escapes, as a client in another language may send them
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        self.proc.stdin.flush()
        return rid

    def wait(self, ids: list[int], timeout: float = 120) -> dict[int, dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(i in self.answers for i in ids) and time.monotonic() < deadline:
                self.cond.wait(0.5)
            return {i: self.answers.get(i) for i in ids}

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def unclear(answer: dict | None) -> str | None:
    """Why an answer does not tell the caller what went wrong, or None."""
    if answer is None:
        return "no answer"
    if "error" in answer:
        err = answer["error"]
        if err.get("code") not in (-32602, -32600, -32601) or len(err.get("message", "")) < 10:
            return f"protocol error {err}"
        return None
    result = answer["result"]
    if not result.get("isError"):
        return None
    text = " ".join(b.get("text", "") for b in result.get("content", []) if isinstance(b, dict))
    if re.fullmatch(r"\s*Error executing tool \S*\s*", text) or "internal error" in text or len(text) < 20:
        return f"unclear tool error {text[:300]!r}"
    return None


def test_fuzzed_tool_calls_get_clear_answers_and_are_all_audited(toy_ws):
    rng = random.Random(SEED)
    server = Server(toy_ws)
    t0 = time.monotonic()
    try:
        rid = server.send("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                         "clientInfo": {"name": "fuzz", "version": "1"}})
        assert server.wait([rid])[rid]["result"]["serverInfo"]["version"]
        server.send("notifications/initialized", notify=True)
        rid = server.send("tools/call", {"name": "run_experiment", "arguments": {"description": "baseline"}})
        assert not server.wait([rid])[rid]["result"].get("isError")
        sent, problems, requests = 0, [], 2
        while sent < N_CALLS:
            batch = []
            for _ in range(BATCH):
                name, args = generate(rng)
                batch.append((server.send("tools/call", {"name": name, "arguments": args}), name, args))
            answers = server.wait([b[0] for b in batch])
            for rid, name, args in batch:
                if (why := unclear(answers[rid])) is not None:
                    problems.append(f"#{rid} {name!r} {json.dumps(args)[:300]}: {why}")
            sent += len(batch)
            requests += len(batch)
        # the protocol around the tools: odd params, unknown methods, resources, prompts
        extra = [("tools/call", None), ("tools/call", []), ("tools/call", {"arguments": {}}),
                 ("resources/read", {"uri": "experiments://18446744073709551616"}),
                 ("resources/read", {"uri": "experiments://\u0000"}), ("resources/read", {"uri": 5}),
                 ("prompts/get", {"name": "\ud800"}), ("prompts/get", {}), ("no/such/method", {}),
                 ("resources/read", {"uri": "notes://recent"}), ("prompts/get", {"name": "resume"})]
        ids = [server.send(m, p) for m, p in extra]
        answers = server.wait(ids)
        requests += len(ids)
        for (method, params), rid in zip(extra, ids):
            ans = answers[rid]
            if ans is None or ("error" in ans and ans["error"].get("code") in (None, 0, -32603)):
                problems.append(f"{method} {params}: {ans}")
    finally:
        server.close()
    took = time.monotonic() - t0
    db = sqlite3.connect(toy_ws / ".autoresearch" / "experiments.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        audited = db.execute("SELECT count(*) FROM audit").fetchone()[0]
        by_outcome = dict(db.execute("SELECT outcome, count(*) FROM audit GROUP BY outcome").fetchall())
        runs = db.execute("SELECT count(*) FROM experiments").fetchone()[0]
    finally:
        db.close()
    print(f"\nfuzz: {sent} generated tool calls + {len(extra)} protocol requests in {took:.1f} s; "
          f"{len(problems)} unclear answers; audit rows {audited} for {requests} requests {by_outcome}; "
          f"experiments {runs}")
    assert not problems, "\n".join(problems[:20])
    # every request was audited, the initialize and the unknown method included
    assert audited >= requests, (audited, requests)
    assert runs == 1  # no generated call started a run
