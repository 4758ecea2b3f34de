// A job's page: what ran and how it went, its hosts, its tasks with each host's result, where the time went,
// each result whole, and Ansible's output. The server sends the page's data and then its changes.
"use strict";

import {
  $, el, svg, TERMINAL, ALL_COUNTS, duration, parseTime, timeElement, ago, exact, stateBadge, countBar, countWords,
  plural, jobHref, authHeaders, token,
} from "./util.js";
import { countsOf } from "./lists.js";

const STATUS_OF = { o: "ok", c: "changed", f: "failed", u: "unreachable", s: "skipped", i: "ignored", "-": "none" };
// A sign as well as a colour, so that a result reads without colour vision too.
const GLYPH = { o: "✓", c: "●", f: "✕", u: "⊘", s: "–", i: "~", "-": "·" };
const SLOW_SHOWN = 3;
const HOSTS_SHOWN = 10;
const LIVE_LINES = 5000;
const TIMELINE_EVERY_MS = 1000;
const EMPTY = {
  source: "none", t0: null, plays: [], hosts: [], tasks: [], failures: [], failures_total: 0, missed: 0, cut: false,
  stats: false, events: 0, details_dropped: 0, lines: [], lines_cut: false, record_cut: false, events_total: null,
};

// -- the job's data ------------------------------------------------------------------------

export function newJob(page, data) {
  const job = {
    taskId: page.status.task_id, status: page.status, origin: page.origin || {}, canRunAgain: page.can_run_again,
    view: null, lines: [], source: "none", hostFilter: null, search: "", follow: true,
    dirty: { all: true, tasks: new Set(), output: "all", timeline: true }, pendingLines: [],
    scrolledToFailure: false, loading: false, timelineAt: 0, slow: new Set(), focusCell: null,
  };
  applyPage(job, data || page.live || EMPTY);
  if (!data && !page.live) job.source = "loading";
  return job;
}

export function applyPage(job, data) {
  job.source = data.source;
  const view = {
    t0: data.t0, t0ms: parseTime(data.t0), plays: data.plays, hosts: data.hosts,
    tasks: data.tasks.map((task) => ({ ...task, cells: Array.from(task.cells), times: task.times })),
    failures: data.failures, failuresTotal: data.failures_total, missed: data.missed, cut: data.cut,
    stats: data.stats, events: data.events, detailsDropped: data.details_dropped,
    linesCut: data.lines_cut, recordCut: data.record_cut, eventsTotal: data.events_total,
  };
  job.view = view;
  job.cellOrder = null;
  job.lines = data.lines;
  job.pendingLines = [];
  job.dirty = { all: true, tasks: new Set(), output: "all", timeline: true };
  job.scrolledToFailure = false;
}

export function applyEvent(job, message) {
  if (job.source !== "live") return;
  if (message.line) {
    job.lines.push(message.line);
    job.pendingLines.push(message.line);
    if (job.lines.length > LIVE_LINES) job.lines.splice(0, job.lines.length - LIVE_LINES);
  }
  const delta = message.view;
  if (!delta) return;
  const view = job.view;
  view.t0 = delta.t0; view.t0ms = parseTime(delta.t0);
  view.failuresTotal = delta.failures_total;
  if (delta.play) view.plays[delta.play[0]] = delta.play[1];
  if (delta.host) { view.hosts[delta.host.i] = delta.host; job.dirty.hosts = true; }
  if (delta.hosts) { for (const host of delta.hosts) view.hosts[host.i] = host; job.dirty.hosts = true; }
  if (delta.task) {
    const known = view.tasks[delta.task.i];
    const task = known || { cells: [], times: [] };
    Object.assign(task, delta.task, { cells: task.cells, times: task.times });
    view.tasks[delta.task.i] = task;
    job.dirty.tasks.add(delta.task.i);
    job.dirty.timeline = true;
  }
  if (delta.cell) {
    const [t, h, code, time] = delta.cell;
    const task = view.tasks[t];
    while (task.cells.length <= h) task.cells.push("-");
    task.cells[h] = code;
    task.times[h] = time;
  }
  if (delta.failure) { view.failures.push(delta.failure); job.dirty.failures = true; }
}

// -- drawing -------------------------------------------------------------------------------

