// The dashboard page: one live stream (/api/live) for the tree, the figures and the
// lifecycle events; JSON calls for a container's detail, dead letters and state; a
// state watch stream while a namespace is open. No framework, nothing fetched from
// elsewhere.
"use strict";

const $ = (selector) => document.querySelector(selector);
let writes = false;
let selected = null;
let lastView = null;
let deadLettersSeen = -1;
let stateWatch = null;

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("data-")) node.setAttribute(name, value);
    else node[name] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function rate(perSecond) {
  if (!perSecond) return "0";
  return perSecond >= 100 ? perSecond.toFixed(0) : perSecond.toFixed(1);
}

function latency(micros) {
  if (micros === null || micros === undefined) return "-";
  if (micros < 1000) return `${micros}µs`;
  if (micros < 1e6) return `${(micros / 1000).toFixed(1)}ms`;
  return `${(micros / 1e6).toFixed(2)}s`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return "-";
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function time(ms) {
  return new Date(ms).toLocaleTimeString();
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

async function start() {
  if (new URLSearchParams(location.search).get("login") === "failed") {
    $("#login-failed").hidden = false;
  }
  let me;
  try {
    me = await api("/api/whoami");
  } catch (error) {
    $("#login").hidden = false;
    $("#token").focus();
    return;
  }
  writes = me.writes;
  $("#mode").textContent = writes ? "read-write" : "read-only";
  $("#logout").hidden = false;
  $("#app").hidden = false;
  if (!writes) document.body.classList.add("read-only");
  follow();
  loadDeadLetters();
  $("#state-form").addEventListener("submit", (event) => {
    event.preventDefault();
    openState($("#state-ns").value.trim(), $("#state-prefix").value);
  });
}

function follow() {
  const live = new EventSource("/api/live");
  live.addEventListener("open", () => { $("#connection").textContent = "live"; });
  live.addEventListener("error", () => { $("#connection").textContent = "reconnecting…"; });
  live.addEventListener("view", (message) => showView(JSON.parse(message.data)));
  live.addEventListener("lifecycle", (message) => showEvent(JSON.parse(message.data)));
}

function showView(view) {
  lastView = view;
  const node = view.node;
  $("#node-name").textContent = `node ${node.name}`;
  $("#node-summary").textContent = `up ${duration(node.uptime_ms)} · ${node.containers} containers`;
  const figures = [
    ["routed/s", rate(node.routed_per_s)],
    ["requests/s", rate(node.replies_per_s)],
    ["p50", latency(node.p50_us)],
    ["p99", latency(node.p99_us)],
    ["errors/s", rate(node.errors_per_s)],
    ["dead letters", node.dead_letters],
    ["expired", node.requests_expired],
    ["state ops/s", rate(node.state_ops_per_s)],
  ];
  $("#figures").replaceChildren(
    ...figures.map(([label, value]) => el("div", { class: "figure" }, el("b", {}, value), el("span", {}, label))),
  );
  const rows = view.containers.map(containerRow);
  $("#tree tbody").replaceChildren(...rows);
  drawRestarts(view.restarts, view.at_ms);
  if (node.dead_letters !== deadLettersSeen) loadDeadLetters();
}

function containerRow(c) {
  const row = el("tr", { "data-alias": c.alias, class: c.attached ? "" : "detached" },
    el("td", { class: "alias" }, "\u00a0\u00a0".repeat(c.depth) + c.alias),
    el("td", {}, c.node || "-"),
    el("td", { class: `state state-${c.state}` }, c.state),
    el("td", {}, c.kind || "-"),
    el("td", { class: "num" }, c.pid || "-"),
    el("td", { class: "num" }, duration(c.uptime_ms)),
    el("td", { class: "num restarts" }, c.restarts ?? "-"),
    el("td", { class: "num queue" }, c.queue),
    el("td", { class: "num" }, rate(c.in_per_s)),
    el("td", { class: "num" }, rate(c.out_per_s)),
    el("td", { class: "num" }, rate(c.answers_per_s)),
    el("td", { class: "num" }, latency(c.p50_us)),
    el("td", { class: "num" }, latency(c.p99_us)),
    actions(c),
  );
  if (c.alias === selected) row.classList.add("selected");
  row.addEventListener("click", () => showDetail(c.alias));
  return row;
}

function actions(c) {
  const cell = el("td", { class: "actions" });
  if (!writes || c.restarts === null || c.restarts === undefined) return cell;
  for (const action of ["restart", "stop", "start", "destroy"]) {
    const button = el("button", { "data-action": action, class: action === "destroy" ? "danger" : "" }, action);
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      confirmThen(`${action} ${c.alias}?`, () => act(c.alias, action));
    });
    cell.append(button);
  }
  return cell;
}

function confirmThen(question, then) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = question;
  dialog.returnValue = "";
  dialog.addEventListener("close", () => { if (dialog.returnValue === "yes") then(); }, { once: true });
  dialog.showModal();
}

async function act(alias, action) {
  try {
    const done = await api(`/api/containers/${encodeURIComponent(alias)}/${action}`, {
      method: "POST",
      headers: { "x-reef-dashboard": "1" },
    });
    showEvent({ at_ms: Date.now(), alias, kind: "DASHBOARD", phase: "", reason: done.done, state: "" });
  } catch (error) {
    showEvent({ at_ms: Date.now(), alias, kind: "REFUSED", phase: "", reason: error.message, state: "" });
  }
}

