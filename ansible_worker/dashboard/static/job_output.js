// Ansible's output on a job's page: the lines in view, a search, follow, and a task's place in it.
"use strict";

import { $, el, TERMINAL, plural } from "./util.js";
import { renderJob } from "./job.js";
import { setHostFilter } from "./job_hosts.js";

// The newest lines a live page keeps.
export const LIVE_LINES = 5000;
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

export function renderOutput(job) {
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
