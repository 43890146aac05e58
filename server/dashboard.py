"""`autoresearch dashboard`: a read-only web page of one workspace, live while runs go.

stdlib http.server and one static page (server/static/dashboard.html, plain JS, no CDN): the
experiments table (status, verdict, noise), the progress plot (tools/plots.py), each run's loss
curve, config, code diff against its parent, log tail and notes, and the best trajectory. The
page polls /api/state every 2 s and redraws what changed.

Safety: it only reads (the store, git, run files through tools/rundir). It binds loopback by
default and checks the Host header (no DNS rebinding); bound elsewhere it needs a bearer token
(the HTTP MCP server's token file): `Authorization: Bearer ...`, or once `/?token=...`, which
sets an HttpOnly cookie and redirects to the bare URL.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import re
import stat
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from server.render import cli_text, metric_label, state_words, verdict_words
from server.cli_support import metric_info, run_view
from tools import experiments as ex
from tools import history, plots
from tools.errors import ToolError
from tools.lab import Lab
from tools.rundir import read_all_steps

STATIC = Path(__file__).parent / "static"
MAX_ROWS = 200
COOKIE = "autoresearch_dashboard"
MAX_TOKEN_BYTES = 4096


# -- the token rule -------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_token(path: str | os.PathLike) -> str:
    """The bearer token from a file only its owner can read (like the HTTP MCP server's)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        data = p.read_bytes()[:MAX_TOKEN_BYTES]
    except OSError as exc:
        raise ToolError(f"--token-file {path}: cannot be read ({exc.strerror}). Fix: pass the token file the HTTP "
                        "server wrote (mode 0600).") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ToolError(f"--token-file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}). "
                        f"Fix: chmod 600 {path}.")
    token = data.decode(errors="replace").strip()
    if len(token) < 16:
        raise ToolError(f"--token-file {path} holds no token of at least 16 characters. Fix: write a long random "
                        "token into it (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`).")
    return token


# -- what the page shows --------------------------------------------------------------------
class DashboardData:
    """Reads for the page, one at a time (one SQLite connection), cached by the state's version."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.lock = threading.Lock()
        self._png: dict[str, tuple[str, bytes]] = {}

    def state(self) -> dict:
        with self.lock:
            lab = self.lab
            metric, direction = metric_info(lab)
            rows = lab.store.list_experiments(limit=MAX_ROWS, status=None, order_by="created",
                                              direction=lab.config.direction)
            best = lab.store.best_experiment()
            out_rows = []
            for r in rows:
                metrics = {m["name"]: m["value"] for m in lab.store.metrics(r["id"], aggregate_only=True)}
                row = {"id": r["id"], "status": r["status"], "state": state_words(r, metrics),
                       "verdict": r["verdict"], "verdict_words": verdict_words(r["verdict"]),
                       "objective": r["objective"], "objective_std": r["objective_std"], "delta": r["delta"],
                       "kept": bool(r["kept"]), "duration_s": r["duration_s"], "description": r["description"][:200],
                       "group_n": r["group_n"], "group_objective": r["group_objective"], "group_std": r["group_std"],
                       "rerun_of": r["rerun_of"], "rerun_kind": r["rerun_kind"], "parent_id": r["parent_id"],
                       "created_at": r["created_at"], "finished_at": r["finished_at"]}
                if r["status"] in ("queued", "running"):
                    _, v = run_view(lab, r["id"])
                    row["progress"] = {"step": v.step, "steps_total": v.steps_total, "loss": v.loss, "fold": v.fold,
                                       "folds": v.folds, "phase": v.phase,
                                       "elapsed": None if not v.started_at else max(0.0, time.time() - v.started_at),
                                       "budget_s": v.budget_s}
                out_rows.append(row)
            traj = history.best_trajectory(lab, 50)
            random_rank = None
            if best is not None:
                random_rank = next((m["value"] for m in lab.store.metrics(best["id"], aggregate_only=True)
                                    if m["name"] == "random_mean_rank"), None)
            body = {"workspace": lab.config.name, "root": str(lab.root), "metric": metric, "direction": direction,
                    "metric_label": metric_label(metric, direction), "noise_sigma": lab.config.noise_sigma,
                    "best_id": best["id"] if best else None, "total": lab.store.count_experiments(),
                    "random_baseline": random_rank,
                    "experiments": out_rows, "trajectory": [p.model_dump() for p in traj.points]}
            fixed = {k: v for k, v in body.items()}
            fixed["experiments"] = [{k: v for k, v in r.items() if k != "progress"} | {"p": bool(r.get("progress"))}
                                    for r in out_rows]
            body["version"] = hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:16]
            body["now"] = time.time()
            return body

    def experiment(self, exp_id: int) -> dict:
        with self.lock:
            lab = self.lab
            d = ex.show_experiment(lab, exp_id, detail="full")  # the page shows the provenance
            row = lab.store.get_experiment(exp_id)
            metrics = {m["name"]: m["value"] for m in lab.store.metrics(exp_id, aggregate_only=True)}
            out = d.model_dump()
            if row["status"] == "running":  # the live curve from the run's files (bounded reader)
                out["loss_curve"] = [[s, loss] for s, _, loss in read_all_steps(lab.run_dir(exp_id))]
            else:  # a NaN/inf loss is stored as None: the curve shows a gap there, never a 0
                out["loss_curve"] = [[s["step"], s["loss"]] for s in lab.store.steps(exp_id)]
            out["state"] = state_words(row, metrics)
            out["verdict_words"] = verdict_words(row["verdict"], bool(row["kept"]), row["verdict_reason"])
            out["verdict_reason"] = cli_text(row["verdict_reason"], exp_id)
            out["error"] = cli_text(row["error"], exp_id)
            out["notes"] = lab.store.note_texts(exp_id)
            out["rerun_of"], out["rerun_kind"] = row["rerun_of"], row["rerun_kind"]
            out["group"] = {"n": row["group_n"], "mean": row["group_objective"], "std": row["group_std"]}
            out["config"].pop("sandbox", None)  # long; the sandbox backend is a field
            return out

    def png(self, kind: str, version: str) -> bytes:
        with self.lock:
            cached = self._png.get(kind)
            if cached and cached[0] == version:
                return cached[1]
            data = plots.progress_png(self.lab) if kind == "progress" else plots.loss_curves_png(self.lab)
            self._png[kind] = (version, data)
            return data


# -- HTTP -----------------------------------------------------------------------------------
class Handler(BaseHTTPRequestHandler):
    data: DashboardData
    token: str | None
    allowed_hosts: set[str]
    server_version = "autoresearch-dashboard"

    def log_message(self, fmt, *args):  # quiet: the terminal shows the URL only
        pass

    def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' "
                                                    "'unsafe-inline'; frame-ancestors 'none'")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, code: int = 200) -> None:
        self._send(code, json.dumps(obj, default=str).encode(), "application/json")

    def _authorized(self, query: dict) -> bool | str:
        if self.token is None:
            return True
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip().encode(), self.token.encode()):
            return True
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode(), self.token.encode()):
                return True
        given = (query.get("token") or [""])[0]
        if given and hmac.compare_digest(given.encode(), self.token.encode()):
            return "cookie"
        return False

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if self.allowed_hosts and host not in self.allowed_hosts:
            return self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown Host header\n", "text/plain")
        query = parse_qs(url.query)
        auth = self._authorized(query)
        if auth == "cookie":
            return self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {
                "Location": url.path or "/", "Set-Cookie": f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/"})
        if not auth:
            return self._send(HTTPStatus.UNAUTHORIZED, b"a bearer token is needed: open /?token=TOKEN once, or send "
                              b"Authorization: Bearer TOKEN\n", "text/plain", {"WWW-Authenticate": "Bearer"})
        try:
            self._route(url.path, query)
        except ToolError as exc:
            self._json({"error": cli_text(str(exc))}, 404)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self, path: str, query: dict) -> None:
        if path in ("/", "/index.html"):
            return self._send(200, (STATIC / "dashboard.html").read_bytes(), "text/html; charset=utf-8")
        if path == "/dashboard.js":
            return self._send(200, (STATIC / "dashboard.js").read_bytes(), "text/javascript; charset=utf-8")
        if path == "/api/state":
            return self._json(self.data.state())
        if m := re.fullmatch(r"/api/experiment/(\d{1,9})", path):
            return self._json(self.data.experiment(int(m.group(1))))
        if m := re.fullmatch(r"/plot/(progress|loss)\.png", path):
            version = (query.get("v") or [""])[0][:32]
            return self._send(200, self.data.png(m.group(1), version), "image/png")
        self._send(404, b"not found\n", "text/plain")


def make_server(lab: Lab, host: str = "127.0.0.1", port: int = 8765, *, token: str | None = None) -> ThreadingHTTPServer:
    """The dashboard's HTTP server (not started: call serve_forever)."""
    if not is_loopback(host) and token is None:
        raise ToolError(f"host={host!r} is not loopback: a token is needed. Fix: pass a token file.")
    allowed = {"localhost", "127.0.0.1", "::1"} | ({host.lower()} if host not in ("0.0.0.0", "::") else set())
    handler = type("DashboardHandler", (Handler,), {
        "data": DashboardData(lab), "token": token,
        # bound to every address, any Host is allowed (the token guards it)
        "allowed_hosts": set() if host in ("0.0.0.0", "::") else allowed})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server
