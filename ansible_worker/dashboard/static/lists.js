// The front page: the workers with their load, and the jobs, filtered and paged, each row a link.
"use strict";

import {
  $, el, authHeaders, jobHref, duration, parseTime, timeElement, stateBadge, countBar, countWords, plural, waitingText,
} from "./util.js";

const PAGE_SIZE = 50;
const RUNNING_SHOWN = 3;
const SINCE = { "1h": 3600e3, "24h": 86400e3, "7d": 7 * 86400e3 };

export function renderWorkers(state) {
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  const ids = Object.keys(state.workers).sort();
  $("no-workers").hidden = ids.length > 0;
  $("worker-count").textContent = ids.length ? `(${ids.length})` : "";
  const running = runningJobsByWorker(state.jobs);
  for (const id of ids) {
    const worker = state.workers[id];
    const row = el("tr");
    row.dataset.workerId = id;
    const heartbeat = parseTime(worker.heartbeat_at);
    const silent = heartbeat === null ? null : (Date.now() - heartbeat) / 1000;
    const interval = Number(worker.heartbeat_interval) || 30;
    // Three missed heartbeats: whatever it last said may no longer be true.
    const stale = worker.state !== "offline" && (silent === null || silent > 3 * interval);
    if (stale || worker.state === "offline") row.classList.add("stale");
    const name = el("td", null, "worker-name");
    name.append(el("span", id, "name"));
    const about = [worker.hostname, worker.version && "v" + worker.version].filter(Boolean).join(" · ");
    if (about) name.append(el("span", about, "sub"));
    row.append(name);
    const cell = el("td"); cell.append(stateBadge(worker.state)); row.append(cell);
    for (const key of ["capacity", "running", "queued", "jobs_done"]) row.append(el("td", worker[key] ?? "", "num"));
    row.append(loadCell(worker));
    row.append(el("td", warmText(worker), "num warm"));
    row.append(runningCell(running.get(id) || []));
    const up = el("td", null, "up");
    if (worker.started_at) up.append(timeElement(worker.started_at));
    row.append(up);
    row.append(el("td", silent === null ? "?" : duration(silent) + " ago", "heartbeat"));
    body.append(row);
  }
}

function runningJobsByWorker(jobs) {
  const byWorker = new Map();
  for (const job of jobs.values()) {
    if (job.state !== "running" || !job.worker_id) continue;
    if (!byWorker.has(job.worker_id)) byWorker.set(job.worker_id, []);
    byWorker.get(job.worker_id).push(job);
  }
  return byWorker;
}

function loadCell(worker) {
  const cell = el("td", null, "load");
  const capacity = Number(worker.capacity) || 0;
  const busy = Number(worker.running) || 0;
  const queued = Number(worker.queued) || 0;
  const meter = el("meter");
  meter.min = 0; meter.max = Math.max(capacity, 1); meter.value = Math.min(busy, meter.max);
  meter.high = Math.max(capacity, 1) - 0.5;
  meter.setAttribute("aria-label", `${busy} of ${capacity} running`);
  cell.append(meter, el("span", `${busy}/${capacity}` + (queued ? ` +${queued} queued` : ""), "sub"));
  return cell;
}

function warmText(worker) {
  if (worker.warm_pool_size === null || worker.warm_pool_size === undefined) return "—";
  return String(worker.warm_pool_size);
}

function runningCell(jobs) {
  const cell = el("td", null, "running-now");
  if (!jobs.length) { cell.append(el("span", "idle", "sub")); return cell; }
  jobs.sort((a, b) => String(a.started_at || "").localeCompare(String(b.started_at || "")));
  for (const job of jobs.slice(0, RUNNING_SHOWN)) {
    const line = el("div");
    const link = el("a", job.task_id);
    link.href = jobHref(job.task_id);
    line.append(link);
    if (job.current_task) line.append(el("span", " " + job.current_task, "sub"));
    cell.append(line);
  }
  if (jobs.length > RUNNING_SHOWN) cell.append(el("div", `and ${jobs.length - RUNNING_SHOWN} more`, "sub"));
  return cell;
}

