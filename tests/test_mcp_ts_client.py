"""A client in another language: the MCP TypeScript SDK with strict Ajv (tests/mcp_strict_client.cjs)
against `autoresearch serve` on a fresh toy workspace: schemas compile in strict mode, results match
their output schemas, one full run with strictly increasing progress, errors with spec codes.

.ci/run installs the SDK into .ci/node next to the Inspector; without node this module is skipped,
saying why; with node but without the SDK it fails with the command that installs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import missing_external

ROOT = Path(__file__).resolve().parents[1]
SDK_VERSION = "1.32.2"  # keep in step with .ci/run
NODE_MODULES = ROOT / ".ci/node/node_modules"
INSTALL = f"npm install --no-save --prefix .ci/node @modelcontextprotocol/sdk@{SDK_VERSION}"


def test_typescript_sdk_with_strict_schema_validation(toy_ws):
    if shutil.which("node") is None:
        missing_external("node not installed: the TypeScript SDK client needs Node >= 18",
                         f"install Node, then {INSTALL} (as .ci/run does)")
    if not (NODE_MODULES / "@modelcontextprotocol/sdk/package.json").is_file():
        missing_external("the MCP TypeScript SDK is not installed", f"{INSTALL} (what .ci/run does)")
    argv = [sys.executable, "-P", "-m", "server.cli", "serve", "--workspace", str(toy_ws)]
    proc = subprocess.run(["node", str(ROOT / "tests/mcp_strict_client.cjs")], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=240, cwd=toy_ws,
                          env={"PATH": os.environ["PATH"], "HOME": str(toy_ws),
                               "AR_NODE_MODULES": str(NODE_MODULES), "AR_SERVER_ARGV": json.dumps(argv)})
    assert proc.returncode == 0, f"stdout={proc.stdout[-2000:]}\nstderr={proc.stderr[-4000:]}"
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nTypeScript SDK (strict Ajv): {seen['tools']} tools, tools/list {seen['tools_list_bytes']} bytes, "
          f"progress {[p[0] for p in seen['progress']]}")
    assert seen["server"]["version"] and len(seen["ok"]) == 8 and seen["tools_list_bytes"] <= 12 * 1024
