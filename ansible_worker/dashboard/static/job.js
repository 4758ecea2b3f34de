// A job's page: what ran and how it went, its hosts, its tasks with each host's result, where the time went,
// each result whole, and Ansible's output. The server sends the page's data and then its changes.
"use strict";

import {
  $, el, TERMINAL, ALL_COUNTS, duration, parseTime, timeElement, ago, exact, countBar, countWords,
  plural, jobHref, waitingText,
} from "./util.js";
import { countsOf } from "./lists.js";
import { drawTimeline } from "./job_timeline.js";
import { natural, renderHosts, renderHostChoices, renderFailures, hostIndex } from "./job_hosts.js";
import { openResult } from "./job_result.js";
import { LIVE_LINES, renderOutput, showInOutput } from "./job_output.js";

export { openResult } from "./job_result.js";
export { sortedHosts, toggleAllHosts, setHostFilter, hostIndex } from "./job_hosts.js";
export { drawLines, showInOutput, setSearch } from "./job_output.js";

export const STATUS_OF = { o: "ok", c: "changed", f: "failed", u: "unreachable", s: "skipped", i: "ignored", "-": "none" };
// A sign as well as a colour, so that a result reads without colour vision too.
const GLYPH = { o: "✓", c: "●", f: "✕", u: "⊘", s: "–", i: "~", "-": "·" };
const SLOW_SHOWN = 3;
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
  add("Module", status.module ? "ad-hoc " + status.module : null, "module");
  add("Waiting for", waitingText(status.waiting_for), "waiting_for");
  add("Attempts", Array.isArray(status.attempts) && status.attempts.length ? status.attempts.length : null, "attempts");
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
    case "queued": return `Queued ${ago(status.created_at, now)}, ${waitingText(status.waiting_for) || "waiting for a worker"}.`;
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

// -- tasks ---------------------------------------------------------------------------------

export function taskDuration(job, task, host, now) {
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
  // The slowest few, if they stand out: each a tenth of a second or more, and twice the median or
  // a large share of the whole (a quarter, or twice an even share), since on a loaded machine
  // several tasks are slow and the median with them.
  const timed = job.view.tasks.filter(Boolean).map((task) => [task.i, taskDuration(job, task, null, now)]).filter(([, d]) => d !== null);
  if (timed.length < 2) return new Set();
  const sorted = timed.map(([, d]) => d).sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)];
  const share = sorted.reduce((sum, d) => sum + d, 0) * Math.max(0.25, 2 / timed.length);
  timed.sort((a, b) => b[1] - a[1]);
  return new Set(timed.slice(0, SLOW_SHOWN).filter(([, d]) => d >= 0.1 && (d >= 2 * median || d >= share)).map(([i]) => i));
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