export function renderJob(job, now = Date.now()) {
  // Read before writing: a size asked for after the page changed costs a layout of the whole page.
  if (!job.timelineWidth) job.timelineWidth = $("timeline").clientWidth;
  if (!job.outputHeight) job.outputHeight = $("output").clientHeight;
  renderHeader(job, now);
  renderStats(job);
  const all = job.dirty.all;
  if (all || job.dirty.hosts) renderHosts(job);
  if (all || job.dirty.hosts || job.dirty.failures) renderFailures(job);
  if (all) renderHostChoices(job);
  renderTasks(job, now);
  if (job.dirty.timeline && (all || now - job.timelineAt >= TIMELINE_EVERY_MS || TERMINAL.has(job.status.state))) {
    drawTimeline(job, now);
  }
  renderOutput(job);
  renderNotes(job);
  job.dirty = { all: false, tasks: new Set(), output: null, timeline: job.dirty.timeline && !job.timelineDrawn };
  job.timelineDrawn = false;
}

function renderHeader(job, now) {
  const status = job.status;
  $("job-id").textContent = status.task_id;
  const badge = $("job-state");
  badge.textContent = status.state;
  badge.className = "state state-" + String(status.state).replace(/[^a-z]/g, "");
  $("job-summary").textContent = summary(job, now);
  const error = $("job-error");
  error.textContent = status.error_message || "";
  error.hidden = !status.error_message;
  const facts = $("job-facts");
  facts.replaceChildren();
  const add = (label, value, key) => {
    if (value === null || value === undefined || value === "") return;
    const dd = el("dd", null, "field-" + key);
    if (value instanceof Node) dd.append(value); else dd.textContent = String(value);
    facts.append(el("dt", label), dd);
  };
  add("Playbook", status.playbook, "playbook");
  add("Template", job.origin.template, "template");
  add("Project", status.project, "project");
  add("Revision", shortId(status.revision), "revision");
  add("Content", shortId(status.content_sha256), "content_sha256");
  add("Worker", status.worker_id, "worker_id");
  add("Started by", startedBy(job), "origin");
  add("Created", moment(status.created_at), "created_at");
  add("Started", moment(status.started_at), "started_at");
  add("Finished", moment(status.completed_at), "completed_at");
  add("Duration", jobDuration(status, now), "duration");
  add("Exit code", status.return_code, "return_code");
  add("Cancelled by", status.cancelled_by, "cancelled_by");
  add("Handed back by", status.handed_back_by, "handed_back_by");
  if (status.events_dropped) add("Live events dropped", status.events_dropped, "events_dropped");
  add("Note", status.dashboard_note, "dashboard_note");
  const counts = $("job-counts");
  counts.replaceChildren(countBar(countsOf(status), "bar big"), countWords(countsOf(status), { always: ALL_COUNTS }));
}

function summary(job, now) {
  const status = job.status;
  const hosts = job.view ? job.view.hosts.length : 0;
  const took = jobDuration(status, now);
  switch (status.state) {
    case "queued": return `Queued ${ago(status.created_at, now)}, waiting for a worker.`;
    case "running": {
      const where = status.current_task ? `, at “${status.current_task}”` : "";
      return `Running for ${took || "a moment"}${where}` + (status.worker_id ? ` on ${status.worker_id}.` : ".");
    }
    case "success": {
      const results = Number(status.tasks_total) || 0;
      return `Succeeded in ${took}: ${plural(results, "result")}` + (hosts ? ` on ${plural(hosts, "host")}.` : ".");
    }
    case "cancelled": return `Cancelled after ${took || "0s"}.`;
    case "timeout": return `Timed out after ${took || "0s"}.`;
    default: {
      const bad = job.view ? job.view.hosts.filter((host) => host.failed || host.unreachable) : [];
      const which = bad.length ? `: ${bad.length} of ${plural(hosts, "host")} failed or unreachable` : "";
      return `Failed after ${took || "0s"}${which}.`;
    }
  }
}

function jobDuration(status, now) {
  if (status.duration_seconds !== null && status.duration_seconds !== undefined) return duration(status.duration_seconds);
  const started = parseTime(status.started_at);
  return status.state === "running" && started !== null ? duration((now - started) / 1000) : "";
}

function moment(iso) {
  if (!iso) return null;
  const span = el("span");
  span.append(timeElement(iso), el("span", ` (${exact(iso)})`, "sub"));
  return span;
}

function shortId(value) {
  if (!value) return null;
  const node = el("code", value.length > 12 ? value.slice(0, 12) : value);
  node.title = value;
  return node;
}

function startedBy(job) {
  const origin = job.origin;
  const parts = el("span");
  const say = (text) => { if (parts.childNodes.length) parts.append("; "); parts.append(text); };
  if (origin.requested_by) say(origin.requested_by);
  if (origin.schedule) say(`schedule ${origin.schedule}`);
  if (origin.again_of) {
    const link = el("a", origin.again_of);
    link.href = jobHref(origin.again_of);
    const text = el("span", "run again from this dashboard, of ");
    text.append(link);
    say(text);
  }
  if (origin.signed_by) say(`a request signed by key ${origin.signed_by}`);
  else if (origin.signed_by === null) say("an unsigned request");
  if (!parts.childNodes.length) return el("span", "not known: its request was sent before this dashboard started", "sub");
  return parts;
}

