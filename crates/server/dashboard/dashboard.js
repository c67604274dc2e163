// Flotilla's dashboard: plain JavaScript, no framework, no build step (see
// crates/server/src/dashboard.rs). It calls the Docker Cloud API paths with the session
// cookie (set by POST /session) and sends the session's CSRF token as X-CSRF-Token on every
// change; lists are refreshed from the events websocket, so nothing needs a reload.
"use strict";

// The paths of crates/api/src/uri.rs (the typed client), as the browser needs them.
const API = {
  session: "/session",
  clusters: "/api/infra/v1/nodecluster/",
  preview: "/api/infra/v1/nodecluster/preview/",
  nodes: "/api/infra/v1/node/",
  swarms: "/api/infra/v1/swarm/",
  actions: "/api/audit/v1/action/",
  regions: "/api/infra/v1/region/",
  nodeTypes: "/api/infra/v1/nodetype/",
  profiles: "/api/infra/v1/provider/aws/instanceprofile/",
  events: "/api/audit/v1/events",
};
// A region's VPCs, subnets and security groups: `kind` is vpc, subnet or securitygroup.
const regionList = (regionUri, kind) => `${regionUri}${kind}/`;
const actionLogs = (uuid) => `/api/audit/v1/action/${uuid}/logs/?follow=true`;
const ALL = "?limit=1000";

const state = {
  csrf: null,
  user: null,
  clusters: [],
  nodes: [],
  swarms: [],
  actions: [],
  events: [],
  catalog: null,
  network: null,
  profiles: null,
  previewTimer: null,
  previewSeq: 0,
  logSocket: null,
  socket: null,
  refreshTimer: null,
  reconnectTimer: null,
};

const $ = (id) => document.getElementById(id);
const last = (uri) => (uri || "").replace(/\/+$/, "").split("/").pop();
const uuidOf = last;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

// ---- the API ----

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    return { status: 0, data: { error: `the server did not answer (${error.message})` } };
  }
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (response.status === 401 && path !== API.session) {
    loggedOut("Your session has ended; log in again.");
  }
  return { status: response.status, data };
}

// Every object of a list, following `meta.next` page by page.
async function listAll(path) {
  let answer = await call("GET", path + ALL);
  if (answer.status !== 200) return answer;
  const objects = [...answer.data.objects];
  for (let pages = 1; answer.data.meta.next && pages < 100; pages++) {
    answer = await call("GET", answer.data.meta.next);
    if (answer.status !== 200) return answer;
    objects.push(...answer.data.objects);
  }
  return { status: 200, data: { objects } };
}

const errorText = (answer) =>
  (answer.data && answer.data.error) || `the server answered ${answer.status}`;

// ---- relative times ----

function parseDate(text) {
  if (!text) return null;
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? null : date;
}

function relative(date) {
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  const ago = Math.abs(seconds);
  const suffix = seconds >= 0 ? " ago" : " from now";
  if (ago < 10) return "just now";
  if (ago < 60) return `${ago} s${suffix}`;
  if (ago < 3600) return `${Math.round(ago / 60)} min${suffix}`;
  if (ago < 86400) return `${Math.round(ago / 3600)} h${suffix}`;
  return `${Math.round(ago / 86400)} d${suffix}`;
}

function timeElement(text) {
  const date = parseDate(text);
  if (!date) return document.createTextNode("never");
  return el("time", { datetime: date.toISOString(), title: date.toString(), text: relative(date) });
}

setInterval(() => {
  for (const time of document.querySelectorAll("time[datetime]")) {
    time.textContent = relative(new Date(time.getAttribute("datetime")));
  }
}, 15000);

// ---- session ----

const VIEWS = ["login-view", "clusters-view", "cluster-view", "nodes-view", "swarms-view",
  "actions-view", "action-view", "events-view", "launch-view"];
const NAV = [["nav-clusters", ["clusters-view", "cluster-view"]], ["nav-nodes", ["nodes-view"]],
  ["nav-swarms", ["swarms-view"]], ["nav-actions", ["actions-view", "action-view"]],
  ["nav-events", ["events-view"]], ["nav-launch", ["launch-view"]]];

function showOnly(id) {
  for (const view of VIEWS) $(view).hidden = view !== id;
  if (id !== "action-view") closeLog();
  for (const [link, views] of NAV) {
    if (views.includes(id)) $(link).setAttribute("aria-current", "page");
    else $(link).removeAttribute("aria-current");
  }
}

