// A client in another language against `autoresearch serve`: the MCP TypeScript SDK with Ajv in strict
// mode (strict: true) as its JSON Schema validator. Every published input and output schema must
// compile under strict Ajv; every tool result is validated by the SDK against the tool's output
// schema; one full run streams progress that strictly increases. Run by tests/test_mcp_ts_client.py:
//   AR_NODE_MODULES=.ci/node/node_modules AR_SERVER_ARGV='["autoresearch","serve","-w","ws"]' node tests/mcp_strict_client.cjs
// Prints one JSON line (what it saw); exits 1 with the reason on the first failure.
"use strict";
const path = require("path");
const { createRequire } = require("module");

const req = createRequire(path.join(path.resolve(process.env.AR_NODE_MODULES || ".ci/node/node_modules"), "_.js"));
const { Client } = req("@modelcontextprotocol/sdk/client/index.js");
const { StdioClientTransport } = req("@modelcontextprotocol/sdk/client/stdio.js");
const { AjvJsonSchemaValidator } = req("@modelcontextprotocol/sdk/validation/ajv");
const AjvModule = req("ajv");
const Ajv = AjvModule.default || AjvModule;

function check(ok, what) {
  if (!ok) throw new Error(what);
}

async function main() {
  const [command, ...args] = JSON.parse(process.env.AR_SERVER_ARGV);
  const ajv = new Ajv({ strict: true, allErrors: true });
  const client = new Client({ name: "autoresearch-strict-ts", version: "1.0.0" },
                            { jsonSchemaValidator: new AjvJsonSchemaValidator(ajv) });
  await client.connect(new StdioClientTransport({ command, args, stderr: "ignore" }));
  const out = { server: client.getServerVersion() };
  check(out.server && out.server.name === "eclip-autoresearch" && out.server.version, "serverInfo has no name/version");

  const { tools } = await client.listTools();
  out.tools = tools.length;
  out.tools_list_bytes = Buffer.byteLength(JSON.stringify({ tools }));
  const strict = new Ajv({ strict: true, allErrors: true });
  for (const t of tools) {
    check(t.title && t.description, `${t.name}: no title or description`);
    strict.compile(t.inputSchema); // throws on anything strict mode refuses
    if (t.outputSchema) strict.compile(t.outputSchema);
  }

  const progress = [];
  const run = await client.callTool(
    { name: "run_experiment", arguments: { description: "baseline from TypeScript", params: { SLEEP_PER_STEP: 0.01 } } },
    undefined, { onprogress: (p) => progress.push(p), timeout: 120000, resetTimeoutOnProgress: true });
  check(!run.isError, `run_experiment failed: ${JSON.stringify(run.content)}`);
  check(run.structuredContent.status === "succeeded", `run: ${JSON.stringify(run.structuredContent)}`);
  check(progress.length > 0, "no progress notifications");
  for (let i = 1; i < progress.length; i++) {
    check(progress[i].progress > progress[i - 1].progress, `progress went back: ${JSON.stringify(progress)}`);
    check(progress[i].total === undefined || progress[i].progress <= progress[i].total, "progress beyond its total");
  }
  out.progress = progress.map((p) => [p.progress, p.total, p.message]);
  const id = run.structuredContent.id;

  // each result is validated by the SDK against the tool's output schema (it throws otherwise)
  const calls = [
    ["experiment_status", { experiment_id: id }], ["read_results", { limit: 5 }], ["show_experiment", { experiment_id: id }],
    ["write_note", { text: "from TypeScript", experiment_id: id, tags: ["ts"] }], ["read_notes", { tag: "ts" }],
    ["search_experiments", { query: "TypeScript" }], ["best_trajectory", {}], ["revert", { target: "best" }],
  ];
  out.ok = [];
  for (const [name, a] of calls) {
    const r = await client.callTool({ name, arguments: a });
    check(!r.isError, `${name} failed: ${JSON.stringify(r.content)}`);
    check(JSON.parse(r.content[0].text) !== null, `${name}: text is not JSON`);
    out.ok.push(name);
  }
  const bad = await client.callTool({ name: "experiment_status", arguments: { experiment_id: id, wait_seconds: 1 } });
  check(bad.isError && bad.content[0].text.includes("did you mean wait_s?"), `unknown argument: ${JSON.stringify(bad)}`);
  try {
    await client.callTool({ name: "no_such_tool", arguments: {} });
    check(false, "an unknown tool was not refused");
  } catch (err) {
    check(err.code === -32602, `unknown tool: code ${err.code}: ${err.message}`);
  }
  try {
    await client.readResource({ uri: "experiments://999" });
    check(false, "an unknown experiment resource was read");
  } catch (err) {
    check(err.code === -32602, `unknown resource: code ${err.code}`);
  }
  await client.close();
  console.log(JSON.stringify(out));
}

main().then(() => process.exit(0), (err) => {
  console.error(`strict TypeScript client: ${err && err.stack ? err.stack : err}`);
  process.exit(1);
});