function renderStats(job) {
  const output = job.status.output;
  const empty = !output || typeof output !== "object" || !Object.keys(output).length;
  $("stats-section").hidden = empty;
  $("job-output-vars").textContent = empty ? "" : JSON.stringify(output, null, 2);
}

// -- hosts ---------------------------------------------------------------------------------

function natural(a, b) { return a.localeCompare(b, undefined, { numeric: true }); }

export function sortedHosts(view) {
  const bad = (host) => (host.failed || host.unreachable ? 0 : 1);
  return view.hosts.filter(Boolean).slice().sort((a, b) => bad(a) - bad(b) || natural(a.name, b.name));
}

function renderHosts(job) {
  const body = $("hosts").tBodies[0];
  const every = sortedHosts(job.view);
  // The failed and unreachable first, then the rest: a long list is cut until asked for.
  const hosts = job.allHosts || every.length <= HOSTS_SHOWN + 2 ? every : every.slice(0, HOSTS_SHOWN);
  const more = $("hosts-more");
  more.hidden = every.length <= HOSTS_SHOWN + 2;
  more.textContent = job.allHosts ? `Show the first ${HOSTS_SHOWN} hosts` : `Show all ${every.length} hosts`;
  more.setAttribute("aria-expanded", String(!!job.allHosts));
  $("host-count").textContent = every.length ? `(${every.length})` : "";
  $("no-hosts").hidden = every.length > 0;
  const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("#hosts tbody tr");
  const fragment = document.createDocumentFragment();
  for (const host of hosts) {
    const row = el("tr", null, host.failed || host.unreachable ? "bad" : "");
    row.dataset.host = host.name;
    const th = el("th", null, "host-name");
    th.scope = "row";
    const button = el("button", host.name, "linkish host-button");
    button.type = "button";
    button.setAttribute("aria-pressed", String(job.hostFilter === host.name));
    button.title = "Show only this host's results";
    button.addEventListener("click", () => setHostFilter(job, job.hostFilter === host.name ? null : host.name));
    th.append(button);
    row.append(th);
    for (const key of ALL_COUNTS) {
      const value = Number(host[key]) || 0;
      row.append(el("td", value, `num c-${key}` + (value ? "" : " zero")));
    }
    const bar = el("td", null, "bar-cell");
    bar.append(countBar(host));
    row.append(bar);
    fragment.append(row);
  }
  body.replaceChildren(fragment);
  if (focused) {
    const again = body.querySelector(`tr[data-host="${CSS.escape(focused.dataset.host)}"] button`);
    if (again) again.focus({ preventScroll: true });
  }
}

function renderHostChoices(job) {
  const select = $("job-host");
  const names = sortedHosts(job.view).map((host) => host.name);
  const key = names.join("\n");
  if (select.dataset.key !== key) {
    select.dataset.key = key;
    select.replaceChildren(el("option", "all hosts"));
    select.options[0].value = "";
    for (const name of names) select.append(el("option", name));
  }
  select.value = job.hostFilter || "";
}

export function toggleAllHosts(job) {
  job.allHosts = !job.allHosts;
  job.dirty.hosts = true;
}

export function setHostFilter(job, name) {
  job.hostFilter = name || null;
  job.dirty = { all: true, tasks: new Set(), output: "all", timeline: true };
  $("job-host").value = job.hostFilter || "";
  window.dispatchEvent(new CustomEvent("job-changed"));
}

function hostIndex(job) {
  if (!job.hostFilter) return null;
  const host = job.view.hosts.find((candidate) => candidate && candidate.name === job.hostFilter);
  return host ? host.i : -1;
}

function renderFailures(job) {
  const list = $("failures");
  const wanted = hostIndex(job);
  const failures = job.view.failures.filter((failure) => wanted === null || failure.host === wanted);
  $("failures-section").hidden = failures.length === 0;
  const more = job.view.failuresTotal - job.view.failures.length;
  $("failures-more").textContent = more > 0 && wanted === null ? `and ${plural(more, "more failure")} in the tasks below` : "";
  list.replaceChildren();
  for (const failure of failures) {
    const task = job.view.tasks[failure.task];
    const host = job.view.hosts[failure.host];
    if (!task || !host) continue;
    const item = el("li", null, "failure failure-" + failure.status);
    const open = el("button", null, "linkish failure-open");
    open.type = "button";
    open.append(el("strong", host.name), ` ${failure.status} on “${task.name || task.action || "?"}”`);
    open.addEventListener("click", () => openResult(job, failure.task, failure.host, open));
    item.append(open);
    if (failure.msg) item.append(el("pre", failure.msg, "failure-msg"));
    list.append(item);
  }
}