function loggedOut(message) {
  state.csrf = null;
  state.user = null;
  if (state.socket) { state.socket.onclose = null; state.socket.close(); state.socket = null; }
  clearTimeout(state.reconnectTimer);
  $("top").hidden = true;
  $("login-error").textContent = message || "";
  showOnly("login-view");
  document.title = "Log in · Flotilla";
  $("login-user").focus();
}

function loggedIn(session) {
  state.csrf = session.csrf_token;
  state.user = session.user;
  $("whoami").textContent = session.user;
  $("top").hidden = false;
  connectEvents();
  refresh();
  route();
}

async function logIn(event) {
  event.preventDefault();
  const button = $("login-submit");
  button.disabled = true;
  $("login-error").textContent = "";
  const answer = await call("POST", API.session, {
    user: $("login-user").value.trim(),
    key: $("login-key").value,
  });
  button.disabled = false;
  if (answer.status === 200) {
    $("login-key").value = "";
    if (!location.hash || location.hash === "#/login") location.hash = "#/clusters";
    loggedIn(answer.data);
  } else {
    $("login-error").textContent =
      answer.status === 401 ? "Wrong user name or API key." : errorText(answer);
    $("login-key").focus();
  }
}

async function logOut() {
  await call("DELETE", API.session);
  location.hash = "#/login";
  loggedOut("You have logged out.");
}

// ---- live data ----

function connectEvents() {
  if (state.socket) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}${API.events}`);
  state.socket = socket;
  socket.onopen = () => {
    $("live").textContent = "live";
    $("live").classList.add("on");
    refresh();
  };
  socket.onmessage = (message) => {
    let event = null;
    try { event = JSON.parse(message.data); } catch (_) { return; }
    if (event.type === "auth") return;
    if (event.type !== "missed") {
      state.events.unshift(event);
      state.events.length = Math.min(state.events.length, 200);
      renderEvents();
    }
    // `missed`: events were lost; listing again catches up.
    scheduleRefresh();
  };
  socket.onclose = () => {
    state.socket = null;
    $("live").textContent = "reconnecting…";
    $("live").classList.remove("on");
    if (state.csrf) state.reconnectTimer = setTimeout(connectEvents, 2000);
  };
}

function scheduleRefresh() {
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => { state.refreshTimer = null; refresh(); }, 150);
}

async function refresh() {
  if (!state.csrf) return;
  const showing = (id) => !$(id).hidden;
  const [clusters, nodes, swarms, actions] = await Promise.all([
    listAll(API.clusters),
    listAll(API.nodes),
    showing("swarms-view") ? listAll(API.swarms) : null,
    showing("actions-view") || showing("action-view") ? call("GET", `${API.actions}?limit=100`) : null,
  ]);
  if (clusters.status === 200) state.clusters = clusters.data.objects;
  if (nodes.status === 200) state.nodes = nodes.data.objects;
  if (swarms && swarms.status === 200) state.swarms = swarms.data.objects;
  if (actions && actions.status === 200) state.actions = actions.data.objects;
  renderClusters();
  renderCluster();
  renderNodes();
  renderSwarms();
  renderActions();
  renderAction();
}

// ---- node clusters ----

const visible = (cluster) => cluster.state !== "Terminated";
const stateClass = (text) => "state " + (text || "").toLowerCase().replace(/[^a-z]+/g, "-");

function nodesOf(cluster) {
  return state.nodes.filter((node) => node.node_cluster === cluster.resource_uri);
}

function perAz(cluster) {
  const counts = new Map();
  for (const node of nodesOf(cluster)) {
    if (node.state === "Terminated") continue;
    const az = last(node.availability_zone) || "unplaced";
    counts.set(az, (counts.get(az) || 0) + 1);
  }
  if (counts.size === 0) return "—";
  return [...counts.entries()].sort().map(([az, n]) => `${az}: ${n}`).join(", ");
}

function clusterRow(cluster) {
  const uuid = cluster.uuid;
  const scaleId = `scale-${uuid}`;
  const row = el("tr", { "data-uuid": uuid },
    el("td", { "data-label": "Name", class: "name" }, el("a", { href: `#/clusters/${uuid}` })),
    el("td", { "data-label": "State" }, el("span", { class: "state" })),
    el("td", { "data-label": "Nodes per AZ", class: "per-az" }),
    el("td", { "data-label": "Region", class: "region" }),
    el("td", { "data-label": "Node type", class: "node-type" }),
    el("td", { "data-label": "Nodes", class: "counts" }),
    el("td", { "data-label": "Actions" },
      el("form", { class: "row-actions scale-form", novalidate: true, onsubmit: (e) => scale(e, uuid) },
        el("label", { for: scaleId, class: "visually-hidden", text: "Target number of nodes" }),
        el("input", { id: scaleId, class: "scale-input", type: "number", min: "0", step: "1", inputmode: "numeric",
          oninput: (e) => { e.target.dataset.dirty = "1"; } }),
        el("button", { type: "submit", class: "scale", text: "Scale" }),
        el("button", { type: "button", class: "remove", text: "Remove", onclick: () => remove(uuid) }))));
  return row;
}

