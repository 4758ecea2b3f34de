// The dashboard page: one Server-Sent Events stream keeps it current; nothing polls the server.
"use strict";

const PAGE_SIZE = 50;
const TERMINAL = new Set(["success", "failed", "cancelled", "timeout"]);
const state = {
  config: null, token: null, stream: null, connected: true, workers: {}, jobs: new Map(),
  job: null, page: 0, renderQueued: false, scrollToFailed: false,
  // After a change of view, where the keyboard focus goes once that view is drawn.
  focus: null,
};

function $(id) { return document.getElementById(id); }

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function jobHref(taskId) {
  return "#/job/" + encodeURIComponent(taskId);
}

function currentJobId() {
  const match = location.hash.match(/^#\/job\/([A-Za-z0-9._-]{1,128})$/);
  return match ? match[1] : null;
}

function age(iso) {
  const then = Date.parse(iso);
  if (Number.isNaN(then)) return null;
  return Math.max(0, (Date.now() - then) / 1000);
}

function seconds(value) {
  if (value === null || value === undefined) return "";
  if (value < 60) return value.toFixed(1) + "s";
  const minutes = Math.floor(value / 60);
  return minutes + "m" + String(Math.round(value % 60)).padStart(2, "0") + "s";
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

function duration(job) {
  if (job.duration_seconds !== null && job.duration_seconds !== undefined) return seconds(job.duration_seconds);
  if (job.state === "running" && job.started_at) return seconds(age(job.started_at));
  return "";
}

function stateBadge(value) {
  return el("span", value, "state state-" + String(value).replace(/[^a-z]/g, ""));
}

function queueRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => { state.renderQueued = false; render(); });
}

function render() {
  $("banner").hidden = state.connected;
  $("live").textContent = state.connected ? "live" : "broker lost";
  const jobId = currentJobId();
  $("list-view").hidden = jobId !== null;
  $("job-view").hidden = jobId === null || !state.job;
  $("missing-view").hidden = jobId === null || !!state.job;
  if (jobId === null) { renderWorkers(); renderJobs(); } else if (state.job) {
    renderJobHeader();
    if (state.scrollToFailed) scrollToFailed();
  }
  moveFocus(jobId);
}

function moveFocus(jobId) {
  // A keyboard user who opens a job lands on its heading, and back on the list, on the job's link.
  const wanted = state.focus;
  if (wanted === null) return;
  if (wanted.view === "job" && jobId !== null && state.job) {
    $("job-heading").focus();
  } else if (wanted.view === "list" && jobId === null) {
    const link = jobLink(wanted.taskId);
    if (link) link.focus();
  } else {
    return;
  }
  state.focus = null;
}

function jobLink(taskId) {
  if (taskId === null) return null;
  return $("jobs").querySelector(`tr[data-task-id="${CSS.escape(taskId)}"] a.job-link`);
}

function renderWorkers() {
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  const ids = Object.keys(state.workers).sort();
  $("no-workers").hidden = ids.length > 0;
  for (const id of ids) {
    const worker = state.workers[id];
    const row = el("tr");
    row.dataset.workerId = id;
    const heartbeat = age(worker.heartbeat_at);
    const interval = Number(worker.heartbeat_interval) || 30;
    // Three missed heartbeats: whatever it last said may no longer be true.
    const stale = worker.state !== "offline" && (heartbeat === null || heartbeat > 3 * interval);
    if (stale || worker.state === "offline") row.classList.add("stale");
    row.append(el("td", id));
    const cell = el("td"); cell.append(stateBadge(worker.state)); row.append(cell);
    for (const key of ["capacity", "running", "queued", "jobs_done"]) row.append(el("td", worker[key]));
    row.append(el("td", heartbeat === null ? "?" : seconds(heartbeat) + " ago", "heartbeat"));
    body.append(row);
  }
}