// -- tasks ---------------------------------------------------------------------------------

function taskDuration(job, task, host, now) {
  if (host !== null) {
    const time = task.times[host];
    return time === null || time === undefined ? null : time;
  }
  if (task.start === null || task.start === undefined) return null;
  if (task.end !== null && task.end !== undefined) return Math.max(0, task.end - task.start);
  // A task that has no result yet: the last one is running, an earlier one took no time.
  const last = job.view.tasks[job.view.tasks.length - 1] === task;
  if (last && job.status.state === "running" && job.view.t0ms !== null) return Math.max(0, (now - job.view.t0ms) / 1000 - task.start);
  return 0;
}

export function slowTasks(job, now = Date.now()) {
  // The slowest few, if they stand out: each at least twice the median and a tenth of a second.
  const timed = job.view.tasks.filter(Boolean).map((task) => [task.i, taskDuration(job, task, null, now)]).filter(([, d]) => d !== null);
  if (timed.length < 2) return new Set();
  const sorted = timed.map(([, d]) => d).sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  timed.sort((a, b) => b[1] - a[1]);
  return new Set(timed.slice(0, SLOW_SHOWN).filter(([, d]) => d >= 0.1 && d >= 2 * median).map(([i]) => i));
}

function renderTasks(job, now) {
  const body = $("tasks").tBodies[0];
  const view = job.view;
  const slow = slowTasks(job, now);
  const slowChanged = [...slow].some((i) => !job.slow.has(i)) || [...job.slow].some((i) => !slow.has(i));
  const changedSlow = new Set([...slow, ...job.slow]);
  job.slow = slow;
  // Every row's results in the same order, by host name, whatever failed: a column is a host.
  if (!job.cellOrder || job.cellOrder.length !== view.hosts.filter(Boolean).length) {
    job.cellOrder = view.hosts.filter(Boolean).slice().sort((a, b) => natural(a.name, b.name));
    job.dirty.all = true;
  }
  $("tasks").classList.toggle("one-play", view.plays.length <= 1);
  $("no-tasks").hidden = view.tasks.length > 0;
  $("task-count").textContent = view.tasks.length ? `(${view.tasks.length})` : "";
  const running = job.status.state === "running";
  if (job.dirty.all) {
    const hadFocus = body.contains(document.activeElement);
    const fragment = document.createDocumentFragment();
    let play = -1;
    for (const task of view.tasks) {
      if (!task) continue;
      if (view.plays.length > 1 && task.play !== play) { fragment.append(playRow(view, task.play)); play = task.play; }
      fragment.append(taskRow(job, task, now));
    }
    body.replaceChildren(fragment);
    restoreCellFocus(job, hadFocus);
    return;
  }
  const redraw = new Set(job.dirty.tasks);
  if (slowChanged) for (const i of changedSlow) redraw.add(i);
  // The running task's time moves with the clock.
  if (running && view.tasks.length) redraw.add(view.tasks.length - 1);
  for (const i of [...redraw].sort((a, b) => a - b)) {
    const task = view.tasks[i];
    if (!task) continue;
    const row = taskRow(job, task, now);
    const old = body.querySelector(`tr[data-task="${i}"]`);
    if (old) {
      const hadFocus = old.contains(document.activeElement);
      old.replaceWith(row);
      restoreCellFocus(job, hadFocus);
    } else {
      const last = body.lastElementChild;
      if (view.plays.length > 1 && (!last || Number(last.dataset.play) !== task.play)) body.append(playRow(view, task.play));
      body.append(row);
    }
  }
}

function playRow(view, play) {
  const row = el("tr", null, "play-row");
  const th = el("th", "PLAY " + (view.plays[play] || ""));
  th.colSpan = 6;
  th.scope = "colgroup";
  row.append(th);
  return row;
}

