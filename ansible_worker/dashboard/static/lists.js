// The front page: the workers with their load, and the jobs, filtered and paged, each row a link.
"use strict";

import { $, el, jobHref, duration, parseTime, timeElement, stateBadge, countBar, countWords, plural } from "./util.js";

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

export function filteredJobs(state) {
  const wanted = $("state-filter").value;
  const playbook = $("playbook-filter").value.trim().toLowerCase();
  const worker = $("worker-filter").value;
  const since = SINCE[$("time-filter").value];
  const oldest = since ? Date.now() - since : null;
  const rows = [];
  for (const job of state.jobs.values()) {
    if (wanted && job.state !== wanted) continue;
    if (playbook && !String(job.playbook || "").toLowerCase().includes(playbook)) continue;
    if (worker && job.worker_id !== worker) continue;
    if (state.hostMatches && !state.hostMatches.has(job.task_id)) continue;
    if (oldest !== null) {
      const at = parseTime(job.created_at || job.started_at);
      if (at === null || at < oldest) continue;
    }
    rows.push(job);
  }
  rows.sort((a, b) => {
    const ka = String(a.created_at || a.started_at || ""), kb = String(b.created_at || b.started_at || "");
    if (ka !== kb) return ka < kb ? 1 : -1;
    return b.order - a.order;
  });
  return rows;
}

function jobDuration(job) {
  if (job.duration_seconds !== null && job.duration_seconds !== undefined) return duration(job.duration_seconds);
  const started = parseTime(job.started_at);
  if (job.state === "running" && started !== null) return duration((Date.now() - started) / 1000);
  return "";
}

export function renderJobs(state) {
  renderWorkerChoices(state);
  const rows = filteredJobs(state);
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const shown = rows.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
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
  $("job-count").textContent = `(${rows.length} of ${state.jobs.size})`;
  $("no-jobs").hidden = rows.length > 0;
  $("no-jobs").textContent = state.jobs.size ? "No job matches these filters." : "No job has been heard of yet.";
  $("page-info").textContent = `page ${state.page + 1} of ${pages}`;
  $("prev-page").disabled = state.page === 0;
  $("next-page").disabled = state.page >= pages - 1;
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
