// The dashboard page: one Server-Sent Events stream keeps it current; nothing polls the server.
"use strict";

import { $, el, TERMINAL, authHeaders, setToken } from "./util.js";
import { renderWorkers, renderJobs, fetchStored, jobLink, onJobsKey } from "./lists.js";
import { renderTemplates, listenForLaunches } from "./templates.js";
import {
  newJob, applyPage, applyEvent, renderJob, setHostFilter, setSearch, onCellsKey, onCellsClick, onCellsFocus,
  toggleAllHosts, drawLines,
} from "./job.js";

const state = {
  config: null, token: null, stream: null, connected: true, workers: {}, jobs: new Map(), catalogue: null,
  job: null, page: 0, renderQueued: false, hostQuery: "", hostMatches: null, hostAsked: 0, partial: null,
  // With a history store: the page of jobs it gave, and the cursor each page was asked with.
  stored: null, cursors: [null], storedAsked: 0,
  // After a change of view, where the keyboard focus goes once that view is drawn.
  focus: null,
};
// For the tests and the benchmarks: when the job page last had its data drawn (ms since the page's start).
window.dashboardTimings = {};

function currentJobId() {
  const match = location.hash.match(/^#\/job\/([A-Za-z0-9._-]{1,128})$/);
  return match ? match[1] : null;
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
  if (jobId === null) {
    renderWorkers(state);
    renderTemplates(state);
    renderJobs(state);
  } else if (state.job) {
    const started = performance.now();
    const source = state.job.source;
    renderJob(state.job);
    renderActions(state.job);
    const timings = window.dashboardTimings;
    timings.renders = (timings.renders || []).slice(-20);
    timings.renders.push([Math.round(started), Math.round(performance.now() - started), source]);
    if (timings.source !== source) timings.drawn = performance.now();
    timings.source = source;
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

function renderActions(job) {
  const actions = $("actions");
  if (!state.config.allow_actions) { actions.replaceChildren(); return; }
  const status = job.status;
  const key = status.task_id + ":" + status.state + ":" + job.canRunAgain + ":" + (status.tasks_failed || 0) + ":" + (status.tasks_unreachable || 0);
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
    if (someFailed && job.canRunAgain) {
      const failed = el("button", "Run again on failed hosts"); failed.id = "rerun-failed-button"; failed.type = "button";
      failed.addEventListener("click", () => act(status.task_id, "rerun", { failed: true }));
      actions.append(failed);
    }
    if (!job.canRunAgain) {
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
  const headers = { "Content-Type": "application/json", "X-Dashboard-Action": "1", ...authHeaders() };
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

function showJob(page) {
  const early = state.early && page && state.early.taskId === page.status.task_id ? state.early : null;
  state.early = null;
  state.job = page ? newJob(page) : null;
  $("actions").dataset.key = "";
  $("action-result").textContent = "";
  $("output-search").value = "";
  $("follow").checked = true;
  if (state.job && TERMINAL.has(state.job.status.state)) loadPage(state.job, early && early.answer);
}

function fetchPage(taskId) {
  return fetch(`/api/jobs/${encodeURIComponent(taskId)}/page`, { headers: authHeaders() })
    .then((response) => (response.ok ? response.json() : null), () => null);
}

// A finished job's page comes from its record (or the history store): hosts, tasks, results and Ansible's output.
// Asked for as the stream opens, so that it is often there by the time the stream says the job has ended.
async function loadPage(job, asked) {
  if (job.loading) return;
  job.loading = true;
  try {
    const data = await (asked || fetchPage(job.taskId));
    if (!data || state.job !== job) return;
    applyPage(job, data);
    window.dashboardTimings.pageLoaded = performance.now();
    queueRender();
  } finally {
    job.loading = false;
  }
}

function onMessage(message) {
  if (message.type === "snapshot") {
    state.connected = message.connected;
    state.workers = message.workers;
    state.catalogue = message.catalogue;
    state.jobs = new Map(message.jobs.map((job) => [job.task_id, job]));
    state.partial = message.partial;
    showJob(message.job);
    if (state.config.history && !message.job) askStore();
  } else if (message.type === "link") {
    state.connected = message.connected;
  } else if (message.type === "catalogue") {
    state.catalogue = message.catalogue;
  } else if (message.type === "worker") {
    if (message.worker) state.workers[message.worker_id] = message.worker; else delete state.workers[message.worker_id];
  } else if (message.type === "partial") {
    state.partial = message;
  } else if (message.type === "job") {
    // When it was heard: with a history store, jobs heard since its page was asked for go on top.
    if (message.job) state.jobs.set(message.task_id, { ...message.job, heard: Date.now() });
    else state.jobs.delete(message.task_id);
    const job = state.job;
    if (job && job.taskId === message.task_id && message.status) {
      const ended = !TERMINAL.has(job.status.state) && TERMINAL.has(message.status.state);
      job.status = message.status;
      job.canRunAgain = message.can_run_again;
      if (ended || (TERMINAL.has(job.status.state) && job.source !== "record")) loadPage(job);
    }
    if (!job && currentJobId() === message.task_id) { openStream(); return; }
  } else if (message.type === "event") {
    if (state.job && state.job.taskId === message.task_id) applyEvent(state.job, message);
  }
  queueRender();
}

function openStream() {
  const jobId = currentJobId();
  state.early = jobId && (!state.job || state.job.taskId !== jobId) ? { taskId: jobId, answer: fetchPage(jobId) } : null;
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
  setToken(state.token);
  begin();
}

async function tokenWorks(token) {
  const response = await fetch("/api/jobs/-/record", { headers: authHeaders(token) });
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
    setToken(token);
    form.hidden = true;
    begin();
  });
}

// The host filter asks the server which jobs ran on a matching host; the other filters work here.
let hostTimer = null;
function onHostFilter() {
  clearTimeout(hostTimer);
  hostTimer = setTimeout(async () => {
    const query = $("host-filter").value.trim();
    const asked = ++state.hostAsked;
    if (!query) { state.hostQuery = ""; state.hostMatches = null; queueRender(); return; }
    const response = await fetch("/api/jobs?" + new URLSearchParams({ host: query }), { headers: authHeaders() });
    if (asked !== state.hostAsked || !response.ok) return;
    const answer = await response.json();
    state.hostQuery = query;
    state.hostMatches = new Set(answer.task_ids);
    state.page = 0;
    queueRender();
  }, 200);
}

function askStore() { fetchStored(state, queueRender); }

function begin() {
  // With a history store, filters and pages are questions to the store; without, to the jobs held here.
  const changed = () => { if (state.config.history) askStore(); else queueRender(); };
  const refilter = () => { state.page = 0; state.cursors = [null]; changed(); };
  let typing = null;
  for (const id of ["state-filter", "worker-filter", "time-filter"]) $(id).addEventListener("change", refilter);
  $("playbook-filter").addEventListener("input", () => {
    clearTimeout(typing);
    if (state.config.history) typing = setTimeout(refilter, 250); else refilter();
  });
  $("host-filter").addEventListener("input", onHostFilter);
  $("prev-page").addEventListener("click", () => { state.page -= 1; changed(); });
  $("next-page").addEventListener("click", () => {
    if (state.config.history) state.cursors[state.page + 1] = state.stored.next;
    state.page += 1;
    changed();
  });
  $("jobs").addEventListener("keydown", onJobsKey);
  listenForLaunches();
  $("tasks").addEventListener("keydown", onCellsKey);
  $("tasks").addEventListener("click", (event) => { if (state.job) onCellsClick(state.job, event); });
  $("tasks").addEventListener("focusin", (event) => { if (state.job) onCellsFocus(state.job, event); });
  $("job-host").addEventListener("change", () => { if (state.job) setHostFilter(state.job, $("job-host").value); });
  $("output-search").addEventListener("input", () => {
    if (!state.job) return;
    setSearch(state.job, $("output-search").value);
    queueRender();
  });
  $("follow").addEventListener("change", () => {
    if (!state.job) return;
    state.job.follow = $("follow").checked;
    if (state.job.follow) { $("output").scrollTop = $("output").scrollHeight; drawLines(state.job); }
  });
  // Scrolling draws the lines come into view; scrolling up stops following the output, as in a terminal.
  $("output").addEventListener("scroll", () => {
    const output = $("output");
    if (!state.job) return;
    drawLines(state.job);
    if (state.job.status.state !== "running") return;
    const atEnd = output.scrollTop + output.clientHeight >= output.scrollHeight - 4;
    if (!atEnd && state.job.follow) { state.job.follow = false; $("follow").checked = false; }
  }, { passive: true });
  $("hosts-more").addEventListener("click", () => { if (state.job) { toggleAllHosts(state.job); queueRender(); } });
  $("result-close").addEventListener("click", () => $("result-dialog").close());
  $("result-dialog").addEventListener("close", () => {
    const back = $("result-dialog").returnFocusTo;
    if (back && document.contains(back)) back.focus();
  });
  window.addEventListener("job-changed", queueRender);
  window.addEventListener("resize", () => {
    if (!state.job) return;
    Object.assign(state.job, { timelineWidth: 0, outputHeight: 0, timelineAt: 0, drawn: null });
    state.job.dirty.timeline = true;
    queueRender();
  });
  window.addEventListener("hashchange", () => {
    const from = state.job ? state.job.taskId : null;
    state.focus = currentJobId() !== null ? { view: "job" } : { view: "list", taskId: from };
    state.job = null;
    if ($("result-dialog").open) $("result-dialog").close();
    openStream();
    queueRender();
  });
  // Ages, durations and a running job's clock move with time: redraw them, without asking the server.
  setInterval(() => {
    if (!state.job) queueRender();
    else if (state.job.status.state === "running" || state.job.status.state === "queued") { state.job.dirty.timeline = true; queueRender(); }
  }, 1000);
  openStream();
}

start();
