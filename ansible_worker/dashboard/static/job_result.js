// One host's result of one task, whole: its message, output, exit code, diff and JSON, in a dialog.
"use strict";

import { $, el, duration, stateBadge, authHeaders, token } from "./util.js";

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
