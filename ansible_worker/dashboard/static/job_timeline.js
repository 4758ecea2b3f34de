// A job's timeline: one bar per task in SVG, from its first result to its last, the slowest marked.
"use strict";

import { $, svg, duration, plural } from "./util.js";
import { STATUS_OF, taskDuration } from "./job.js";
import { hostIndex } from "./job_hosts.js";

export function drawTimeline(job, now) {
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
