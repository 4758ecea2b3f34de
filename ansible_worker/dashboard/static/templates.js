// The group's templates on the list page: their schedules, and behind --allow-actions a launch form built from each survey.
"use strict";

import { $, el, exact, jobHref, authHeaders } from "./util.js";

let launching = null;

function when(iso) {
  return iso ? exact(iso) : "-";
}

// The templates table, drawn again only when the catalogue changes.
export function renderTemplates(state) {
  const templates = (state.catalogue && state.catalogue.templates) || {};
  const names = Object.keys(templates).sort();
  $("templates-section").hidden = names.length === 0;
  const body = $("templates").tBodies[0];
  const key = JSON.stringify([state.catalogue, state.config.allow_actions]);
  if (body.dataset.key === key) return;
  body.dataset.key = key;
  body.replaceChildren();
  for (const name of names) {
    const view = templates[name];
    const row = el("tr");
    row.dataset.template = name;
    const cell = el("td");
    if (state.config.allow_actions) {
      const button = el("button", name, "launch-open");
      button.type = "button";
      button.setAttribute("aria-label", "Launch " + name);
      button.addEventListener("click", () => openLaunch(name, view));
      cell.append(button);
    } else {
      cell.textContent = name;
    }
    const survey = Object.entries(view.survey || {}).map(([variable, rule]) => `${variable}${rule.required ? "*" : ""}: ${rule.type}`);
    const schedule = view.schedule || [];
    const next = schedule.flatMap((entry) => entry.next_runs.slice(0, 1)).sort()[0];
    const last = schedule.map((entry) => entry.last_run).filter(Boolean).sort().pop();
    const missed = schedule.flatMap((entry) => entry.missed).sort();
    row.append(
      cell,
      el("td", view.playbook),
      el("td", survey.join(", ") || "-"),
      el("td", when(next)),
      el("td", when(last)),
      el("td", missed.length ? `${missed.length} (newest ${exact(missed[missed.length - 1])})` : "-"),
      el("td", view.description || ""),
    );
    body.append(row);
  }
}

function openLaunch(name, view) {
  launching = name;
  $("launch-name").textContent = name;
  $("launch-result").textContent = "";
  const fields = $("launch-fields");
  fields.replaceChildren();
  for (const [variable, rule] of Object.entries(view.survey || {})) fields.append(surveyField(variable, rule));
  $("launch-form").hidden = false;
  $("launch-heading").focus();
}

function hintOf(rule) {
  const parts = [rule.description, rule.required ? "required" : null];
  if (rule.min !== null && rule.min !== undefined) parts.push("min " + rule.min);
  if (rule.max !== null && rule.max !== undefined) parts.push("max " + rule.max);
  if (rule.has_default) parts.push("has a default");
  return parts.filter(Boolean).join(", ");
}

// One input per survey variable, of the kind its type asks for; its value goes to the server as typed.
function surveyField(variable, rule) {
  const hint = hintOf(rule);
  if (rule.type === "multichoice") {
    const set = el("fieldset");
    set.dataset.variable = variable;
    set.append(el("legend", variable));
    for (const choice of rule.choices) {
      const label = el("label");
      const box = el("input");
      box.type = "checkbox";
      box.value = JSON.stringify(choice);
      box.checked = Array.isArray(rule.default) && rule.default.some((item) => JSON.stringify(item) === box.value);
      label.append(box, " " + choice);
      set.append(label);
    }
    if (hint) set.append(el("span", hint, "hint"));
    return set;
  }
  const label = el("label", variable + " ");
  let input;
  if (rule.type === "choice") {
    input = el("select");
    if (rule.default === null || rule.default === undefined) input.append(el("option", ""));
    for (const choice of rule.choices) {
      const option = el("option", choice);
      option.value = String(choice);
      option.selected = rule.default !== null && rule.default !== undefined && String(rule.default) === String(choice);
      input.append(option);
    }
  } else {
    input = el("input");
    input.type = { boolean: "checkbox", integer: "number", number: "number", secret: "password" }[rule.type] || "text";
    if (rule.type === "number") input.step = "any";
    if (rule.type === "secret") input.autocomplete = "off";
    if (rule.type === "boolean") input.checked = rule.default === true;
    else if (rule.default !== null && rule.default !== undefined) input.value = String(rule.default);
  }
  input.name = variable;
  input.dataset.variable = variable;
  input.dataset.type = rule.type;
  label.append(input);
  if (hint) label.append(el("span", hint, "hint"));
  return label;
}

function answers() {
  const found = {};
  for (const node of $("launch-fields").querySelectorAll("[data-variable]")) {
    const variable = node.dataset.variable;
    if (node.tagName === "FIELDSET") {
      found[variable] = [...node.querySelectorAll("input:checked")].map((box) => JSON.parse(box.value));
    } else if (node.dataset.type === "boolean") {
      found[variable] = node.checked;
    } else {
      // Text, read by the variable's type on the server; an empty one is no answer.
      found[variable] = node.value;
    }
  }
  return found;
}

async function launch(event) {
  event.preventDefault();
  const note = $("launch-result");
  note.textContent = "sending…";
  const headers = { "Content-Type": "application/json", "X-Dashboard-Action": "1", ...authHeaders() };
  try {
    const response = await fetch(`/api/templates/${encodeURIComponent(launching)}/launch`, {
      method: "POST", headers, body: JSON.stringify({ answers: answers() }), credentials: "same-origin",
    });
    const answer = await response.json();
    if (!response.ok) { note.textContent = "refused: " + (answer.error || response.status); return; }
    note.textContent = "";
    $("launch-form").hidden = true;
    location.hash = jobHref(answer.task_id);
  } catch (error) {
    note.textContent = "could not reach the dashboard: " + error;
  }
}

export function listenForLaunches() {
  $("launch-form").addEventListener("submit", launch);
  $("launch-close").addEventListener("click", () => { $("launch-form").hidden = true; });
}
