"""The MCP server: builds the MCPServer, registers every tool module, serves stdio or Streamable HTTP.
No torch here.

One middleware (`gate`) sees every request: it audits each one (schema rejections, unknown tools
and internal errors included), refuses unknown or misspelt arguments with the closest valid name,
validates arguments before a tool runs (messages without pydantic's boilerplate, NUL and invalid
Unicode refused), answers unknown prompts with -32602, keeps the published `params` schema in step
with the workspace's train.py, and never lets a bare 'Error executing tool' out. Schemas are made
lean once at registration (shared shapes inline, no titles or null defaults; output schemas keep
names, types and required fields, which strict clients validate against).

HTTP (`serve --http`): the SDK's Streamable HTTP app behind a bearer token (tools/clients.py keeps it
in a 0600 file), Host/Origin checks against DNS rebinding, loopback unless told otherwise.
"""

from __future__ import annotations

import difflib
import hmac
import ipaddress
import json
import logging
import re
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import mcp_types
from pydantic import ValidationError

from mcp.server import MCPServer
from mcp.server.stdio import stdio_server
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, TextContent

from model.constants import parse_constants
from server import experiment_tools, history_tools, research_tools
from server.calls import current_lab, open_workspace, state
from tools import clients
from tools.errors import ToolError
from tools.lab import Lab
from tools.provenance import main_file

log = logging.getLogger("autoresearch.server")

INSTRUCTIONS = """Research loop on an eCLIP model (lower val mean_rank is better).
Loop: read_notes + read_results first; make ONE change to train.py; run_experiment; if the verdict is
not 'improved', revert('best'); write_note after every run (what changed, verdict, next idea).
Calls that wait for a run return within wait_s (default 40 s) with the id; follow a longer run with
experiment_status(id, wait_s=40) until it ends. Results are compact JSON of at most 8 KB. The tools act
on this workspace only (no network)."""

HTTP_PORT = 8765
HTTP_PATH = "/mcp"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_MAIN_FILE = 1 * 2**20
LEGACY_WAIT = "wait"  # the old boolean of run_experiment / rerun_experiment: false = wait_s 0
REFUSED = "autoresearch/refused"  # a stdio line the SDK cannot parse, that names a request id: see _checked_line
PARSE_ERROR = -32700
ID_MAX = 10**9  # tools/schemas.py ExperimentId


def _version() -> str:
    try:
        return metadata.version("eclip-autoresearch")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