function renderClusters() {
  const body = $("clusters-body");
  const shown = state.clusters.filter(visible);
  $("clusters-empty").hidden = shown.length !== 0;
  $("clusters-table").hidden = shown.length === 0;
  const existing = new Map([...body.rows].map((row) => [row.dataset.uuid, row]));
  shown.forEach((cluster, index) => {
    let row = existing.get(cluster.uuid);
    existing.delete(cluster.uuid);
    if (!row) { row = clusterRow(cluster); row.classList.add("flash"); }
    // Moved only when out of place: moving a row would take the focus from its field.
    if (body.rows[index] !== row) body.insertBefore(row, body.rows[index] || null);
    const link = row.querySelector(".name a");
    link.textContent = cluster.name;
    link.setAttribute("aria-label", `Node cluster ${cluster.name}`);
    const badge = row.querySelector(".state");
    badge.className = stateClass(cluster.state);
    badge.textContent = cluster.state;
    row.querySelector(".per-az").textContent = perAz(cluster);
    row.querySelector(".region").textContent = last(cluster.region);
    row.querySelector(".node-type").textContent = last(cluster.node_type);
    row.querySelector(".counts").textContent = `${cluster.current_num_nodes} / ${cluster.target_num_nodes}`;
    const input = row.querySelector(".scale-input");
    input.setAttribute("aria-label", `Target number of nodes of ${cluster.name}`);
    if (document.activeElement !== input && !input.dataset.dirty) input.value = cluster.target_num_nodes;
    row.querySelector(".remove").setAttribute("aria-label", `Remove ${cluster.name}`);
    row.querySelector(".scale").setAttribute("aria-label", `Scale ${cluster.name}`);
  });
  for (const row of existing.values()) row.remove();
}

function banner(message) {
  $("banner").textContent = message || "";
  $("banner").hidden = !message;
}

async function scale(event, uuid) {
  event.preventDefault();
  const input = event.target.querySelector(".scale-input");
  const wanted = Number(input.value);
  const answer = await call("PATCH", `${API.clusters}${uuid}/`, { target_num_nodes: wanted });
  if (answer.status >= 200 && answer.status < 300) {
    delete input.dataset.dirty;
    banner("");
    refresh();
  } else {
    banner(errorText(answer));
  }
}

function confirmDialog(text, okText) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okText;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

async function remove(uuid) {
  const cluster = state.clusters.find((c) => c.uuid === uuid);
  const name = cluster ? cluster.name : uuid;
  const sure = await confirmDialog(
    `Remove node cluster ${name}? Its ${cluster ? cluster.current_num_nodes : ""} nodes are terminated; this cannot be undone.`,
    `Remove ${name}`);
  if (!sure) return;
  const answer = await call("DELETE", `${API.clusters}${uuid}/`);
  if (answer.status >= 200 && answer.status < 300) { banner(""); refresh(); }
  else banner(errorText(answer));
}

// ---- one cluster and its nodes ----