// The filters as chosen now: one test of a job's list line.
function filterOf(state) {
  const wanted = $("state-filter").value;
  const playbook = $("playbook-filter").value.trim().toLowerCase();
  const worker = $("worker-filter").value;
  const since = SINCE[$("time-filter").value];
  const oldest = since ? Date.now() - since : null;
  return (job) => {
    if (wanted && job.state !== wanted) return false;
    if (playbook && !String(job.playbook || "").toLowerCase().includes(playbook)) return false;
    if (worker && job.worker_id !== worker) return false;
    if (state.hostMatches && !state.hostMatches.has(job.task_id)) return false;
    if (oldest !== null) {
      const at = parseTime(job.created_at || job.started_at);
      if (at === null || at < oldest) return false;
    }
    return true;
  };
}

function newestFirst(a, b) {
  const ka = String(a.created_at || a.started_at || ""), kb = String(b.created_at || b.started_at || "");
  if (ka !== kb) return ka < kb ? 1 : -1;
  return b.order - a.order;
}

export function filteredJobs(state) {
  const matches = filterOf(state);
  return Array.from(state.jobs.values()).filter(matches).sort(newestFirst);
}

// With a history store, the list is the store's page, each line as the broker last said it; on the
// first page, the jobs heard live since that page was asked for come on top. The host filter, which
// the store matches whole, keeps the jobs this dashboard knows ran on a matching host.
function storedRows(state) {
  const matches = filterOf(state);
  const rows = new Map();
  for (const job of (state.stored ? state.stored.jobs : [])) rows.set(job.task_id, state.jobs.get(job.task_id) || job);
  if (state.page === 0) {
    for (const job of state.jobs.values()) {
      if (!rows.has(job.task_id) && job.heard > state.storedAsked) rows.set(job.task_id, job);
    }
  }
  return Array.from(rows.values()).filter(matches).sort(newestFirst);
}

// Asks the history store for the page of jobs the filters and the pager choose; `done` once it is kept.
export async function fetchStored(state, done) {
  const params = new URLSearchParams();
  if ($("state-filter").value) params.set("state", $("state-filter").value);
  const playbook = $("playbook-filter").value.trim();
  if (playbook) params.set("playbook", playbook);
  if ($("worker-filter").value) params.set("worker", $("worker-filter").value);
  if ($("time-filter").value) params.set("since", $("time-filter").value);
  const before = state.cursors[state.page];
  if (before) params.set("before", before);
  const asked = Date.now();
  const key = params.toString();
  state.storedKey = key;
  const response = await fetch("/api/jobs?" + key, { headers: authHeaders() });
  const answer = await response.json();
  if (state.storedKey !== key) return;  // a newer question was asked meanwhile
  state.stored = response.ok ? answer : { jobs: [], next: null, error: answer.error || String(response.status) };
  state.storedAsked = asked;
  done();
}

function renderPartial(state) {
  const note = $("partial-note");
  const partial = state.partial;
  let text = "";
  if (state.config.history) {
    text = state.stored && state.stored.error ? "The history store cannot be read: " + state.stored.error : "";
  } else if (partial && partial.dropped > 0) {
    text = `Showing the newest ${state.jobs.size.toLocaleString()} jobs: the dashboard keeps at most ` +
      `${partial.kept.toLocaleString()}, and ${partial.dropped.toLocaleString()} older ones the broker retains are` +
      " not listed here. Set history.url for all of them.";
  } else if (partial && partial.maybe_dropped) {
    text = `The broker sent ${partial.first_heard.toLocaleString()} jobs when the dashboard started: a broker that` +
      " queues fewer messages per client than it retains (Mosquitto's max_queued_messages, 1,000 by default)" +
      " drops the rest without a word, so older jobs may be missing here. Set history.url for all of them.";
  } else if (partial && !partial.loaded) {
    text = "The broker has not yet sent every job it retains: the list fills in as they arrive.";
  }
  note.textContent = text;
  note.hidden = !text;
}

function jobDuration(job) {
  if (job.duration_seconds !== null && job.duration_seconds !== undefined) return duration(job.duration_seconds);
  const started = parseTime(job.started_at);
  if (job.state === "running" && started !== null) return duration((Date.now() - started) / 1000);
  return "";
}