function taskRow(job, task, now) {
  const view = job.view;
  const wanted = hostIndex(job);
  const row = el("tr", null, job.slow.has(task.i) ? "slow" : "");
  row.dataset.task = task.i;
  row.dataset.play = task.play;
  row.id = "task-" + task.i;
  row.append(el("td", task.i + 1, "num"));
  const name = el("td", null, "task-name");
  name.append(el("span", task.name || task.action || "(unnamed)", "name"));
  if (task.handler) name.append(el("span", "handler", "tag"));
  if (task.action) name.append(el("span", task.action, "sub"));
  row.append(name, el("td", view.plays[task.play] || "", "play"));
  const time = taskDuration(job, task, wanted === null ? null : wanted, now);
  const cell = el("td", null, "num task-duration");
  cell.append(el("span", time === null ? "" : duration(time), "time"));
  if (job.slow.has(task.i) && wanted === null) cell.append(el("span", "slow", "tag tag-slow"));
  row.append(cell);
  const results = el("td", null, "cells");
  const hosts = wanted === null ? job.cellOrder : view.hosts.filter((host) => host && host.i === wanted);
  for (const host of hosts) {
    if (!host) continue;
    results.append(cellButton(job, task, host, task.cells[host.i] || "-"));
  }
  row.append(results);
  const go = el("td", null, "go");
  if (task.anchor !== null && task.anchor !== undefined) {
    const button = el("button", "output", "linkish");
    button.type = "button";
    button.setAttribute("aria-label", `Show “${task.name || task.action}” in the output`);
    button.addEventListener("click", () => showInOutput(job, task.anchor));
    go.append(button);
  }
  row.append(go);
  return row;
}

function cellButton(job, task, host, code) {
  const button = el("button", GLYPH[code] || "?", "cell cell-" + (STATUS_OF[code] || "none"));
  button.type = "button";
  button.dataset.task = task.i;
  button.dataset.host = host.i;
  const status = code === "-" ? "no result yet" : STATUS_OF[code];
  const time = task.times[host.i];
  button.setAttribute("aria-label", `${host.name}: ${status}`);
  button.title = `${host.name}: ${status}` + (time !== null && time !== undefined ? ` in ${duration(time)}` : "");
  const focusKey = job.focusCell;
  button.tabIndex = focusKey && focusKey[0] === task.i && focusKey[1] === host.i ? 0 : -1;
  if (code === "-") button.disabled = true;
  return button;
}

function restoreCellFocus(job, hadFocus) {
  const body = $("tasks").tBodies[0];
  // One result in the table takes Tab; the arrow keys move from it (see onCellsKey).
  let target = null;
  if (job.focusCell) target = body.querySelector(`button.cell[data-task="${job.focusCell[0]}"][data-host="${job.focusCell[1]}"]`);
  if (!target) target = body.querySelector("button.cell:not([disabled])");
  for (const button of body.querySelectorAll("button.cell[tabindex='0']")) if (button !== target) button.tabIndex = -1;
  if (!target) return;
  target.tabIndex = 0;
  if (hadFocus) target.focus({ preventScroll: true });
}

// One listener for all the results of the table (thousands of them): a click opens one, the focus is remembered.
export function onCellsClick(job, event) {
  const cell = event.target.closest && event.target.closest("button.cell");
  if (!cell || cell.disabled) return;
  openResult(job, Number(cell.dataset.task), Number(cell.dataset.host), cell);
}

export function onCellsFocus(job, event) {
  const cell = event.target.closest && event.target.closest("button.cell");
  if (cell) job.focusCell = [Number(cell.dataset.task), Number(cell.dataset.host)];
}

// Arrow keys move through the results, as in a grid; Home and End go to a row's ends.
export function onCellsKey(event) {
  const cell = event.target.closest && event.target.closest("button.cell");
  if (!cell) return;
  const row = cell.closest("tr");
  let next = null;
  const cells = (tr) => (tr ? [...tr.querySelectorAll("button.cell:not([disabled])")] : []);
  const inRow = cells(row);
  const at = inRow.indexOf(cell);
  const sameHost = (tr) => {
    while (tr) {
      if (tr.dataset.task !== undefined) {
        const match = tr.querySelector(`button.cell[data-host="${cell.dataset.host}"]:not([disabled])`) || cells(tr)[0];
        if (match) return match;
      }
      tr = event.key === "ArrowDown" ? tr.nextElementSibling : tr.previousElementSibling;
    }
    return null;
  };
  switch (event.key) {
    case "ArrowRight": next = inRow[at + 1]; break;
    case "ArrowLeft": next = inRow[at - 1]; break;
    case "ArrowDown": next = sameHost(row.nextElementSibling); break;
    case "ArrowUp": next = sameHost(row.previousElementSibling); break;
    case "Home": next = inRow[0]; break;
    case "End": next = inRow[inRow.length - 1]; break;
    default: return;
  }
  event.preventDefault();
  if (!next) return;
  cell.tabIndex = -1;
  next.tabIndex = 0;
  next.focus();
}

// -- the timeline --------------------------------------------------------------------------