# -- lean schemas --------------------------------------------------------------------------------
def _lean(node: Any, *, output: bool) -> Any:
    """A JSON schema without what no agent reads: titles, null defaults, and null itself (an optional
    argument is left out; the server still takes an explicit null). Output schemas also lose
    descriptions and defaults (and become a shape, see _shape). No union types: strict validators
    (Ajv strict mode) refuse them."""
    if isinstance(node, list):
        return [_lean(n, output=output) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" or (key == "default" and (value is None or output)) or (key == "description" and output):
            continue
        if key == "maximum" and value == ID_MAX and node.get("type") == "integer":
            continue  # an experiment id: the server refuses beyond it with the fix, the schema need not say
        if key in ("properties", "$defs"):
            out[key] = {name: _lean(v, output=output) for name, v in value.items()}
        else:
            out[key] = _lean(value, output=output)
    any_of = out.get("anyOf")
    if isinstance(any_of, list) and {"type": "null"} in any_of:  # optional means: leave it out
        rest = [s for s in any_of if s != {"type": "null"}]
        del out["anyOf"]
        out = {**rest[0], **out} if len(rest) == 1 else {**out, "anyOf": rest}
    if output and isinstance(out.get("properties"), dict) and "required" in out:
        # a field that may be null is not promised: the shape (below) lists what always has a value
        nullable = {k for k, v in node["properties"].items()
                    if isinstance(v, dict) and {"type": "null"} in (v.get("anyOf") or [])}
        out["required"] = [k for k in out["required"] if k not in nullable]
        if not out["required"]:
            del out["required"]
    return out


def _shape(schema: dict) -> dict:
    """An output schema reduced to what every result has: an object with its required fields. The
    other fields are left open (no additionalProperties: false), so every result validates, in strict
    clients too. Agents read the results themselves (compact JSON without nulls), and the
    descriptions name the fields that matter; full field lists would triple tools/list."""
    out: dict[str, Any] = {"type": "object"}
    if schema.get("required"):  # Ajv's strictRequired wants each required field among the properties
        out["properties"] = {k: {} for k in schema["required"]}
        out["required"] = list(schema["required"])
    return out


def lean_schemas(mcp: MCPServer) -> None:
    """Make every registered tool's schemas and description lean; inputs refuse unknown properties.
    Results are validated when they are made (calls.respond dumps a valid model), not again by the SDK
    against the full model, which would want the nulls back."""
    for tool in mcp._tool_manager.list_tools():  # idempotent: configure() runs it again for evaluate_test
        params = _lean(tool.parameters, output=False)
        params["additionalProperties"] = False
        tool.parameters = params
        tool.description = " ".join(tool.description.split())
        if tool.fn_metadata.output_schema is not None:
            tool.fn_metadata.output_schema = _shape(_lean(tool.fn_metadata.output_schema, output=True))
            tool.fn_metadata.output_model = None
        tool.__dict__.pop("output_schema", None)  # the SDK caches it on first use


def _scalar_schema(value) -> dict | None:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if value is None:
        return {}  # a constant that is None takes any scalar
    return None  # tuples, lists: params cannot set them


def params_schema(lab: Lab) -> dict | None:
    """run_experiment's `params`: the UPPERCASE constants of the workspace's main file, each with the
    type the server accepts (tools/params.py checks them the same way at submit)."""
    rel = main_file(lab)
    if rel is None:
        return None
    try:
        path = lab.root / rel
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_MAIN_FILE:
            return None
        constants = parse_constants(path.read_text(errors="replace"))
    except Exception:  # an unparsable train.py: the generic schema stays, submit says what is wrong
        return None
    groups: dict[str, list[str]] = {}
    for name, value in sorted(constants.items()):
        if re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", name) and (s := _scalar_schema(value)) is not None:
            groups.setdefault(json.dumps(s), []).append(name)
    if not groups:
        return None
    # one pattern per type: each name appears once (an eCLIP train.py has ~40 constants)
    return {"type": "object", "additionalProperties": False,
            "patternProperties": {f"^({'|'.join(names)})$": json.loads(s) for s, names in groups.items()},
            "description": f"{rel} constants for this run (written into its snapshot), e.g. {{\"LR\": 1e-4}}"}


def refresh_schemas(mcp: MCPServer, lab: Lab) -> None:
    """The parts of the published schemas that depend on the workspace: params, wait_s's cap."""
    limit = float(lab.config.max_wait_s)
    for tool in mcp._tool_manager.list_tools():
        props = tool.parameters.get("properties", {})
        if "wait_s" in props:
            props["wait_s"]["maximum"] = int(limit) if limit == int(limit) else limit
            props["wait_s"]["description"] = f"max seconds to wait for the end (default {limit:g})"
        if tool.name == "run_experiment" and "params" in props:
            schema = params_schema(lab)
            if schema is not None:
                props["params"] = schema


# -- the gate: every request audited, arguments checked strictly ----------------------------------
def _clean_text(text: str, limit: int = 2000) -> str:
    return text.replace("\x00", "\\0").encode("utf-8", "replace").decode("utf-8")[:limit]


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return _clean_text(text if len(text) <= limit else text[:limit] + "…", limit + 1)


def _bad_text(value: Any, depth: int = 0) -> str | None:
    """Why a value's strings cannot be stored (a NUL, a lone surrogate), or None."""
    if depth > 32:
        return "it is nested too deeply"
    if isinstance(value, str):
        if "\x00" in value:
            return "it contains a NUL character (\\u0000)"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "it contains invalid Unicode (a lone surrogate)"
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    keys = value.keys() if isinstance(value, dict) else ()
    for v in (*keys, *items):
        if (why := _bad_text(v, depth + 1)) is not None:
            return why
    return None


def _validation_text(tool, args: dict, exc: ValidationError) -> str:
    """pydantic's errors as one line per argument: the path, the problem, what was given."""
    props = tool.parameters.get("properties", {})
    found: dict[str, list[str]] = {}
    given: dict[str, Any] = {}
    for err in exc.errors(include_url=False):
        cur, path = args, []
        for part in err["loc"]:
            if isinstance(cur, dict) and part in cur:
                path.append(str(part))
                cur = cur[part]
            elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
                path.append(f"[{part}]")
                cur = cur[part]
            elif err["type"] == "missing" and part == err["loc"][-1]:
                path.append(str(part))
        key = ".".join(path).replace(".[", "[") or "arguments"
        msg = err["msg"].replace("Value error, ", "")
        if msg not in found.setdefault(key, []):
            found[key].append(msg)
        if err["type"] != "missing":
            given[key] = cur
    parts = [f"{k}: {' or '.join(m)}" + (f" (got {_show(given[k])})" if k in given else "") for k, m in found.items()]
    first = next(iter(found)).split(".")[0].split("[")[0]
    desc = props.get(first, {}).get("description")
    fix = f"Fix: {first} is {desc}" if desc else "Fix: see the tool's input schema"
    return f"invalid arguments for {tool.name}: {'; '.join(parts)}. {fix}."


def check_arguments(tool, args: dict) -> str | None:
    """None, or why the arguments are refused (before the tool runs, so nothing changes)."""
    props = tool.parameters.get("properties", {})
    for key in args:
        if key not in props:
            close = difflib.get_close_matches(key, list(props), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else "."
            return (f"unknown argument {_show(key, 40).strip(chr(39))}{hint} {tool.name} takes: "
                    f"{', '.join(props) or 'no arguments'}.")
    for key, value in args.items():
        if (why := _bad_text(value)) is not None:
            return f"invalid {key}: {why}. Fix: pass plain text without control characters or broken Unicode."
    try:
        tool.fn_metadata.validate_arguments(args)
    except ValidationError as exc:
        return _validation_text(tool, args, exc)
    except Exception as exc:  # a validator that crashed: still a clear refusal
        return f"invalid arguments for {tool.name}: {type(exc).__name__}: {_clean_text(str(exc), 200)}."
    return None


def _error_result(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def _first_text(result: Any) -> str:
    data = result if isinstance(result, dict) else result.model_dump(by_alias=True, mode="json") \
        if hasattr(result, "model_dump") else {}
    for block in data.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "text":
            return str(block.get("text", ""))
    return ""


def _tidy(result: Any, name: str) -> Any:
    """A tool error without the SDK's 'Error executing tool X: ' prefix; a crash the SDK hid behind a
    bare 'Error executing tool X' says what happened and what to do."""
    if not isinstance(result, dict) or not result.get("isError"):
        return result
    prefix = f"Error executing tool {name}"
    for block in result.get("content") or []:
        if isinstance(block, dict) and block.get("type") == "text":
            text = str(block.get("text", ""))
            if text.strip() == prefix:
                block["text"] = (f"{name} failed with an internal error (the server log has the traceback); "
                                 "nothing is known to have changed. Fix: check the arguments and retry; if it "
                                 "persists, report it")
            elif text.startswith(prefix + ": "):
                block["text"] = text[len(prefix) + 2:]
    return result


def _legacy(tool, args: dict) -> dict:
    """`wait: false` of older clients means wait_s 0 (`wait: true`: the default wait)."""
    props = tool.parameters.get("properties", {})
    if LEGACY_WAIT in args and LEGACY_WAIT not in props and "wait_s" in props and isinstance(args[LEGACY_WAIT], bool):
        args = dict(args)
        if not args.pop(LEGACY_WAIT):
            args.setdefault("wait_s", 0)
    return args


def _audit_subject(method: str, params: Mapping) -> tuple[str, dict]:
    if method == "tools/call":
        name, args = params.get("name"), params.get("arguments")
        tool = _clean_text(name, 100) if isinstance(name, str) else f"<{type(name).__name__} tool name>"
        if args is None:
            args = {}
        return tool, args if isinstance(args, dict) else {"<arguments>": _show(args, 200)}
    return method[:100] if isinstance(method, str) else "<method>", {k: v for k, v in params.items() if k != "_meta"}


def _audit(tool: str, args: dict, outcome: str, detail: str, ms: float) -> None:
    lab = state.lab
    if lab is None:
        return
    try:
        with state.lock:
            lab.store.audit(tool, args, outcome, _clean_text(detail, 2000), ms)
    except Exception:  # the audit must never take the request down with it
        log.exception("audit of %s failed", tool)


async def _tools_call(mcp: MCPServer, ctx, call_next, params: Mapping):
    name, args = params.get("name"), params.get("arguments")
    tool = mcp._tool_manager.get_tool(name) if isinstance(name, str) else None
    if name == "evaluate_test" and tool is None and state.lab is not None and not current_lab().config.allow_test_eval:
        return _error_result(research_tools.TEST_EVAL_DISABLED)
    if tool is None:
        names = [t.name for t in mcp._tool_manager.list_tools()]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5) if isinstance(name, str) else []
        hint = f" Did you mean {close[0]}?" if close else ""
        raise MCPError(code=INVALID_PARAMS, message=f"Unknown tool: {_show(name, 60)} not found.{hint} "
                                                    f"Tools: {', '.join(names)}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return _error_result(f"invalid arguments for {name}: they must be a JSON object (got {_show(args)}). "
                             "Fix: pass {\"name\": value, ...}.")
    args = _legacy(tool, args)
    if (problem := check_arguments(tool, args)) is not None:
        return _error_result(problem)
    result = await call_next(replace(ctx, params={**params, "arguments": args}))
    return _tidy(result, name)


def _outcome(result: Any, method: str) -> tuple[str, str]:
    if method == "tools/call":
        data = result if isinstance(result, dict) else {"isError": getattr(result, "is_error", False)}
        return ("error" if data.get("isError") else "ok"), _first_text(result)[:500]
    return "ok", ""


def make_gate(mcp: MCPServer):
    async def gate(ctx, call_next):
        if ctx.request_id is None:  # a notification
            return await call_next(ctx)
        t0 = time.perf_counter()
        method = ctx.method
        params = ctx.params if isinstance(ctx.params, Mapping) else {}
        tool, args = _audit_subject(method, params)
        outcome, detail = "error", ""
        try:
            if method == REFUSED:
                tool, args = str(params.get("name") or params.get("method") or "<unparsable>")[:100], {}
                raise MCPError(code=int(params.get("code") or INVALID_PARAMS), message=str(params.get("reason")))
            if method == "tools/call":
                result = await _tools_call(mcp, ctx, call_next, params)
            else:
                if method == "tools/list" and state.lab is not None:
                    refresh_schemas(mcp, state.lab)
                elif method == "prompts/get":
                    names = [p.name for p in await mcp.list_prompts()]
                    if params.get("name") not in names:
                        raise MCPError(code=INVALID_PARAMS, message=f"Unknown prompt: {_show(params.get('name'))}. "
                                                                    f"Prompts: {', '.join(names)}")
                result = await call_next(ctx)
            outcome, detail = _outcome(result, method)
            return result
        except MCPError as exc:
            detail = f"{exc.code}: {exc.message}"
            raise
        except ValidationError as exc:
            detail = "invalid params: " + "; ".join(e["msg"] for e in exc.errors(include_url=False))[:400]
            raise
        except ValueError as exc:  # the SDK's prompt errors: a proper code, not 0
            detail = str(exc)
            raise MCPError(code=INVALID_PARAMS, message=_clean_text(str(exc), 500)) from exc
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            log.exception("%s failed", method)
            raise MCPError(code=INTERNAL_ERROR, message=f"{method} failed with an internal error "
                                                        f"({type(exc).__name__}); the server log has the traceback") \
                from exc
        except BaseException:
            outcome, detail = "cancelled", "the request was cancelled or the connection closed"
            raise
        finally:
            ms = (time.perf_counter() - t0) * 1000
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_audit, tool, args, outcome, detail, ms)
    return gate


def build_server() -> MCPServer:
    server = MCPServer("eclip-autoresearch", title="eCLIP autoresearch", version=_version(),
                       instructions=INSTRUCTIONS)
    server.middleware.append(make_gate(server))
    experiment_tools.register(server)
    research_tools.register(server)
    history_tools.register(server)
    lean_schemas(server)
    return server


mcp = build_server()


def configure(root: Path | str) -> Lab:
    """Open the workspace (recovering runs left over from a previous server) and list
    evaluate_test only if the workspace allows it."""
    try:
        lab = open_workspace(root)
    except ToolError:
        research_tools.set_test_eval(mcp, False)
        raise
    research_tools.set_test_eval(mcp, bool(lab.config.allow_test_eval))
    lean_schemas(mcp)
    refresh_schemas(mcp, lab)
    return lab


def _run(fn) -> None:
    try:
        import uvloop  # noqa: F401
        anyio.run(fn, backend_options={"use_uvloop": True})
    except ImportError:
        anyio.run(fn)


_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_HEAD_ID = re.compile(r'"id"\s*:\s*(-?\d{1,15}|"[^"\\]{0,100}")')


def _checked_line(line: str) -> str:
    """A stdio line as the SDK will parse it; one it cannot parse (a lone surrogate escape, nesting
    deeper than its JSON parser allows, broken JSON) but that names a request id becomes a REFUSED
    request, which the gate answers with the reason (and audits) instead of leaving the caller
    waiting for an answer that never comes."""
    try:
        mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        return line
    except Exception as exc:
        problem = str(exc)
    try:
        msg = json.loads(line)
    except (ValueError, RecursionError):
        msg = None
    if isinstance(msg, dict):
        rid, method, params = msg.get("id"), msg.get("method"), msg.get("params")
    else:
        m = _HEAD_ID.search(line.split('"params"', 1)[0])
        rid, method, params = (json.loads(m.group(1)) if m else None), None, None
    if not isinstance(rid, (int, str)) or isinstance(rid, bool):
        return line  # no id to answer: the SDK drops it, as JSON-RPC allows for a notification
    if "recursion limit" in problem or (msg is None and line.count("[") + line.count("{") > 100):
        why = "its JSON is nested too deeply (the limit is about 150 levels)"
    elif _SURROGATE.search(line):
        why = "it contains invalid Unicode (a lone surrogate escape such as \\ud800)"
    elif msg is None:
        why = "it is not valid JSON"
    else:
        why = "it is not a valid JSON-RPC request"
    name = params.get("name") if isinstance(params, dict) and isinstance(params.get("name"), str) else None
    clean = (lambda s: _clean_text(s.encode("utf-8", "replace").decode("utf-8"), 100) if isinstance(s, str) else None)
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": REFUSED, "params": {
        "method": clean(method), "name": clean(name), "code": INVALID_PARAMS if msg is not None else PARSE_ERROR,
        "reason": f"request refused: {why}. Fix: send valid UTF-8 JSON with plain text arguments"}})