function renderCluster() {
  const match = location.hash.match(/^#\/clusters\/([^/]+)$/);
  if (!match || $("cluster-view").hidden) return;
  const cluster = state.clusters.find((c) => c.uuid === match[1]);
  if (!cluster) { $("cluster-title").textContent = "Node cluster not found"; return; }
  document.title = `${cluster.name} · Flotilla`;
  $("cluster-title").textContent = cluster.name;
  $("cluster-state").className = stateClass(cluster.state);
  $("cluster-state").textContent = cluster.state;
  const summary = $("cluster-summary");
  summary.replaceChildren();
  for (const [term, value] of [
    ["Region", last(cluster.region)], ["Node type", last(cluster.node_type)],
    ["Nodes", `${cluster.current_num_nodes} / ${cluster.target_num_nodes}`],
    ["Nodes per AZ", perAz(cluster)], ["Disk", `${cluster.disk} GB`],
  ]) summary.append(el("dt", { text: term }), el("dd", { text: value }));
  summary.append(el("dt", { text: "Deployed" }), el("dd", {}, timeElement(cluster.deployed_datetime)));
  const nodes = nodesOf(cluster).filter((n) => n.state !== "Terminated");
  $("nodes-empty").hidden = nodes.length !== 0;
  $("nodes-table").hidden = nodes.length === 0;
  $("nodes-body").replaceChildren(...nodes.map((node) => nodeRow(node, false)));
}

// One node's row; `withCluster` adds its cluster's name (the page of every node).
function nodeRow(node, withCluster) {
  const row = el("tr",
    { "data-uuid": node.uuid, class: node.state === "Unreachable" ? "unreachable" : null },
    el("td", { "data-label": "Node" }, el("code", { text: node.uuid.slice(0, 8), title: node.uuid })),
    el("td", { "data-label": "State" }, el("span", { class: stateClass(node.state), text: node.state })),
    el("td", { "data-label": "AZ", text: last(node.availability_zone) || "—" }),
    el("td", { "data-label": "Public IP", text: node.public_ip || "—" }),
    el("td", { "data-label": "DNS name", text: node.external_fqdn || "—" }),
    el("td", { "data-label": "Docker", text: node.docker_version || "—" }),
    el("td", { "data-label": "Last seen" }, timeElement(node.last_seen)));
  if (withCluster) {
    const cluster = state.clusters.find((c) => c.resource_uri === node.node_cluster);
    row.append(el("td", { "data-label": "Node cluster" }, cluster
      ? el("a", { href: `#/clusters/${cluster.uuid}`, text: cluster.name })
      : document.createTextNode(node.node_cluster ? "—" : "your own host")));
  }
  return row;
}

// ---- every node ----

function renderNodes() {
  if ($("nodes-view").hidden) return;
  const nodes = state.nodes.filter((n) => n.state !== "Terminated");
  $("all-nodes-empty").hidden = nodes.length !== 0;
  $("all-nodes-table").hidden = nodes.length === 0;
  $("all-nodes-body").replaceChildren(...nodes.map((node) => nodeRow(node, true)));
}

// ---- swarms ----

function renderSwarms() {
  if ($("swarms-view").hidden) return;
  const swarms = state.swarms.filter(visible);
  $("swarms-empty").hidden = swarms.length !== 0;
  $("swarms-list").replaceChildren(...swarms.map((swarm) => {
    const managers = swarm.nodes.filter((n) => n.role === "manager");
    const workers = swarm.nodes.filter((n) => n.role === "worker");
    const leader = swarm.nodes.find((n) => n.leader);
    const ports = swarm.load_balancer ? swarm.load_balancer.ports.map((p) => p.port).join(", ") : "";
    const summary = el("dl", { class: "summary" });
    for (const [term, value] of [
      ["Region", last(swarm.region)],
      ["Managers", `${managers.length} / ${swarm.manager_count}`],
      ["Workers", `${workers.length} / ${swarm.worker_count}`],
      ["Leader", leader ? last(leader.node).slice(0, 8) : "none yet"],
      ["Swarm ID", swarm.cluster_id || "not formed yet"],
      ["Load balancer", swarm.load_balancer && swarm.load_balancer.dns_name || "—"],
      ["Load balancer ports", ports || "none (no service publishes a fixed port)"],
    ]) summary.append(el("dt", { text: term }), el("dd", { text: value }));
    const members = el("table", {},
      el("caption", { class: "visually-hidden", text: `Nodes of swarm ${swarm.name}` }),
      el("thead", {}, el("tr", {}, ...["Node", "Role", "State", "AZ", "Docker status", "Availability", "Manager status"]
        .map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...swarm.nodes.map((n) => el("tr", { class: n.state === "Unreachable" ? "unreachable" : null },
        el("td", { "data-label": "Node" }, el("code", { text: last(n.node).slice(0, 8), title: last(n.node) })),
        el("td", { "data-label": "Role", text: n.leader ? `${n.role} (leader)` : n.role }),
        el("td", { "data-label": "State" }, el("span", { class: stateClass(n.state), text: n.state })),
        el("td", { "data-label": "AZ", text: n.availability_zone || "—" }),
        el("td", { "data-label": "Docker status", text: n.docker_status || "—" }),
        el("td", { "data-label": "Availability", text: n.availability || "—" }),
        el("td", { "data-label": "Manager status", text: n.manager_status || "—" })))));
    const services = swarm.services || [];
    const serviceList = services.length === 0
      ? el("p", { class: "empty services-empty", text: swarm.cluster_id
        ? "No services yet: run `docker service create …` on a manager; they appear here."
        : "Services appear here once the swarm has formed." })
      : el("div", { class: "table-wrap" }, el("table", { class: "services" },
        el("caption", { class: "visually-hidden", text: `Services of swarm ${swarm.name}` }),
        el("thead", {}, el("tr", {}, ...["Service", "Mode", "Tasks running", "Published ports", "On nodes"]
          .map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, ...services.map((s) => el("tr", { "data-service": s.name },
          el("td", { "data-label": "Service" }, el("code", { text: s.name, title: s.id })),
          el("td", { "data-label": "Mode", text: s.mode }),
          el("td", { "data-label": "Tasks running", text: s.replicas == null ? `${s.running}` : `${s.running} / ${s.replicas}` }),
          el("td", { "data-label": "Published ports", text: s.ports.map((p) => `${p.published || "auto"}→${p.target}/${p.protocol} (${p.mode})`).join(", ") || "none" }),
          el("td", { "data-label": "On nodes", text: [...new Set(s.tasks.filter((t) => t.state === "running" && t.node)
            .map((t) => last(t.node).slice(0, 8)))].join(", ") || "—" }))))));
    return el("article", { class: "card swarm", "data-uuid": swarm.uuid },
      el("div", { class: "heading" }, el("h2", { text: swarm.name }),
        el("span", { class: stateClass(swarm.state), text: swarm.state })),
      summary, el("div", { class: "table-wrap" }, members),
      el("h3", { text: "Services" }), serviceList);
  }));
}

// ---- actions and their logs ----

function renderActions() {
  if ($("actions-view").hidden) return;
  const actions = state.actions;
  $("actions-empty").hidden = actions.length !== 0;
  $("actions-table").hidden = actions.length === 0;
  $("actions-body").replaceChildren(...actions.map((action) => el("tr", { "data-uuid": action.uuid },
    el("td", { "data-label": "Action" }, el("a", { href: `#/actions/${action.uuid}`, text: action.action })),
    el("td", { "data-label": "State" }, el("span", { class: stateClass(action.state), text: action.state })),
    el("td", { "data-label": "Object", text: objectName(action.object) }),
    el("td", { "data-label": "User", text: action.user || "Flotilla" }),
    el("td", { "data-label": "Started" }, timeElement(action.start_date)),
    el("td", { "data-label": "Ended" }, action.end_date ? timeElement(action.end_date) : document.createTextNode("running")))));
}

// A cluster's or node's name for a resource URI, else its last segment.
function objectName(uri) {
  const cluster = state.clusters.find((c) => c.resource_uri === uri);
  if (cluster) return `node cluster ${cluster.name}`;
  const swarm = state.swarms.find((s) => s.resource_uri === uri);
  if (swarm) return `swarm ${swarm.name}`;
  if ((uri || "").includes("/node/")) return `node ${last(uri).slice(0, 8)}`;
  return last(uri) || "—";
}

function closeLog() {
  if (state.logSocket) { state.logSocket.onclose = null; state.logSocket.close(); state.logSocket = null; }
}

async function openAction(uuid) {
  closeLog();
  $("action-log").textContent = "";
  const answer = await call("GET", `${API.actions}${uuid}/`);
  if (answer.status !== 200) { $("action-title").textContent = "Action not found"; return; }
  state.action = answer.data;
  renderAction();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}${actionLogs(uuid)}`);
  state.logSocket = socket;
  socket.onmessage = (message) => {
    let frame = null;
    try { frame = JSON.parse(message.data); } catch (_) { return; }
    if (frame.type !== "log") return;
    const log = $("action-log");
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.append(frame.log.endsWith("\n") ? frame.log : frame.log + "\n");
    if (atEnd) log.scrollTop = log.scrollHeight;
  };
  socket.onclose = () => { if (state.logSocket === socket) state.logSocket = null; scheduleRefresh(); };
}

function renderAction() {
  const match = location.hash.match(/^#\/actions\/([^/]+)$/);
  if (!match || $("action-view").hidden || !state.action) return;
  const listed = state.actions.find((a) => a.uuid === match[1]);
  const action = listed ? { ...state.action, ...listed, logs: state.action.logs } : state.action;
  document.title = `${action.action} · Flotilla`;
  $("action-title").textContent = action.action;
  $("action-state").className = stateClass(action.state);
  $("action-state").textContent = action.state;
  const summary = $("action-summary");
  summary.replaceChildren();
  for (const [term, value] of [["Object", objectName(action.object)], ["User", action.user || "Flotilla"],
    ["Request", `${action.method} ${action.path}`]]) summary.append(el("dt", { text: term }), el("dd", { text: value }));
  summary.append(el("dt", { text: "Started" }), el("dd", {}, timeElement(action.start_date)));
  summary.append(el("dt", { text: "Ended" }), el("dd", {}, action.end_date ? timeElement(action.end_date) : document.createTextNode("still running")));
}

// ---- the events stream ----

function renderEvents() {
  if ($("events-view").hidden) return;
  $("events-empty").hidden = state.events.length !== 0;
  $("events-list").replaceChildren(...state.events.map((event) => el("li", {},
    timeElement(event.datetime), " ",
    el("strong", { text: `${event.type} ${event.action}` }), " ",
    el("span", { class: stateClass(event.state), text: event.state || "—" }), " ",
    document.createTextNode(objectName(event.resource_uri)))));
}

// ---- launch ----

// The API's field names (as its 400s name them) and the page's fields.
const FIELDS = {
  name: "launch-name",
  region: "launch-region",
  node_type: "launch-type",
  target_num_nodes: "launch-nodes",
  disk: "launch-disk",
  provider_options: "launch-vpc",
  "provider_options.vpc": "launch-vpc",
  "provider_options.vpc.id": "launch-vpc",
  "provider_options.vpc.subnets": "launch-subnets",
  "provider_options.vpc.security_groups": "launch-sgs",
  "provider_options.iam": "launch-iam",
  "provider_options.iam.instance_profile_name": "launch-iam",
};

// The page's field for an error's path (`provider_options.vpc.subnets[1]`): the longest
// known prefix.
function fieldFor(path) {
  let key = path.replace(/\[\d+\]/g, "");
  while (key) {
    if (FIELDS[key]) return FIELDS[key];
    const dot = key.lastIndexOf(".");
    if (dot < 0) return null;
    key = key.slice(0, dot);
  }
  return null;
}

function clearErrors() {
  $("launch-error").textContent = "";
  for (const id of new Set(Object.values(FIELDS))) {
    $(`${id}-error`).textContent = "";
    $(id).removeAttribute("aria-invalid");
  }
}

// The API's 400 says `field: message; field: message`. `quiet` (the preview) moves no focus.
function showErrors(text, quiet) {
  let first = null;
  const general = [];
  for (const part of text.split("; ")) {
    const split = part.indexOf(": ");
    const id = split > 0 ? fieldFor(part.slice(0, split)) : null;
    if (id) {
      const target = $(`${id}-error`);
      target.textContent = (target.textContent ? target.textContent + "; " : "") + part.slice(split + 2);
      $(id).setAttribute("aria-invalid", "true");
      first = first || $(id);
    } else {
      general.push(part);
    }
  }
  $("launch-error").textContent = general.join("; ");
  if (quiet) return;
  const target = first && first.tagName === "FIELDSET" ? (first.querySelector("input") || first) : first;
  (target || $("launch-error")).focus();
}

async function loadCatalog() {
  if (state.catalog) return state.catalog;
  const [regions, types] = await Promise.all([listAll(API.regions), listAll(API.nodeTypes)]);
  if (regions.status !== 200 || types.status !== 200) {
    $("launch-error").textContent = `Cannot load the catalogue: ${errorText(regions.status !== 200 ? regions : types)}. Link your AWS account first (flotilla provider link).`;
    return null;
  }
  state.catalog = { regions: regions.data.objects.filter((r) => r.available), types: types.data.objects.filter((t) => t.available) };
  const select = $("launch-region");
  select.replaceChildren(...state.catalog.regions.map((r) =>
    el("option", { value: r.resource_uri, text: r.label ? `${r.label} (${r.name})` : r.name })));
  const preferred = state.catalog.regions.find((r) => r.name === "us-east-1");
  if (preferred) select.value = preferred.resource_uri;
  regionChanged();
  return state.catalog;
}

function regionChanged() {
  fillTypes();
  const region = state.catalog && state.catalog.regions.find((r) => r.resource_uri === $("launch-region").value);
  $("launch-azs").textContent = region
    ? `Availability zones: ${region.availability_zones.map(last).join(", ")}` : "";
  loadNetwork();
}

// The region's VPCs, subnets and security groups and the account's instance profiles
// (cached by the server for 30 s), into the four dropdowns.
async function loadNetwork() {
  const region = $("launch-region").value;
  if (!region) return;
  const [vpcs, subnets, groups, profiles] = await Promise.all([
    listAll(regionList(region, "vpc")), listAll(regionList(region, "subnet")),
    listAll(regionList(region, "securitygroup")),
    state.profiles ? { status: 200, data: { objects: state.profiles } } : listAll(API.profiles),
  ]);
  if ($("launch-region").value !== region) return;
  const failed = [vpcs, subnets, groups, profiles].find((a) => a.status !== 200);
  if (failed) {
    $("launch-vpc-error").textContent = `Cannot list this region's networks: ${errorText(failed)}`;
    state.network = { vpcs: [], subnets: [], groups: [] };
  } else {
    $("launch-vpc-error").textContent = "";
    state.network = { vpcs: vpcs.data.objects, subnets: subnets.data.objects, groups: groups.data.objects };
    state.profiles = profiles.data.objects;
  }
  const vpcSelect = $("launch-vpc");
  const previous = vpcSelect.value;
  // Flotilla's own VPC first (it exists once a cluster ran in this region), then yours.
  const sorted = [...state.network.vpcs].sort((a, b) => (b.flotilla - a.flotilla) || a.id.localeCompare(b.id));
  vpcSelect.replaceChildren(el("option", { value: "auto", text: "Auto" }), ...sorted.map((v) =>
    el("option", { value: v.id, text: v.flotilla ? `${v.label} — Flotilla's` : `${v.label}${v.is_default ? " — default" : ""} — ${v.cidr}` })));
  vpcSelect.value = sorted.some((v) => v.id === previous) ? previous : "auto";
  const iam = $("launch-iam");
  const chosen = iam.value;
  iam.replaceChildren(el("option", { value: "", text: "None" }), ...(state.profiles || []).map((p) =>
    el("option", { value: p.name, text: p.name })));
  iam.value = (state.profiles || []).some((p) => p.name === chosen) ? chosen : "";
  renderChoices();
}

// The subnets and security groups of the chosen VPC only: a choice of another VPC cannot be
// made. With VPC Auto there is nothing to choose.
function renderChoices() {
  const vpc = $("launch-vpc").value;
  const auto = vpc === "auto" || !state.network;
  for (const [id, items, text, autoHint, emptyHint] of [
    ["launch-subnets", auto ? [] : state.network.subnets.filter((s) => s.vpc_id === vpc),
      (s) => `${s.id}${s.name ? ` (${s.name})` : ""} — ${s.availability_zone} — ${s.cidr} — ${s.available_ips} free`,
      "Auto: one subnet per AZ, made by Flotilla.", "Choose one or more; none: Flotilla's own subnets of this VPC."],
    ["launch-sgs", auto ? [] : state.network.groups.filter((g) => g.vpc_id === vpc),
      (g) => `${g.id} (${g.name})`,
      "Auto: Flotilla's node security group.", "Choose one or more; none: Flotilla's own group."],
  ]) {
    const box = $(`${id}-options`);
    const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
    $(`${id}-hint`).textContent = auto ? autoHint + " Choose a VPC to pick your own." : emptyHint;
    box.replaceChildren(...items.map((item) => {
      const inputId = `${id}-${item.id}`;
      return el("div", { class: "choice" },
        el("input", { type: "checkbox", id: inputId, value: item.id, checked: checked.has(item.id),
          "data-vpc": item.vpc_id, onchange: schedulePreview }),
        el("label", { for: inputId, text: text(item) }));
    }));
    $(id).disabled = auto;
  }
  schedulePreview();
}

const checkedIn = (id) => [...$(`${id}-options`).querySelectorAll("input:checked")].map((i) => i.value);

// The create body the form describes (the preview's too).
function launchBody() {
  const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  const body = {
    name: $("launch-name").value.trim(),
    region: $("launch-region").value,
    node_type: $("launch-type").value,
    target_num_nodes: number("launch-nodes"),
    disk: number("launch-disk"),
  };
  const options = {};
  const vpc = $("launch-vpc").value;
  if (vpc && vpc !== "auto") {
    options.vpc = { id: vpc };
    const subnets = checkedIn("launch-subnets");
    const groups = checkedIn("launch-sgs");
    if (subnets.length) options.vpc.subnets = subnets;
    if (groups.length) options.vpc.security_groups = groups;
  }
  if ($("launch-iam").value) options.iam = { instance_profile_name: $("launch-iam").value };
  if (Object.keys(options).length) body.provider_options = options;
  return body;
}

function schedulePreview() {
  clearTimeout(state.previewTimer);
  state.previewTimer = setTimeout(preview, 250);
}

// Where the nodes would land, as the server's placement planner says.
async function preview() {
  if ($("launch-view").hidden || !$("launch-region").value || !$("launch-type").value) return;
  const seq = ++state.previewSeq;
  const answer = await call("POST", API.preview, launchBody());
  if (seq !== state.previewSeq) return;
  const box = $("launch-preview");
  clearErrors();
  if (answer.status !== 200) {
    box.replaceChildren(el("p", { class: "hint", text: "Fix the fields marked above to see where the nodes go." }));
    if (answer.status === 400 || answer.status === 409) showErrors(errorText(answer), true);
    else box.replaceChildren(el("p", { class: "field-error", text: errorText(answer) }));
    return;
  }
  const plan = answer.data;
  box.replaceChildren(
    el("ul", { class: "per-az-preview", id: "preview-list" }, ...plan.nodes_per_az.map((share) => el("li",
      { "data-az": share.availability_zone, class: share.nodes ? null : "none" },
      el("strong", { text: share.availability_zone }), ": ",
      document.createTextNode(`${share.nodes} node${share.nodes === 1 ? "" : "s"}`),
      share.subnets.length ? el("span", { class: "hint", text: ` (${share.subnets.join(", ")})` }) : null))),
    ...plan.notes.map((note) => el("p", { class: "hint", text: note })));
}

function fillTypes() {
  if (!state.catalog) return;
  const region = $("launch-region").value;
  const select = $("launch-type");
  const previous = select.value;
  const types = state.catalog.types.filter((t) => !t.regions || t.regions.length === 0 || t.regions.includes(region));
  select.replaceChildren(...types.map((t) =>
    el("option", { value: t.resource_uri, text: t.label && t.label !== t.name ? `${t.name} — ${t.label}` : t.name })));
  if (types.some((t) => t.resource_uri === previous)) select.value = previous;
  else {
    const micro = types.find((t) => t.name === "t3.micro");
    if (micro) select.value = micro.resource_uri;
  }
}

async function launch(event) {
  event.preventDefault();
  clearErrors();
  const button = $("launch-submit");
  button.disabled = true;
  const body = launchBody();
  state.previewSeq++;
  const created = await call("POST", API.clusters, body);
  if (created.status !== 201) {
    button.disabled = false;
    showErrors(errorText(created));
    return;
  }
  const deployed = await call("POST", `${API.clusters}${created.data.uuid}/deploy/`);
  button.disabled = false;
  if (deployed.status >= 300) banner(`Created ${body.name}, but its deploy failed: ${errorText(deployed)}`);
  else banner("");
  // Ready for the next launch: region and node type stay as chosen, the rest is cleared.
  $("launch-name").value = "";
  $("launch-nodes").value = "1";
  $("launch-disk").value = "30";
  $("launch-vpc").value = "auto";
  $("launch-iam").value = "";
  for (const input of document.querySelectorAll("#launch-form .options input")) input.checked = false;
  state.network = null;
  location.hash = "#/clusters";
  refresh();
}

// ---- navigation ----

function route() {
  if (!state.csrf) return;
  const hash = location.hash || "#/clusters";
  if (hash.startsWith("#/clusters/")) {
    showOnly("cluster-view");
    renderCluster();
  } else if (hash === "#/launch") {
    showOnly("launch-view");
    document.title = "Launch node cluster · Flotilla";
    clearErrors();
    loadCatalog().then((catalog) => { if (catalog && !state.network) loadNetwork(); });
    $("launch-name").focus();
  } else if (hash === "#/nodes") {
    showOnly("nodes-view");
    document.title = "Nodes · Flotilla";
    renderNodes();
  } else if (hash === "#/swarms") {
    showOnly("swarms-view");
    document.title = "Swarms · Flotilla";
    refresh();
  } else if (hash === "#/actions") {
    showOnly("actions-view");
    document.title = "Actions · Flotilla";
    refresh();
  } else if (hash.startsWith("#/actions/")) {
    showOnly("action-view");
    openAction(hash.slice("#/actions/".length));
    refresh();
  } else if (hash === "#/events") {
    showOnly("events-view");
    document.title = "Events · Flotilla";
    renderEvents();
  } else {
    showOnly("clusters-view");
    document.title = "Node clusters · Flotilla";
    renderClusters();
  }
}

async function start() {
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", logOut);
  $("launch-form").addEventListener("submit", launch);
  $("launch-region").addEventListener("change", regionChanged);
  $("launch-vpc").addEventListener("change", renderChoices);
  for (const id of ["launch-type", "launch-iam"]) $(id).addEventListener("change", schedulePreview);
  for (const id of ["launch-nodes", "launch-name"]) $(id).addEventListener("input", schedulePreview);
  window.addEventListener("hashchange", route);
  const session = await call("GET", API.session);
  if (session.status === 200) loggedIn(session.data);
  else loggedOut("");
}

document.addEventListener("DOMContentLoaded", start);