function drawTimeline(job, now) {
  job.timelineAt = now;
  job.timelineDrawn = true;
  const box = $("timeline");
  const view = job.view;
  const wanted = hostIndex(job);
  const tasks = view.tasks.filter(Boolean);
  $("timeline-section").hidden = tasks.length === 0;
  if (!tasks.length) { box.replaceChildren(); return; }
  const spans = tasks.map((task) => {
    const start = task.start || 0;
    const length = taskDuration(job, task, wanted, now);
    return [task, start, length === null ? 0 : length];
  });
  const total = Math.max(0.001, ...spans.map(([, start, length]) => start + length));
  const width = Math.max(320, job.timelineWidth || 800);
  const labels = tasks.length <= 80;
  const rowHeight = labels ? 18 : Math.max(3, Math.floor(1200 / tasks.length));
  const labelWidth = labels ? Math.min(260, Math.floor(width * 0.32)) : 8;
  const right = 56;
  const chart = width - labelWidth - right;
  const top = 18;
  const height = top + rowHeight * tasks.length + 4;
  const scale = (seconds) => labelWidth + (seconds / total) * chart;
  const picture = svg("svg", {
    width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": "timeline-title timeline-desc",
  });
  const slow = job.slow;
  const slowest = spans.slice().sort((a, b) => b[2] - a[2]).slice(0, 3).map(([task, , length]) => `${task.name || task.action} ${duration(length)}`);
  picture.append(svg("title", { id: "timeline-title" }, `Timeline of ${plural(tasks.length, "task")} over ${duration(total)}`));
  picture.append(svg("desc", { id: "timeline-desc" }, `The longest: ${slowest.join(", ")}.`));
  for (const tick of ticks(total)) {
    const x = scale(tick);
    picture.append(svg("line", { x1: x, x2: x, y1: top - 4, y2: height, class: "tick" }));
    picture.append(svg("text", { x, y: 11, class: "tick-label", "text-anchor": "middle" }, duration(tick)));
  }
  spans.forEach(([task, start, length], index) => {
    const y = top + index * rowHeight;
    const group = svg("g", { class: "tl-row tl-" + worst(task, wanted) + (slow.has(task.i) ? " tl-slow" : ""), "data-task": task.i });
    group.append(svg("title", {}, `${task.name || task.action}: ${duration(length)}`));
    if (labels) {
      const name = task.name || task.action || "";
      const text = name.length > 38 ? name.slice(0, 37) + "…" : name;
      group.append(svg("text", { x: labelWidth - 6, y: y + rowHeight - 5, "text-anchor": "end", class: "tl-label" }, text));
    }
    const x = scale(start);
    group.append(svg("rect", {
      x, y: y + 2, width: Math.max(2, scale(start + length) - x), height: Math.max(1, rowHeight - 4), rx: labels ? 2 : 0, class: "tl-bar",
    }));
    if (labels) group.append(svg("text", { x: Math.min(width - 2, scale(start + length) + 4), y: y + rowHeight - 5, class: "tl-time" }, duration(length)));
    group.addEventListener("click", () => {
      const row = $("task-" + task.i);
      if (row) { row.scrollIntoView({ block: "center" }); row.classList.add("flash"); setTimeout(() => row.classList.remove("flash"), 1200); }
    });
    picture.append(group);
  });
  box.replaceChildren(picture);
}

function ticks(total) {
  const rough = total / 6;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((candidate) => candidate >= rough) || rough;
  const marks = [];
  for (let tick = 0; tick <= total + 1e-9; tick += step) marks.push(tick);
  return marks;
}

function worst(task, wanted) {
  const order = ["u", "f", "i", "c", "o", "s"];
  const codes = wanted === null ? task.cells : [task.cells[wanted] || "-"];
  for (const code of order) if (codes.includes(code)) return STATUS_OF[code];
  return "none";
}

// -- one result ----------------------------------------------------------------------------

export async function openResult(job, task, host, opener) {
  const dialog = $("result-dialog");
  const body = $("result-body");
  const name = job.view.tasks[task] ? job.view.tasks[task].name || job.view.tasks[task].action : "";
  const hostName = job.view.hosts[host] ? job.view.hosts[host].name : "";
  $("result-title").textContent = `${name} on ${hostName}`;
  body.replaceChildren(el("p", "loading…", "sub"));
  dialog.returnFocusTo = opener || null;
  if (!dialog.open) dialog.showModal();
  const headers = authHeaders(token());
  let found = null;
  try {
    const response = await fetch(`/api/jobs/${encodeURIComponent(job.taskId)}/results/${task}/${host}`, { headers });
    found = response.ok ? await response.json() : null;
  } catch (error) {
    body.replaceChildren(el("p", "could not reach the dashboard: " + error, "error"));
    return;
  }
  if (!found) { body.replaceChildren(el("p", "This result is not known to the dashboard.", "sub")); return; }
  body.replaceChildren(resultView(found));
}

