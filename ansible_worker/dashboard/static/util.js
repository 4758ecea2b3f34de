// Small helpers shared by the views: elements made with text only, times and durations in words.
"use strict";

export const TERMINAL = new Set(["success", "failed", "cancelled", "timeout"]);
// A job's counts in the order the bars stack them; rescued and ignored are counted inside the others.
export const COUNTS = ["ok", "changed", "failed", "unreachable", "skipped"];
export const ALL_COUNTS = [...COUNTS, "rescued", "ignored"];
const SVG = "http://www.w3.org/2000/svg";

export function $(id) { return document.getElementById(id); }

// Everything from the network goes in as text: no markup is ever made of it.
export function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

export function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function jobHref(taskId) { return "#/job/" + encodeURIComponent(taskId); }

export function parseTime(iso) {
  if (!iso) return null;
  const then = Date.parse(iso);
  return Number.isNaN(then) ? null : then;
}

// "20ms", "1.4s", "14s", "1m 04s", "2h 05m": short, and the same width for the same order of time.
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  const value = Math.max(0, seconds);
  if (value < 1) return Math.round(value * 1000) + "ms";
  if (value < 10) return value.toFixed(1) + "s";
  if (value < 60) return Math.round(value) + "s";
  const whole = Math.round(value);
  if (whole < 3600) return Math.floor(whole / 60) + "m " + String(whole % 60).padStart(2, "0") + "s";
  return Math.floor(whole / 3600) + "h " + String(Math.floor((whole % 3600) / 60)).padStart(2, "0") + "m";
}

const RELATIVE = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const UNITS = [["year", 31557600], ["month", 2629800], ["week", 604800], ["day", 86400], ["hour", 3600], ["minute", 60]];

// "3 minutes ago", "in 5 seconds" (a clock ahead of ours), "yesterday".
export function ago(iso, now = Date.now()) {
  const then = parseTime(iso);
  if (then === null) return "";
  const seconds = (then - now) / 1000;
  const size = Math.abs(seconds);
  if (size < 5) return "just now";
  for (const [unit, length] of UNITS) {
    if (size >= length) return RELATIVE.format(Math.trunc(seconds / length), unit);
  }
  return RELATIVE.format(Math.trunc(seconds), "second");
}

const EXACT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "long" });

// The moment in the browser's own time zone, with its name.
export function exact(iso) {
  const then = parseTime(iso);
  return then === null ? String(iso || "") : EXACT.format(new Date(then));
}

// A <time> that says "3 minutes ago" and shows the exact local time on hover.
export function timeElement(iso, className) {
  const node = el("time", ago(iso), className);
  if (parseTime(iso) !== null) {
    node.dateTime = iso;
    node.title = exact(iso);
  }
  return node;
}

export function stateBadge(value) {
  return el("span", value, "state state-" + String(value).replace(/[^a-z]/g, ""));
}

export function plural(count, word) { return `${count.toLocaleString()} ${word}${count === 1 ? "" : "s"}`; }

// A stacked bar of counts, drawn as one SVG; its numbers are said in its label and shown beside it.
export function countBar(counts, className = "bar") {
  const total = COUNTS.reduce((sum, key) => sum + (Number(counts[key]) || 0), 0);
  const node = svg("svg", { class: className, viewBox: "0 0 100 10", preserveAspectRatio: "none", "aria-hidden": "true", focusable: "false" });
  let x = 0;
  for (const key of COUNTS) {
    const value = Number(counts[key]) || 0;
    if (!value || !total) continue;
    const width = (value / total) * 100;
    node.append(svg("rect", { x, y: 0, width, height: 10, class: "seg-" + key }));
    x += width;
  }
  if (!total) node.append(svg("rect", { x: 0, y: 0, width: 100, height: 10, class: "seg-none" }));
  return node;
}

// The counts as words: "48 ok · 1 changed · 1 failed", every count given a class of its own.
export function countWords(counts, { always = ["ok"] } = {}) {
  const node = el("span", null, "count-words");
  let first = true;
  for (const key of ALL_COUNTS) {
    const value = Number(counts[key]) || 0;
    if (!value && !always.includes(key)) continue;
    if (!first) node.append(" · ");
    first = false;
    const part = el("span", null, "cw cw-" + key);
    part.append(el("span", value.toLocaleString(), "n-" + key), " " + key);
    node.append(part);
  }
  return node;
}

let dashboardToken = null;

export function setToken(value) { dashboardToken = value || null; }
export function token() { return dashboardToken; }
export function authHeaders(value = dashboardToken) { return value ? { "X-Dashboard-Token": value } : {}; }

// Why a job waits, as `watch` and `jobs` say it (status.waiting_for).
export function waitingText(waiting) {
  if (!waiting || typeof waiting !== "object") return null;
  if ("held_by" in waiting) {
    const locks = Array.isArray(waiting.locks) && waiting.locks.length ? waiting.locks.join(", ") : "its max_concurrent";
    return `waiting for ${locks} (held by ${waiting.held_by})`;
  }
  if ("locks_sync" in waiting) {
    const workers = Array.isArray(waiting.locks_sync) && waiting.locks_sync.length ? waiting.locks_sync.join(", ") : "the group";
    return `waiting to hear which locks ${workers} hold`;
  }
  if ("queue_position" in waiting) return `waiting in the queue: #${waiting.queue_position} for ${waiting.concurrency ?? "?"} slots`;
  if ("project_fetch" in waiting) return `waiting for a fetch of ${waiting.project_fetch}`;
  if ("warm_parent" in waiting) return "waiting for a warm Ansible parent to start";
  return "waiting for " + Object.entries(waiting).map(([key, value]) => `${key}=${value}`).join(", ");
}