function filteredJobs() {
  const wanted = $("state-filter").value;
  const playbook = $("playbook-filter").value.trim().toLowerCase();
  const rows = [];
  for (const job of state.jobs.values()) {
    if (wanted && job.state !== wanted) continue;
    if (playbook && !String(job.playbook || "").toLowerCase().includes(playbook)) continue;
    rows.push(job);
  }
  rows.sort((a, b) => {
    const ka = String(a.created_at || a.started_at || ""), kb = String(b.created_at || b.started_at || "");
    if (ka !== kb) return ka < kb ? 1 : -1;
    return b.order - a.order;
  });
  return rows;
}

function renderJobs() {
  const rows = filteredJobs();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const shown = rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
  const body = $("jobs").tBodies[0];
  // The list is drawn anew: the job link that had the focus gets it back.
  const focused = document.activeElement && document.activeElement.closest("#jobs tbody tr");
  const fragment = document.createDocumentFragment();
  for (const job of shown) {
    const row = el("tr", null, "job");
    row.dataset.taskId = job.task_id;
    const link = el("a", job.task_id, "job-link");
    link.href = jobHref(job.task_id);
    const idCell = el("td", null, "task-id"); idCell.append(link); row.append(idCell);
    const cell = el("td", null, "job-state"); cell.append(stateBadge(job.state)); row.append(cell);
    row.append(el("td", job.playbook), el("td", job.worker_id), el("td", when(job.started_at)), el("td", duration(job)));
    for (const key of ["tasks_ok", "tasks_changed", "tasks_failed", "tasks_skipped", "tasks_unreachable"]) {
      row.append(el("td", job[key] ?? 0));
    }
    // The whole row opens the job for a mouse too; the link is what a keyboard, a new tab or a copied address use.
    row.addEventListener("click", (event) => {
      if (event.target.closest("a") || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
      if (String(window.getSelection())) return;
      location.hash = jobHref(job.task_id);
    });
    fragment.append(row);
  }
  body.replaceChildren(fragment);
  if (focused) {
    const link = jobLink(focused.dataset.taskId);
    if (link) link.focus({ preventScroll: true });
  }
  $("job-count").textContent = `(${rows.length} of ${state.jobs.size})`;
  $("page-info").textContent = `page ${state.page + 1} of ${pages}`;
  $("prev-page").disabled = state.page === 0;
  $("next-page").disabled = state.page >= pages - 1;
}

const FIELDS = [
  "state", "waiting_for", "playbook", "module", "worker_id", "created_at", "started_at", "completed_at", "duration_seconds", "return_code",
  "error_message", "current_play", "current_task", "tasks_total", "tasks_ok", "tasks_changed", "tasks_failed",
  "tasks_skipped", "tasks_unreachable", "tasks_rescued", "tasks_ignored", "cancelled_by", "handed_back_by",
  "commit", "digest", "source", "events_dropped", "attempts", "dashboard_note",
];

function renderJobHeader() {
  const status = state.job.status;
  $("job-id").textContent = status.task_id;
  const badge = $("job-state");
  badge.textContent = status.state;
  badge.className = "state state-" + status.state;
  const fields = $("job-fields");
  fields.replaceChildren();
  const keys = FIELDS.concat(Object.keys(status).filter((key) => /commit|digest|revision/.test(key) && !FIELDS.includes(key)));
  for (const key of keys) {
    const value = status[key];
    if (value === null || value === undefined || value === "") continue;
    fields.append(el("dt", key), el("dd", typeof value === "object" ? JSON.stringify(value) : value, "field-" + key));
  }
  const output = status.output && Object.keys(status.output).length ? JSON.stringify(status.output, null, 2) : "";
  $("job-output-vars").textContent = output || "(none)";
  renderActions(status);
}

function renderActions(status) {
  const actions = $("actions");
  if (!state.config.allow_actions) { actions.replaceChildren(); return; }
  const key = status.task_id + ":" + status.state + ":" + state.job.can_run_again;
  if (actions.dataset.key === key) return;
  actions.dataset.key = key;
  // A keyboard user whose job just ended stays among the actions: on the one that is left.
  const hadFocus = actions.contains(document.activeElement);
  actions.replaceChildren();
  let button;
  if (!TERMINAL.has(status.state)) {
    const reason = el("input"); reason.id = "cancel-reason"; reason.placeholder = "reason"; reason.maxLength = 1024;
    reason.setAttribute("aria-label", "Reason for cancelling");
    button = el("button", "Cancel job"); button.id = "cancel-button"; button.type = "button";
    button.addEventListener("click", () => act(status.task_id, "cancel", { reason: reason.value || null }));
    actions.append(reason, button);
  } else {
    button = el("button", "Run again"); button.id = "rerun-button"; button.type = "button";
    button.addEventListener("click", () => act(status.task_id, "rerun", {}));
    actions.append(button);
    const someFailed = (status.tasks_failed || 0) + (status.tasks_unreachable || 0) > 0;
    if (someFailed && state.job.can_run_again) {
      const failed = el("button", "Run again on failed hosts"); failed.id = "rerun-failed-button"; failed.type = "button";
      failed.addEventListener("click", () => act(status.task_id, "rerun", { failed: true }));
      actions.append(failed);
    }
    if (!state.job.can_run_again) {
      // Said as text: a disabled button cannot be focused, so its title would reach no keyboard user.
      button.disabled = true;
      const why = status.refused
        ? "it was refused, not run"
        : "its request was published before this dashboard started, or is no longer kept";
      actions.append(el("span", why, "note"));
    }
  }
  if (hadFocus && !button.disabled) button.focus();
}

async function act(taskId, action, body) {
  const note = $("action-result");
  note.textContent = "sending…";
  const headers = { "Content-Type": "application/json", "X-Dashboard-Action": "1" };
  if (state.token) headers["X-Dashboard-Token"] = state.token;
  try {
    const response = await fetch(`/api/jobs/${encodeURIComponent(taskId)}/${action}`, {
      method: "POST", headers, body: JSON.stringify(body), credentials: "same-origin",
    });
    const answer = await response.json();
    if (!response.ok) { note.textContent = "refused: " + (answer.error || response.status); return; }
    if (action === "rerun") {
      note.textContent = "";
      location.hash = "#/job/" + answer.task_id;
    } else {
      note.textContent = "cancel requested";
    }
  } catch (error) {
    note.textContent = "could not reach the dashboard: " + error;
  }
}

function appendLine(line) {
  if (line.html === null || line.html === undefined) return false;
  const output = $("output");
  const node = document.createElement("div");
  // The server escaped the line and added only spans of its own classes (see ansi.py).
  node.innerHTML = line.html || "&nbsp;";
  if (line.status === "failed" || line.status === "unreachable") node.classList.add("failed");
  const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
  output.append(node);
  if (atBottom && !output.dataset.pinned) output.scrollTop = output.scrollHeight;
  $("no-output").hidden = true;
  return node.classList.contains("failed");
}

function showJob(page) {
  state.job = page;
  const output = $("output");
  output.replaceChildren();
  delete output.dataset.pinned;
  $("actions").dataset.key = "";
  $("action-result").textContent = "";
  if (!page) return;
  for (const line of page.lines) appendLine(line);
  $("no-output").hidden = page.lines.length > 0;
  $("record-section").hidden = true;
  if (TERMINAL.has(page.status.state)) loadRecord(page.status.task_id);
  // Scrolled once the job view is shown: a hidden element has no position.
  state.scrollToFailed = page.status.state === "failed";
}

function scrollToFailed() {
  state.scrollToFailed = false;
  const output = $("output");
  const failed = output.querySelector(".failed");
  if (!failed) return;
  output.dataset.pinned = "1";
  const offset = failed.getBoundingClientRect().top - output.getBoundingClientRect().top + output.scrollTop;
  output.scrollTop = Math.max(0, offset - output.clientHeight / 3);
  output.scrollIntoView({ block: "start" });
}

async function loadRecord(taskId) {
  // The job's record, once the group publishes one; until then the endpoint says 404.
  const headers = state.token ? { "X-Dashboard-Token": state.token } : {};
  const response = await fetch(`/api/jobs/${encodeURIComponent(taskId)}/record`, { headers });
  if (!response.ok || !state.job || state.job.status.task_id !== taskId) return;
  const record = await response.json();
  // Ansible's own output as it printed it, then whether older parts were cut; as text, never HTML.
  const cut = record.cut ? "\n[older output and events were cut: the record keeps the newest part]" : "";
  $("record").textContent =
    typeof record.output === "string" ? record.output + cut : JSON.stringify(record, null, 2);
  $("record-section").hidden = false;
}

function onMessage(message) {
  if (message.type === "snapshot") {
    state.connected = message.connected;
    state.workers = message.workers;
    state.jobs = new Map(message.jobs.map((job) => [job.task_id, job]));
    showJob(message.job);
  } else if (message.type === "link") {
    state.connected = message.connected;
  } else if (message.type === "worker") {
    if (message.worker) state.workers[message.worker_id] = message.worker; else delete state.workers[message.worker_id];
  } else if (message.type === "job") {
    if (message.job) state.jobs.set(message.task_id, message.job); else state.jobs.delete(message.task_id);
    if (state.job && state.job.status.task_id === message.task_id && message.status) {
      state.job.status = message.status;
      state.job.can_run_again = message.can_run_again;
    }
    if (!state.job && currentJobId() === message.task_id) { openStream(); return; }
  } else if (message.type === "line") {
    if (state.job && state.job.status.task_id === message.task_id) appendLine(message.line);
  }
  queueRender();
}

function openStream() {
  const jobId = currentJobId();
  const params = new URLSearchParams();
  if (jobId) params.set("job", jobId);
  if (state.token) params.set("token", state.token);
  const previous = state.stream;
  const stream = new EventSource("/api/stream?" + params.toString());
  stream.onmessage = (event) => { if (state.stream === stream) onMessage(JSON.parse(event.data)); };
  stream.onerror = () => { if (state.stream === stream) $("live").textContent = "dashboard unreachable, retrying…"; };
  stream.onopen = () => { if (state.stream === stream) $("live").textContent = "live"; };
  state.stream = stream;
  if (previous) previous.close();
}

async function start() {
  const response = await fetch("/api/config");
  state.config = await response.json();
  if (state.config.token_required) {
    state.token = localStorage.getItem("ansible-worker-dashboard-token");
    if (!state.token || !(await tokenWorks(state.token))) { askForToken(); return; }
  }
  begin();
}

async function tokenWorks(token) {
  const response = await fetch("/api/jobs/-/record", { headers: { "X-Dashboard-Token": token } });
  return response.status !== 401;
}

function askForToken() {
  const form = $("token-form");
  form.hidden = false;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("token-input").value;
    if (!(await tokenWorks(token))) { $("token-error").textContent = "wrong token"; return; }
    localStorage.setItem("ansible-worker-dashboard-token", token);
    state.token = token;
    form.hidden = true;
    begin();
  });
}

function begin() {
  $("state-filter").addEventListener("change", () => { state.page = 0; queueRender(); });
  $("playbook-filter").addEventListener("input", () => { state.page = 0; queueRender(); });
  $("prev-page").addEventListener("click", () => { state.page -= 1; queueRender(); });
  $("next-page").addEventListener("click", () => { state.page += 1; queueRender(); });
  window.addEventListener("hashchange", () => {
    const from = state.job ? state.job.status.task_id : null;
    state.focus = currentJobId() !== null ? { view: "job" } : { view: "list", taskId: from };
    state.job = null;
    openStream();
    queueRender();
  });
  // Ages and running durations move with the clock: redraw them, without asking the server.
  setInterval(() => { if (!state.job) queueRender(); }, 1000);
  openStream();
}

start();