export function renderJobs(state) {
  renderWorkerChoices(state);
  renderPartial(state);
  const stored = state.config.history;
  const rows = stored ? storedRows(state) : filteredJobs(state);
  const pages = stored ? state.page + 1 : Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const shown = stored ? rows : rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
  const body = $("jobs").tBodies[0];
  // The list is drawn anew: the job link that had the focus gets it back.
  const focused = document.activeElement && document.activeElement.closest("#jobs tbody tr");
  const fragment = document.createDocumentFragment();
  for (const job of shown) fragment.append(jobRow(job));
  body.replaceChildren(fragment);
  if (focused) {
    const link = jobLink(focused.dataset.taskId);
    if (link) link.focus({ preventScroll: true });
  }
  $("no-jobs").hidden = rows.length > 0;
  $("prev-page").disabled = state.page === 0;
  if (stored) {
    $("job-count").textContent = "(from the history store)";
    $("no-jobs").textContent = state.stored ? "No job matches these filters." : "Asking the history store…";
    $("page-info").textContent = `page ${state.page + 1}`;
    $("next-page").disabled = !(state.stored && state.stored.next);
  } else {
    $("job-count").textContent = `(${rows.length} of ${state.jobs.size})`;
    $("no-jobs").textContent = state.jobs.size ? "No job matches these filters." : "No job has been heard of yet.";
    $("page-info").textContent = `page ${state.page + 1} of ${pages}`;
    $("next-page").disabled = state.page >= pages - 1;
  }
  $("host-note").textContent = state.hostMatches
    ? `${plural(state.hostMatches.size, "job")} known to have run on a host matching “${state.hostQuery}”`
    : "";
}

function jobRow(job) {
  const row = el("tr", null, "job state-row-" + String(job.state).replace(/[^a-z]/g, ""));
  row.dataset.taskId = job.task_id;
  const link = el("a", job.task_id, "job-link");
  link.href = jobHref(job.task_id);
  const idCell = el("td", null, "task-id"); idCell.append(link); row.append(idCell);
  const cell = el("td", null, "job-state"); cell.append(stateBadge(job.state)); row.append(cell);
  const playbook = el("td", null, "playbook");
  playbook.append(el("span", job.playbook));
  // Why a job failed, in its row: the first failure's task, host and message.
  if (job.error_message && job.state !== "success") playbook.append(el("span", job.error_message, "why"));
  // Why a queued job does not run yet: its place in the queue, or the locks it waits for and who holds them.
  const waiting = job.state === "queued" ? waitingText(job.waiting_for) : null;
  if (waiting) playbook.append(el("span", waiting, "why waiting"));
  row.append(playbook, el("td", job.worker_id, "worker"));
  const when = el("td", null, "when");
  const moment = job.started_at || job.created_at;
  if (moment) when.append(timeElement(moment));
  row.append(when, el("td", jobDuration(job), "num duration"));
  const results = el("td", null, "results");
  results.append(countBar(countsOf(job)), countWords(countsOf(job)));
  row.append(results);
  // The whole row opens the job for a mouse too; the link is what a keyboard, a new tab or a copied address use.
  row.addEventListener("click", (event) => {
    if (event.target.closest("a") || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey) return;
    if (String(window.getSelection())) return;
    location.hash = jobHref(job.task_id);
  });
  return row;
}

export function countsOf(status) {
  return {
    ok: status.tasks_ok, changed: status.tasks_changed, failed: status.tasks_failed,
    unreachable: status.tasks_unreachable, skipped: status.tasks_skipped,
    rescued: status.tasks_rescued, ignored: status.tasks_ignored,
  };
}

export function jobLink(taskId) {
  if (taskId === null || taskId === undefined) return null;
  return $("jobs").querySelector(`tr[data-task-id="${CSS.escape(taskId)}"] a.job-link`);
}

function renderWorkerChoices(state) {
  const select = $("worker-filter");
  const names = new Set(Object.keys(state.workers));
  for (const job of state.jobs.values()) if (job.worker_id) names.add(job.worker_id);
  for (const job of (state.stored ? state.stored.jobs : [])) if (job.worker_id) names.add(job.worker_id);
  const wanted = [...names].sort();
  const key = wanted.join("\n");
  if (select.dataset.key === key) return;
  select.dataset.key = key;
  const chosen = select.value;
  select.replaceChildren(el("option", "all"));
  select.options[0].value = "";
  for (const name of wanted) select.append(el("option", name));
  select.value = wanted.includes(chosen) ? chosen : "";
}

// Up and Down move between the jobs' links, as in a list; Enter opens one (it is a link).
export function onJobsKey(event) {
  if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
  const row = event.target.closest && event.target.closest("#jobs tbody tr");
  if (!row) return;
  const next = event.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
  if (!next) return;
  event.preventDefault();
  next.querySelector("a.job-link").focus();
}
