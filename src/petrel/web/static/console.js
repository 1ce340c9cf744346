// Petrel's web console: the /api/v1 JSON API rendered with plain DOM calls (no
// innerHTML for anything a message supplies) and kept live by /api/v1/events.
"use strict";
(() => {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const state = { mailbox: null, message: null, offset: 0, limit: 50, total: 0 };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
    return node;
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text || "";
    box.hidden = !text;
  }

  async function api(path, options = {}) {
    const init = { credentials: "same-origin", ...options };
    if (init.method && init.method !== "GET") {
      init.headers = { "X-CSRF-Token": csrf, ...(init.headers || {}) };
    }
    const response = await fetch(path, init);
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).message; } catch (_) { /* not JSON */ }
      throw new Error(`${response.status}: ${message}`);
    }
    const type = response.headers.get("Content-Type") || "";
    return type.includes("json") ? response.json() : response.text();
  }

  const size = (n) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB`
    : n >= 1024 ? `${Math.round(n / 1024)} kB` : `${n} B`);
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");

  // -- mailboxes and messages ---------------------------------------------------------

  async function loadMailboxes() {
    const boxes = await api("/api/v1/mailboxes");
    const list = $("mailboxes");
    list.replaceChildren(...boxes.map((b) => el("li", {},
      el("button", {
        type: "button", "data-address": b.address,
        "aria-pressed": String(b.address === state.mailbox),
        onclick: () => { state.offset = 0; openMailbox(b.address); },
      }, `${b.address} `, el("span", { class: "count" }, `(${b.unseen}/${b.messages})`)))));
    if (!state.mailbox && boxes.length) openMailbox(boxes[0].address);
  }

  function searchQuery() {
    const form = new FormData($("search"));
    const params = new URLSearchParams({ limit: state.limit, offset: state.offset });
    for (const [k, v] of form) if (v) params.set(k, v);
    return params;
  }

  async function openMailbox(address) {
    state.mailbox = address;
    for (const b of document.querySelectorAll("#mailboxes button")) {
      b.setAttribute("aria-pressed", String(b.dataset.address === address));
    }
    await loadMessages();
  }

  async function loadMessages() {
    if (!state.mailbox) return;
    const path = `/api/v1/mailboxes/${encodeURIComponent(state.mailbox)}/messages?${searchQuery()}`;
    const response = await fetch(path, { credentials: "same-origin" });
    if (!response.ok) { showError(`${response.status}: ${(await response.json()).message}`); return; }
    state.total = Number(response.headers.get("X-Total-Count") || 0);
    const messages = await response.json();
    $("messages").tBodies[0].replaceChildren(...messages.map((m) => {
      const row = el("tr", {
        tabindex: "0", "data-id": m.id, class: m.seen ? "" : "unseen",
        onclick: () => openMessage(m.id),
        onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openMessage(m.id); } },
      }, el("td", {}, m.from), el("td", {}, m.subject || "(no subject)"),
      el("td", {}, when(m.date || m.received)), el("td", {}, size(m.size)));
      if (m.id === state.message) row.classList.add("selected");
      return row;
    }));
    const pager = $("pager");
    pager.replaceChildren(`${state.total} message${state.total === 1 ? "" : "s"} `);
    if (state.offset > 0) {
      pager.append(el("button", { type: "button", onclick: () => { state.offset = Math.max(0, state.offset - state.limit); loadMessages(); } }, "Newer"));
    }
    if (state.offset + state.limit < state.total) {
      pager.append(el("button", { type: "button", onclick: () => { state.offset += state.limit; loadMessages(); } }, "Older"));
    }
  }

  function selectTab(name) {
    for (const tab of document.querySelectorAll("#tabs [role=tab]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.tab === name));
      $(`tab-${tab.dataset.tab}`).hidden = tab.dataset.tab !== name;
    }
  }

  async function openMessage(id) {
    state.message = id;
    const m = await api(`/api/v1/messages/${id}`);
    const base = `/api/v1/messages/${id}`;
    $("message").hidden = false;
    $("message-subject").textContent = m.subject || "(no subject)";
    $("message-meta").replaceChildren(
      el("dt", {}, "From"), el("dd", {}, m.from),
      el("dt", {}, "To"), el("dd", {}, m.to.join(", ")),
      el("dt", {}, "Date"), el("dd", {}, when(m.date || m.received)));
    $("message-raw").href = `${base}/raw`;
    $("message-html").src = m.html !== null ? `${base}/html` : "about:blank";
    $("message-text").textContent = m.text ?? "(no text part)";
    $("message-headers").tBodies[0].replaceChildren(
      ...m.headers.map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, v))));
    $("message-source").textContent = await api(`${base}/raw`);
    $("message-attachments").replaceChildren(...(m.attachments.length ? m.attachments.map((a) =>
      el("li", {}, el("a", { href: `${base}/attachments/${a.index}`, download: a.filename },
        a.filename), ` (${a.content_type}, ${size(a.size)})`)) : [el("li", {}, "none")]));
    selectTab(m.html !== null ? "html" : "text");
    for (const row of $("messages").tBodies[0].rows) {
      row.classList.toggle("selected", row.dataset.id === id);
      if (row.dataset.id === id) row.classList.remove("unseen");
    }
    await loadMailboxes(); // its unseen count went down
  }

  async function deleteMessage() {
    if (!state.message) return;
    await api(`/api/v1/messages/${state.message}`, { method: "DELETE" });
    state.message = null;
    $("message").hidden = true;
    await Promise.all([loadMessages(), loadMailboxes()]);
  }

  // -- the queue ------------------------------------------------------------------------

  async function queueAction(id, action) {
    const path = action === "delete" ? `/api/v1/queue/${id}` : `/api/v1/queue/${id}/${action}`;
    await api(path, { method: action === "delete" ? "DELETE" : "POST" });
    await loadQueue();
  }

  async function loadQueue() {
    const queue = await api("/api/v1/queue");
    $("queue-empty").hidden = queue.length > 0;
    $("queue-table").tBodies[0].replaceChildren(...queue.map((m) => {
      const open = m.recipients.filter((r) => r.state !== "delivered" && r.state !== "failed");
      const rcpts = el("td", {}, ...open.map((r) => el("div", {}, r.address,
        r.last_error ? el("div", { class: "err" }, r.last_error) : "")));
      const stateText = m.hold ? "held" : m.active ? "being delivered"
        : open.some((r) => r.state === "deferred") ? "deferred" : "queued";
      const button = (action, label) => el("button", {
        type: "button", "data-action": action, "aria-label": `${label} ${m.queue_id}`,
        onclick: () => queueAction(m.queue_id, action).catch((e) => showError(e.message)),
      }, label);
      return el("tr", { "data-id": m.queue_id }, el("td", {}, m.queue_id),
        el("td", {}, m.sender || "MAILER-DAEMON"), rcpts, el("td", { class: "state" }, stateText),
        el("td", {}, button("flush", "Flush"), m.hold ? button("release", "Release") : button("hold", "Hold"),
          button("delete", "Delete")));
    }));
  }

  // -- the dashboard --------------------------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  async function loadDashboard() {
    const s = await api("/api/v1/stats");
    for (const k of ["accepted", "rejected", "delivered", "deferred"]) $(`count-${k}`).textContent = s[k];
    $("count-queue").textContent = s.queue.total;
    const w = 600, h = 160, pts = s.throughput;
    const top = Math.max(1, ...pts.map((p) => Math.max(p.accepted, p.delivered)));
    const line = (key) => pts.map((p, i) => `${(i * w) / (pts.length - 1)},${h - (p[key] * (h - 10)) / top}`).join(" ");
    const graph = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h });
    graph.append(svg("polyline", { points: line("accepted"), fill: "none", stroke: "#3a6fd8", "stroke-width": 2 }));
    graph.append(svg("polyline", { points: line("delivered"), fill: "none", stroke: "#2a9d4b", "stroke-width": 2 }));
    const label = svg("text", { x: 4, y: 14, "font-size": 12, fill: "#345" });
    label.textContent = `max ${top}/min — blue: accepted, green: delivered`;
    graph.append(label);
    $("graph").replaceChildren(graph);
  }

  // -- navigation and live events -------------------------------------------------------

  function route() {
    const where = location.hash.replace(/^#\/?/, "") || "mail";
    for (const name of ["mail", "queue", "dashboard"]) {
      $(name).hidden = name !== where;
      $(`nav-${name}`).toggleAttribute("aria-current", name === where);
      if (name === where) $(`nav-${name}`).setAttribute("aria-current", "page");
    }
    const load = { mail: loadMailboxes, queue: loadQueue, dashboard: loadDashboard }[where];
    if (load) load().catch((e) => showError(e.message));
  }

  let refresh = null;
  function soon(fn) { clearTimeout(refresh); refresh = setTimeout(() => fn().catch((e) => showError(e.message)), 100); }

  function listen() {
    const source = new EventSource("/api/v1/events");
    source.addEventListener("open", () => { $("live").textContent = "live"; });
    source.addEventListener("error", () => { $("live").textContent = "reconnecting…"; });
    source.addEventListener("message", (e) => {
      const data = JSON.parse(e.data);
      if ($("mail").hidden) return;
      soon(async () => { await loadMailboxes(); if (data.mailbox === state.mailbox) await loadMessages(); });
    });
    source.addEventListener("queue", () => {
      if (!$("queue").hidden) soon(loadQueue);
      if (!$("dashboard").hidden) soon(loadDashboard);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("search").addEventListener("submit", (e) => { e.preventDefault(); state.offset = 0; loadMessages(); });
    $("message-delete").addEventListener("click", () => deleteMessage().catch((e) => showError(e.message)));
    $("queue-flush-all").addEventListener("click", () => api("/api/v1/queue/flush", { method: "POST" }).then(loadQueue).catch((e) => showError(e.message)));
    for (const tab of document.querySelectorAll("#tabs [role=tab]")) tab.addEventListener("click", () => selectTab(tab.dataset.tab));
    window.addEventListener("hashchange", route);
    route();
    listen();
  });
})();