function resultView(found) {
  const box = el("div");
  const head = el("p", null, "result-head");
  head.append(stateBadge(found.status || "none"));
  if (found.duration !== null && found.duration !== undefined) head.append(` in ${duration(found.duration)}`);
  box.append(head);
  if (!found.results) {
    box.append(el("p", "This result is no longer kept whole here: while a job runs, the dashboard keeps the newest of its results within a bound; the job's record has every one once it has ended.", "sub"));
    return box;
  }
  const many = found.results.length > 1;
  found.results.forEach((entry, index) => {
    const part = el("section", null, "result-entry");
    if (many) {
      const what = entry.event === "runner_retry" ? "retry" : entry.item !== undefined ? `item ${entry.item}` : "final result";
      const title = el("h3", `${index + 1}. ${what}`);
      title.append(" ", stateBadge(entry.status || "none"));
      part.append(title);
    }
    if (entry.dropped) part.append(el("p", entry.dropped, "sub"));
    if (entry.no_log) {
      part.append(el("p", "Hidden by no_log: the worker never sends this result.", "sub"));
      box.append(part);
      return;
    }
    const result = entry.result || {};
    const fields = el("dl", null, "result-fields");
    const add = (label, value, className) => {
      if (value === null || value === undefined || value === "") return;
      const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
      const dd = el("dd");
      dd.append(className === "diff" ? diffBlock(text) : el("pre", text, className || ""));
      fields.append(el("dt", label), dd);
    };
    add("Message", result.msg, "msg");
    add("Exit code", result.rc);
    add("Output (stdout)", result.stdout);
    add("Errors (stderr)", result.stderr, "stderr");
    add("Diff", result.diff, "diff");
    if (fields.childNodes.length) part.append(fields);
    const whole = el("details", null, "whole");
    whole.append(el("summary", "The whole result (JSON)"));
    whole.append(el("pre", JSON.stringify({ ...(entry.data || {}), ...result, ...(entry.item !== undefined ? { item: entry.item } : {}) }, null, 2)));
    part.append(whole);
    box.append(part);
  });
  return box;
}

function diffBlock(text) {
  const pre = el("pre", null, "diff");
  for (const line of text.split("\n")) {
    const kind = line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : line.startsWith("@@") ? "hunk" : "";
    pre.append(el("span", line + "\n", kind ? "diff-" + kind : ""));
  }
  return pre;
}

// -- Ansible's output ----------------------------------------------------------------------
// Thousands of lines: only those in view (and a margin) are in the page, each LINE pixels high,
// the rest stand in as empty space. The search box finds what is out of view.

const LINE = 18;  // px: .line's height in dashboard.css
const MARGIN = 40;

// A live line may hold several (the recap): one row each, the first keeping the line's id.
function splitLines(line) {
  if (!line.text.includes("\n")) return [line];
  return line.text.split("\n").map((text, index) => ({ id: index ? null : line.id, text, kind: line.kind, host: line.host }));
}

function lineShown(job, line) {
  if (job.hostFilter && line.host && line.host !== job.hostFilter) return false;
  if (job.hostFilter && !line.host && !["play", "task", "recap"].includes(line.kind)) return false;
  if (job.search && !line.text.toLowerCase().includes(job.search)) return false;
  return true;
}

function lineNode(line, target) {
  const node = el("div", null, "line" + (line.kind ? " k-" + line.kind : "") + (line.id !== null && line.id === target ? " target" : ""));
  if (line.id !== null && line.id !== undefined) node.id = "L" + line.id;
  if (line.parts) {
    for (const [classes, text] of line.parts) node.append(el("span", text, classes));
  } else {
    node.textContent = line.text || "\u00a0";
  }
  return node;
}

