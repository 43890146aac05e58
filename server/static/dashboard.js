// The autoresearch dashboard: polls /api/state, redraws what changed. Text goes in as textContent only.
"use strict";
const $ = (id) => document.getElementById(id);
let state = null, selected = null, lastDetail = 0;

function num(v, sig = 4) {
  if (v === null || v === undefined) return "-";
  if (typeof v !== "number") return String(v);
  if (v === 0) return "0";
  const mag = Math.floor(Math.log10(Math.abs(v)));
  if (mag >= 6 || mag < -4) return v.toExponential(sig - 1);
  const text = v.toFixed(Math.max(0, sig - 1 - mag));
  return text.includes(".") ? text.replace(/\.?0+$/, "") : text;
}
const spread = (v, sig = 2) => (v ? num(v, sig) : "-");  // 0 or none: no spread was measured
const signed = (v) => (v === null || v === undefined) ? "-" : (v >= 0 ? "+" : "") + num(v);
function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; }
function dur(s) { if (s === null || s === undefined) return "-"; s = Math.round(s); return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0"); }

function stateCell(r) {
  const td = el("td");
  const cls = r.state.startsWith("truncated") ? "st-truncated" : "st-" + r.status;
  td.className = cls;
  if (r.progress) {
    const p = r.progress, bar = el("span", undefined, "bar"), fill = el("span");
    let frac = p.steps_total && p.step ? p.step / p.steps_total : (p.budget_s && p.elapsed ? p.elapsed / p.budget_s : 0);
    fill.style.width = Math.min(100, 100 * frac).toFixed(0) + "%";
    bar.appendChild(fill); td.appendChild(bar);
    let text = r.status;
    if (p.folds > 1 && p.fold !== null) text += ` fold ${p.fold + 1}/${p.folds}`;
    if (p.step !== null) text += ` step ${p.step}` + (p.steps_total ? `/${p.steps_total}` : "");
    if (p.loss !== null) text += ` loss ${num(p.loss)}`;
    if (p.phase) text += ` (${p.phase})`;
    if (p.elapsed !== null) text += ` ${dur(p.elapsed)}`;
    td.appendChild(document.createTextNode(text));
  } else td.textContent = r.state;
  return td;
}

function renderTable(s) {
  const tb = $("exps").tBodies[0]; tb.replaceChildren();
  for (const r of s.experiments) {
    const tr = el("tr"); tr.dataset.id = r.id; if (r.id === selected) tr.className = "sel";
    tr.appendChild(el("td", r.id, "num"));
    tr.appendChild(stateCell(r));
    tr.appendChild(el("td", r.verdict_words));
    tr.appendChild(el("td", num(r.objective), "num"));
    tr.appendChild(el("td", spread(r.objective_std), "num"));
    tr.appendChild(el("td", r.group_n > 1 ? num(r.group_std, 2) + ` (n=${r.group_n})` : "-", "num"));
    tr.appendChild(el("td", signed(r.delta), "num"));
    tr.appendChild(el("td", r.kept ? "★" : "", r.kept ? "kept" : ""));
    tr.appendChild(el("td", num(r.duration_s, 3), "num"));
    tr.appendChild(el("td", r.description, "desc"));
    tr.addEventListener("click", () => select(r.id));
    tb.appendChild(tr);
  }
  $("count").textContent = `(${s.total}${s.best_id ? ", best #" + s.best_id : ""})`;
}

function renderTrajectory(s) {
  const tb = $("traj").tBodies[0]; tb.replaceChildren();
  for (const p of s.trajectory) {
    const tr = el("tr"); tr.addEventListener("click", () => select(p.id));
    tr.appendChild(el("td", "#" + p.id)); tr.appendChild(el("td", num(p.objective), "num"));
    tr.appendChild(el("td", spread(p.objective_std), "num")); tr.appendChild(el("td", signed(p.gain), "num"));
    tr.appendChild(el("td", p.description, "desc"));
    tb.appendChild(tr);
  }
  if (!s.trajectory.length) { const tr = el("tr"); const td = el("td", "no best yet", "muted"); td.colSpan = 5; tr.appendChild(td); tb.appendChild(tr); }
}

function curveSvg(points, label) {
  const NS = "http://www.w3.org/2000/svg", W = 600, H = 180, L = 52, R = 10, T = 10, B = 26;
  const svg = document.createElementNS(NS, "svg"); svg.setAttribute("viewBox", `0 0 ${W} ${H}`); svg.setAttribute("class", "curve");
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", label);
  const pts = points.filter((p) => Number.isFinite(p[1]));
  const text = (x, y, t, anchor) => { const e = document.createElementNS(NS, "text"); e.setAttribute("x", x); e.setAttribute("y", y); e.setAttribute("font-size", "11"); e.setAttribute("fill", "#667085"); if (anchor) e.setAttribute("text-anchor", anchor); e.textContent = t; svg.appendChild(e); };
  if (pts.length < 2) { text(W / 2, H / 2, "no loss curve recorded", "middle"); return svg; }
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => L + (x - x0) / ((x1 - x0) || 1) * (W - L - R), sy = (y) => T + (1 - (y - y0) / ((y1 - y0) || 1)) * (H - T - B);
  const axis = document.createElementNS(NS, "path"); axis.setAttribute("d", `M${L},${T} V${H - B} H${W - R}`); axis.setAttribute("stroke", "#d0d5dd"); axis.setAttribute("fill", "none"); svg.appendChild(axis);
  // a NaN/inf loss arrives as null: the line breaks there (a gap), it never drops to 0
  const segments = [[]];
  for (const p of points) { if (Number.isFinite(p[1])) segments[segments.length - 1].push(p); else if (segments[segments.length - 1].length) segments.push([]); }
  for (const seg of segments.filter((s) => s.length)) {
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", seg.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" "));
    line.setAttribute("fill", "none"); line.setAttribute("stroke", "#1f5fbf"); line.setAttribute("stroke-width", "1.5"); svg.appendChild(line);
  }
  text(L - 4, T + 8, num(y1), "end"); text(L - 4, H - B, num(y0), "end");
  text(L, H - 8, "step " + x0); text(W - R, H - 8, "step " + x1, "end"); text(W / 2, H - 8, "training loss", "middle");
  return svg;
}

function diffPre(diff) {
  const pre = el("pre");
  for (const line of (diff || "(no change)").split("\n")) {
    const cls = line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : line.startsWith("@@") ? "hunk" : "";
    pre.appendChild(el("span", line + "\n", cls));
  }
  return pre;
}

function renderDetail(d) {
  $("detail").hidden = false;
  $("d-title").textContent = `Experiment #${d.id}: ${d.description}`;
  const body = $("d-body"); body.replaceChildren();
  const dl = el("dl");
  const row = (k, v) => { if (v === null || v === undefined || v === "") return; dl.appendChild(el("dt", k)); dl.appendChild(el("dd", String(v))); };
  row("status", d.state); row("verdict", d.verdict_words); row("why", d.verdict_reason);
  row(state ? state.metric.replace(/_/g, " ") : "objective", d.objective === null ? null : num(d.objective) + (d.objective_std ? " ± " + num(d.objective_std, 3) : "") + (d.delta !== null ? `  (${signed(d.delta)} vs best)` : ""));
  if (d.group && d.group.n > 1) row("seed group", `n=${d.group.n}, mean ${num(d.group.mean)}, std of the mean ${num(d.group.std, 3)}`);
  row("hypothesis", d.hypothesis);
  row("snapshot", (d.snapshot_commit || "-").slice(0, 10) + (d.parent_id ? `, parent #${d.parent_id}` : "") + (d.rerun_of ? `, ${d.rerun_kind} of #${d.rerun_of}` : ""));
  row("time", d.duration_s === null ? null : num(d.duration_s, 3) + " s, sandbox " + (d.sandbox || "-"));
  const consts = (d.config.provenance || {}).constants || {};
  const params = d.config.params || {};
  row("constants", Object.entries(consts).map(([k, v]) => `${k}=${v}` + (k in params ? "*" : "")).join(", "));
  const ms = Object.entries(d.metrics || {}).filter(([k]) => !k.endsWith("_std") && k !== "objective");
  row("metrics", ms.slice(0, 20).map(([k, v]) => `${k} ${num(v)}`).join(", "));
  row("error", d.error);
  body.appendChild(dl);
  body.appendChild(el("h2", "Loss curve")); body.appendChild(curveSvg(d.loss_curve || [], `loss curve of experiment ${d.id}`));
  body.appendChild(el("h2", "Code diff against its parent")); body.appendChild(diffPre(d.diff));
  body.appendChild(el("h2", "Notes"));
  if (d.notes && d.notes.length) { for (const n of d.notes) body.appendChild(el("pre", n)); } else body.appendChild(el("p", "no notes", "muted"));
  body.appendChild(el("h2", "Log tail")); body.appendChild(el("pre", d.log_tail || "(empty)"));
}

async function getJSON(url) { const r = await fetch(url, { credentials: "same-origin" }); if (!r.ok) throw new Error(url + ": " + r.status); return r.json(); }

async function select(id) {
  selected = id;
  for (const tr of $("exps").tBodies[0].rows) tr.className = Number(tr.dataset.id) === id ? "sel" : "";
  try { renderDetail(await getJSON(`/api/experiment/${id}`)); lastDetail = Date.now(); } catch (e) { console.error(e); }
  history.replaceState(null, "", "#" + id);
}

async function poll() {
  try {
    const s = await getJSON("/api/state");
    const changed = !state || s.version !== state.version;
    const running = s.experiments.some((r) => r.progress);
    state = s;
    $("title").textContent = s.workspace; $("meta").textContent = s.metric_label + " · " + s.root;
    $("exps-metric").textContent = s.metric.replace(/_/g, " "); $("traj-metric").textContent = s.metric.replace(/_/g, " ");
    renderTable(s);
    if (changed) { renderTrajectory(s); $("plot").src = "/plot/progress.png?v=" + s.version; }
    if (selected !== null) {
      const sel = s.experiments.find((r) => r.id === selected);
      if (changed || (sel && sel.progress && Date.now() - lastDetail > 3000)) await select(selected);
    }
    $("live").textContent = running ? "live: runs in progress" : "live"; $("live").className = "live on";
    document.body.dataset.version = s.version;
  } catch (e) { $("live").textContent = "disconnected: " + e.message; $("live").className = "live"; }
  setTimeout(poll, 2000);
}

const hash = Number(location.hash.slice(1));
if (hash > 0) selected = hash;
poll();