class _CheckedStdin:
    """stdin for the SDK's stdio transport, each line through _checked_line."""

    def __init__(self):
        self.file = anyio.wrap_file(open(sys.stdin.fileno(), "r", encoding="utf-8", errors="replace", closefd=False))

    async def __aiter__(self):
        async for line in self.file:
            yield _checked_line(line)


async def _run_stdio() -> None:
    server = mcp._lowlevel_server
    async with stdio_server(stdin=_CheckedStdin()) as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def serve(root: Path | str) -> None:
    configure(root)
    _run(_run_stdio)


# -- Streamable HTTP ---------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class BearerAuth:
    """ASGI: every HTTP request needs `Authorization: Bearer <token>` (compared in constant time);
    anything else gets 401. Lifespan events pass through."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        auth = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = auth.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            body = json.dumps({"error": "unauthorized", "error_description": (
                "this MCP server needs `Authorization: Bearer <token>`; the token is in the workspace's "
                f"{clients.TOKEN_FILE} (see `autoresearch clients`)")}).encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"www-authenticate", b'Bearer realm="autoresearch"')]})
            await send({"type": "http.response.body", "body": body})
            return
        return await self.app(scope, receive, send)


def http_security(host: str, port: int, allowed_hosts: list[str] | None) -> TransportSecuritySettings:
    """Host/Origin checks (DNS rebinding): the loopback names, plus, off loopback, the bound address,
    this machine's names and any --allowed-host."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    if not is_loopback(host):
        extra = [h for h in (host, socket.gethostname(), socket.getfqdn()) if h and h not in ("0.0.0.0", "::")]
        names += [f"[{h}]" if ":" in h else h for h in extra]
    names += list(allowed_hosts or [])
    names = list(dict.fromkeys(names))
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*names, *(f"{n}:*" for n in names)],
        allowed_origins=[f"{s}://{n}{p}" for n in names for s in ("http", "https") for p in ("", ":*")])