function renderOutput(job) {
  const output = $("output");
  output.dataset.source = job.source;
  $("output-heading").textContent = job.source === "record" ? "Output" : "Live output";
  $("output-about").textContent = job.source === "record"
    ? "Ansible's own output, as ansible-playbook printed it."
    : "The line Ansible prints for each event, as the events arrive.";
  $("follow-label").hidden = job.status.state !== "running";
  const height = job.outputHeight || 400;
  let scrollTo = null;
  if (job.dirty.output === "all") {
    job.shown = [];
    for (const line of job.lines) for (const row of splitLines(line)) if (lineShown(job, row)) job.shown.push(row);
    job.pendingLines = [];
    job.drawn = null;
    scrollTo = job.follow && job.status.state === "running" ? Infinity : 0;
    if (!job.scrolledToFailure && TERMINAL.has(job.status.state) && job.source !== "loading") {
      job.scrolledToFailure = true;
      const failed = job.shown.findIndex((line) => line.kind === "failed" || line.kind === "unreachable");
      if (failed >= 0) scrollTo = Math.max(0, failed * LINE - height / 3);
    }
  } else if (job.pendingLines.length) {
    for (const line of job.pendingLines) for (const row of splitLines(line)) if (lineShown(job, row)) job.shown.push(row);
    job.pendingLines = [];
    const over = job.shown.length - LIVE_LINES;
    if (over > 0) {
      job.shown.splice(0, over);
      job.drawn = null;
      if (!job.follow) scrollTo = Math.max(0, (job.scrollTop || 0) - over * LINE);
    }
    if (job.follow) scrollTo = Infinity;
  }
  const space = $("output-space");
  space.style.height = job.shown.length * LINE + "px";
  if (scrollTo !== null) {
    output.scrollTop = scrollTo === Infinity ? job.shown.length * LINE : scrollTo;
    job.drawn = null;
  }
  drawLines(job);
  $("no-output").hidden = job.lines.length > 0;
  countLines(job, job.shown.length);
}

// The lines around the scroll position; called again as the output scrolls.
export function drawLines(job) {
  const output = $("output");
  const top = output.scrollTop;
  job.scrollTop = top;
  const height = job.outputHeight || output.clientHeight || 400;
  const first = Math.max(0, Math.floor(top / LINE) - MARGIN);
  const last = Math.min(job.shown.length, Math.ceil((top + height) / LINE) + MARGIN);
  if (job.drawn && job.drawn[0] <= Math.floor(top / LINE) && job.drawn[1] >= Math.min(job.shown.length, Math.ceil((top + height) / LINE))
      && job.drawn[2] === job.shown.length) return;
  const window = $("output-lines");
  const fragment = document.createDocumentFragment();
  for (let index = first; index < last; index += 1) fragment.append(lineNode(job.shown[index], job.target));
  window.replaceChildren(fragment);
  window.style.top = first * LINE + "px";
  job.drawn = [first, last, job.shown.length];
}

function countLines(job, shown) {
  const total = job.lines.length;
  $("output-count").textContent = job.search || job.hostFilter ? `${shown.toLocaleString()} of ${plural(total, "line")}` : plural(total, "line");
}

export function showInOutput(job, anchor) {
  const find = () => job.shown.findIndex((line) => line.id === anchor);
  // A filter just changed and its lines are not drawn yet: they are the ones to look in.
  if (job.dirty.output === "all") renderJob(job);
  let index = find();
  if (index < 0 && (job.search || job.hostFilter)) {
    job.search = ""; $("output-search").value = "";
    setHostFilter(job, null);
    renderJob(job);
    index = find();
  }
  if (index < 0) return;
  const output = $("output");
  job.follow = false;
  $("follow").checked = false;
  job.target = anchor;
  job.drawn = null;
  output.scrollIntoView({ block: "nearest" });
  output.scrollTop = Math.max(0, index * LINE - (job.outputHeight || output.clientHeight) / 3);
  drawLines(job);
  output.focus({ preventScroll: true });
}

export function setSearch(job, text) {
  job.search = text.trim().toLowerCase();
  job.dirty.output = "all";
}

function renderNotes(job) {
  const view = job.view;
  const notes = [];
  if (job.source === "live" && view.missed > 0) {
    notes.push(`${plural(view.missed, "event")} of this job did not reach this dashboard (sent before it started, or thinned out by the worker's rate limit): the counts at the top are the worker's; the tables show what was heard. Once the job ends, its record has them all.`);
  }
  if (job.source === "record" && view.recordCut) {
    notes.push(`The record was cut to its size limit: it keeps the newest ${plural(view.events, "event")}${view.eventsTotal ? ` of ${view.eventsTotal.toLocaleString()}` : ""}.`);
  }
  if (view.linesCut) notes.push("Older output was left out: the page shows the newest lines.");
  if (view.cut) notes.push("This job has more hosts, tasks or results than the page holds: it shows the first.");
  if (job.source === "none" && TERMINAL.has(job.status.state)) notes.push("No events of this job are known here, and its record cannot be read.");
  if (job.source === "loading") notes.push("Reading the job's record…");
  const box = $("view-note");
  box.replaceChildren(...notes.map((text) => el("p", text)));
  box.hidden = notes.length === 0;
}
