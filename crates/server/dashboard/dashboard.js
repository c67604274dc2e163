// Flotilla's dashboard: plain JavaScript, no framework, no build step (see
// crates/server/src/dashboard.rs). It calls the Docker Cloud API paths with the session
// cookie (set by POST /session) and sends the session's CSRF token as X-CSRF-Token on every
// change; lists are refreshed from the events websocket, so nothing needs a reload.
"use strict";

const API = {
  session: "/session",
  clusters: "/api/infra/v1/nodecluster/",
  nodes: "/api/infra/v1/node/",
  regions: "/api/infra/v1/region/",
  nodeTypes: "/api/infra/v1/nodetype/",
  events: "/api/audit/v1/events",
};
const ALL = "?limit=1000";

const state = {
  csrf: null,
  user: null,
  clusters: [],
  nodes: [],
  catalog: null,
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

function showOnly(id) {
  for (const view of ["login-view", "clusters-view", "cluster-view", "launch-view"]) {
    $(view).hidden = view !== id;
  }
  for (const [link, views] of [["nav-clusters", ["clusters-view", "cluster-view"]], ["nav-launch", ["launch-view"]]]) {
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
    if (["nodecluster", "node", "action"].includes(event.type)) scheduleRefresh();
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
  const [clusters, nodes] = await Promise.all([
    listAll(API.clusters),
    listAll(API.nodes),
  ]);
  if (clusters.status === 200) state.clusters = clusters.data.objects;
  if (nodes.status === 200) state.nodes = nodes.data.objects;
  renderClusters();
  renderCluster();
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
  $("nodes-body").replaceChildren(...nodes.map((node) => el("tr",
    { "data-uuid": node.uuid, class: node.state === "Unreachable" ? "unreachable" : null },
    el("td", { "data-label": "Node" }, el("code", { text: node.uuid.slice(0, 8), title: node.uuid })),
    el("td", { "data-label": "State" }, el("span", { class: stateClass(node.state), text: node.state })),
    el("td", { "data-label": "AZ", text: last(node.availability_zone) || "—" }),
    el("td", { "data-label": "Public IP", text: node.public_ip || "—" }),
    el("td", { "data-label": "DNS name", text: node.external_fqdn || "—" }),
    el("td", { "data-label": "Docker", text: node.docker_version || "—" }),
    el("td", { "data-label": "Last seen" }, timeElement(node.last_seen)))));
}

// ---- launch ----

const FIELDS = {
  name: "launch-name",
  region: "launch-region",
  node_type: "launch-type",
  target_num_nodes: "launch-nodes",
  disk: "launch-disk",
};

function clearErrors() {
  $("launch-error").textContent = "";
  for (const id of Object.values(FIELDS)) {
    $(`${id}-error`).textContent = "";
    $(id).removeAttribute("aria-invalid");
  }
}

// The API's 400 says `field: message; field: message`.
function showErrors(text) {
  let first = null;
  const general = [];
  for (const part of text.split("; ")) {
    const split = part.indexOf(": ");
    const field = split > 0 ? part.slice(0, split).split(/[.[]/)[0] : "";
    const id = FIELDS[field];
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
  (first || $("launch-error")).focus();
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
  fillTypes();
  return state.catalog;
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
  const number = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  const body = {
    name: $("launch-name").value.trim(),
    region: $("launch-region").value,
    node_type: $("launch-type").value,
    target_num_nodes: number("launch-nodes"),
    disk: number("launch-disk"),
  };
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
  $("launch-form").reset();
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
    loadCatalog();
    $("launch-name").focus();
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
  $("launch-region").addEventListener("change", fillTypes);
  window.addEventListener("hashchange", route);
  const session = await call("GET", API.session);
  if (session.status === 200) loggedIn(session.data);
  else loggedOut("");
}

document.addEventListener("DOMContentLoaded", start);