def http_app(lab: Lab, host: str = "127.0.0.1", port: int = HTTP_PORT, allowed_hosts: list[str] | None = None):
    """The ASGI app of `serve --http`: bearer token, then the SDK's Streamable HTTP transport."""
    token = clients.read_token(lab.root, create=is_loopback(host))
    starlette = mcp.streamable_http_app(streamable_http_path=HTTP_PATH, host=host,
                                        transport_security=http_security(host, port, allowed_hosts))
    return BearerAuth(starlette, token)


def serve_http(root: Path | str, host: str = "127.0.0.1", port: int = HTTP_PORT,
               allowed_hosts: list[str] | None = None) -> None:
    import uvicorn  # only the HTTP server needs it

    lab = configure(root)
    try:
        app = http_app(lab, host, port, allowed_hosts)
    except ToolError as exc:
        if is_loopback(host):
            raise
        raise ToolError(f"REFUSING to bind {host}, an address other machines can reach, without a valid bearer "
                        f"token: {exc}") from None
    if not is_loopback(host):
        print(f"autoresearch: WARNING: serving on {host}, reachable from other machines; every request needs the "
              f"bearer token in {lab.root / clients.TOKEN_FILE}. Prefer an SSH tunnel to a loopback server.",
              file=sys.stderr, flush=True)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{HTTP_PATH}"
    print(f"autoresearch: serving {lab.root} over Streamable HTTP at {url} "
          f"(bearer token in {lab.root / clients.TOKEN_FILE}); Ctrl-C stops", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    _run(uvicorn.Server(config).serve)


def serve_command(args) -> int:
    """`autoresearch serve [--http --host H --port N --allowed-host NAME]`."""
    if getattr(args, "http", False):
        serve_http(Path(args.workspace), args.host, args.port, args.allowed_host)
    else:
        serve(Path(args.workspace))
    return 0
