// A job's hosts: the table of their counts (the failed first), the filter by host, and what failed.
"use strict";

import { $, el, ALL_COUNTS, countBar, plural } from "./util.js";
import { openResult } from "./job_result.js";

// Hosts listed before "Show all": a long list is cut until asked for.
const HOSTS_SHOWN = 10;

export function natural(a, b) { return a.localeCompare(b, undefined, { numeric: true }); }

export function sortedHosts(view) {
  const bad = (host) => (host.failed || host.unreachable ? 0 : 1);
  return view.hosts.filter(Boolean).slice().sort((a, b) => bad(a) - bad(b) || natural(a.name, b.name));
}

export function renderHosts(job) {
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

export function renderHostChoices(job) {
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

export function hostIndex(job) {
  if (!job.hostFilter) return null;
  const host = job.view.hosts.find((candidate) => candidate && candidate.name === job.hostFilter);
  return host ? host.i : -1;
}

export function renderFailures(job) {
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