function eventLine(e) {
  const phase = e.phase ? ` ${e.phase}` : "";
  const state = e.state ? ` [${e.state}]` : "";
  return el("li", { "data-alias": e.alias, "data-kind": e.kind },
    `${time(e.at_ms)} ${e.alias} ${e.kind}${phase}${state} ${e.reason}`);
}

function showEvent(e) {
  const list = $("#events");
  list.prepend(eventLine(e));
  while (list.children.length > 200) list.lastChild.remove();
  if (selected === e.alias) $("#detail-events").prepend(eventLine(e));
}

function drawRestarts(marks, nowMs) {
  const svg = $("#restart-chart");
  const minutes = 30;
  const perMinute = new Array(minutes).fill(0);
  let total = 0;
  for (const mark of marks) {
    const ago = Math.floor((nowMs - mark.at_ms) / 60000);
    if (ago >= 0 && ago < minutes) {
      perMinute[minutes - 1 - ago] += mark.count;
      total += mark.count;
    }
  }
  const highest = Math.max(1, ...perMinute);
  const width = 600 / minutes;
  const ns = "http://www.w3.org/2000/svg";
  const bars = perMinute.map((count, i) => {
    const rect = document.createElementNS(ns, "rect");
    const height = (count / highest) * 110;
    rect.setAttribute("x", i * width + 1);
    rect.setAttribute("y", 120 - height);
    rect.setAttribute("width", width - 2);
    rect.setAttribute("height", height);
    const title = document.createElementNS(ns, "title");
    title.textContent = `${count} restart(s), ${minutes - 1 - i} min ago`;
    rect.append(title);
    return rect;
  });
  svg.replaceChildren(...bars);
  $("#restart-total").textContent = `${total} restart(s) in the last ${minutes} minutes; most in a minute: ${Math.max(...perMinute)}`;
}

async function showDetail(alias) {
  selected = alias;
  for (const row of document.querySelectorAll("#tree tbody tr")) {
    row.classList.toggle("selected", row.dataset.alias === alias);
  }
  let detail;
  try {
    detail = await api(`/api/containers/${encodeURIComponent(alias)}`);
  } catch (error) {
    $("#detail").hidden = false;
    $("#detail-alias").textContent = `${alias}: ${error.message}`;
    return;
  }
  $("#detail").hidden = false;
  $("#detail-alias").textContent = alias;
  const rates = lastView?.containers.find((c) => c.alias === alias);
  const s = detail.supervised;
  const status = [
    ["state", detail.state],
    ["pid", detail.pid || "-"],
    ["attached", detail.attached ? "yes" : "no"],
    ["kind", s?.kind ?? "not supervised"],
    ["restarts", s?.restarts ?? "-"],
    ["activity", s?.activity || "-"],
    ["last failure", s?.last_failure || "-"],
    ["last exit", s?.last_exit || "-"],
    ["command", s?.command || "-"],
    ["latency p50 / p99", rates ? `${latency(rates.p50_us)} / ${latency(rates.p99_us)}` : "-"],
  ];
  $("#detail-status").replaceChildren(...status.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  const policy = s?.policy ? Object.entries(s.policy) : [];
  $("#detail-policy").replaceChildren(...policy.flatMap(([k, v]) => [
    el("dt", {}, k.replaceAll("_", " ")), el("dd", {}, Array.isArray(v) ? v.join(", ") || "-" : v),
  ]));
  $("#detail-events").replaceChildren(...detail.events.slice().reverse().map(eventLine));
  $("#detail-logs").textContent = detail.logs || "(no log)";
}

async function loadDeadLetters() {
  try {
    const dead = await api("/api/dead-letters");
    deadLettersSeen = lastView ? lastView.node.dead_letters : dead.total;
    $("#dead-total").textContent = `${dead.total} in all`;
    $("#dead-letters tbody").replaceChildren(...dead.letters.slice().reverse().map((d) => el("tr", {},
      el("td", {}, time(d.at_ms)), el("td", {}, d.kind), el("td", {}, d.origin), el("td", {}, d.destination),
      el("td", {}, d.reason), el("td", {}, d.preview))));
  } catch (error) {
    $("#dead-total").textContent = error.message;
  }
}

function stateRow(key, value, revision) {
  return el("tr", { "data-key": key }, el("td", {}, key), el("td", { class: "value" }, value), el("td", { class: "num" }, revision));
}

async function openState(namespace, prefix) {
  if (stateWatch) stateWatch.close();
  const query = `prefix=${encodeURIComponent(prefix)}`;
  const base = `/api/state/${encodeURIComponent(namespace)}`;
  let page;
  try {
    page = await api(`${base}?${query}`);
  } catch (error) {
    $("#state-status").textContent = error.message;
    return;
  }
  const body = $("#state-table tbody");
  body.replaceChildren(...page.keys.map((kv) => stateRow(kv.key, kv.value, kv.revision)));
  $("#state-status").textContent = `revision ${page.revision}${page.more ? " · first keys only" : ""} · watching`;
  stateWatch = new EventSource(`${base}/watch?${query}&from=${page.revision + 1}`);
  stateWatch.addEventListener("changes", (message) => {
    const batch = JSON.parse(message.data);
    for (const change of batch.changes) {
      const existing = body.querySelector(`tr[data-key="${CSS.escape(change.key)}"]`);
      if (change.kind === "delete") {
        existing?.remove();
        continue;
      }
      const row = stateRow(change.key, change.value, change.revision);
      row.classList.add("flash");
      if (existing) existing.replaceWith(row); else body.append(row);
    }
    $("#state-status").textContent = `revision ${batch.revision} · watching`;
  });
}

start();
