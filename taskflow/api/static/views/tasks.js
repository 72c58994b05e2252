// "My tasks": the create form, the filtered and paged table, live updates.

import { api, ApiError, nextLink } from "../api.js";
import { clear, debounce, h, statusBadge, timeElement, toast } from "../dom.js";
import { LiveStream } from "../live.js";
import { clearErrors, field, showErrors } from "./forms.js";

export const STATUSES = ["postponed", "queued", "processing", "retrying", "done", "failed", "cancelled"];
export const TYPES = ["send_email", "process_image", "download_files"];
const PAGE_SIZE = 20;
export const CANCELLABLE = new Set(["postponed", "queued", "processing", "retrying"]);
export const RETRYABLE = new Set(["failed", "cancelled"]);
export const FINISHED = new Set(["done", "failed", "cancelled"]);

export function renderTasks(main) {
  const state = {
    status: "", type: "",
    pages: [null],        // the URL of each page seen so far; null is the first
    page: 0,
    next: null,
    rows: new Map(),      // task id -> <tr>
  };
  const tbody = h("tbody");
  const summary = h("span", { class: "muted", id: "page-summary" });
  const newer = h("button", { type: "button", id: "page-newer", disabled: true, onclick: () => go(state.page - 1) }, "← Newer");
  const older = h("button", { type: "button", id: "page-older", disabled: true, onclick: () => go(state.page + 1) }, "Older →");
  const statusFilter = h("select", { id: "filter-status", "aria-label": "Status",
    onchange: () => { state.status = statusFilter.value; reset(); } },
    h("option", { value: "" }, "all statuses"), STATUSES.map((s) => h("option", { value: s }, s)));
  const typeFilter = h("select", { id: "filter-type", "aria-label": "Type",
    onchange: () => { state.type = typeFilter.value; reset(); } },
    h("option", { value: "" }, "all types"), TYPES.map((t) => h("option", { value: t }, t)));

  clear(main,
    createForm(() => { if (state.page === 0) reload(); }),
    h("section", { class: "card" },
      h("div", { class: "card-head" },
        h("h2", {}, "My tasks"),
        h("div", { class: "filters" }, statusFilter, typeFilter,
          h("button", { type: "button", onclick: () => reload() }, "Refresh"))),
      h("table", { class: "tasks", id: "tasks-table" },
        h("thead", {}, h("tr", {},
          ["Task", "Type", "What", "Status", "Attempts", "Run at", "Updated", ""].map((t) => h("th", {}, t)))),
        tbody),
      h("div", { class: "pager" }, newer, summary, older)));

  function firstPageUrl() {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (state.status) query.set("status", state.status);
    if (state.type) query.set("type", state.type);
    return `/api/tasks?${query}`;
  }

  function reset() {
    state.pages = [null];
    go(0);
  }

  async function go(page) {
    if (page < 0 || page >= state.pages.length + (state.next ? 1 : 0)) return;
    if (page === state.pages.length) state.pages.push(state.next);
    state.page = page;
    await reload();
  }

  let latestReload = 0;
  let reloadsInFlight = 0;
  // Events that arrive while a page is being fetched: the answer may predate
  // them, so they are applied again once the new rows are on the page.
  const arrivedDuringReload = new Map();

  async function reload() {
    // Only the newest answer is shown: an older one may predate a change
    // made since (a row deleted here must not come back).
    const mine = ++latestReload;
    const url = state.pages[state.page] || firstPageUrl();
    reloadsInFlight += 1;
    try {
      let response;
      try {
        response = await api(url, { raw: true });
      } catch (error) {
        if (error instanceof ApiError) toast(error.message, "error");
        return;
      }
      const tasks = await response.json();
      if (mine !== latestReload) return;
      state.next = nextLink(response);
      state.rows.clear();
      clear(tbody, tasks.length ? tasks.map((task) => {
        const row = taskRow(task, { onChanged: () => reloadSoon() });
        state.rows.set(task.id, row);
        return row;
      }) : h("tr", { class: "empty" }, h("td", { colspan: 8 }, "No tasks here yet.")));
      newer.disabled = state.page === 0;
      older.disabled = !state.next;
      summary.textContent = `Page ${state.page + 1}`;
      for (const event of arrivedDuringReload.values()) {
        const row = state.rows.get(event.task_id);
        if (row && Date.parse(event.at) >= Date.parse(row.task.updated_at)) updateRow(row, event);
      }
    } finally {
      reloadsInFlight -= 1;
      if (reloadsInFlight === 0) arrivedDuringReload.clear();
    }
  }

  // New tasks show up on the first page; changes update their row in place.
  const reloadSoon = debounce(reload, 250);
  const stream = new LiveStream("/api/events", {
    onEvent(event) {
      if (reloadsInFlight > 0) {
        const seen = arrivedDuringReload.get(event.task_id);
        if (!seen || seen.id < event.id) arrivedDuringReload.set(event.task_id, event);
      }
      const row = state.rows.get(event.task_id);
      if (row) updateRow(row, event);
      else if (event.event === "created" && state.page === 0) reloadSoon();
    },
    onReady: () => reloadSoon(),
    onResync: () => reload(),
  }).start();

  reload();
  return () => {
    stream.stop();
    reloadSoon.cancel();
  };
}

/** One row of the table; updateRow() changes it when an event arrives. */
export function taskRow(task, { onChanged }) {
  const row = h("tr", { dataset: { taskId: task.id, status: task.status } },
    h("td", {}, h("a", { href: `#/tasks/${task.id}`, class: "mono", title: task.id }, shortId(task.id))),
    h("td", { class: "type" }, task.type),
    h("td", { class: "what", title: summary(task) }, summary(task)),
    h("td", { class: "status" }, statusBadge(task.status)),
    h("td", { class: "attempts" }),
    h("td", { class: "run-at" }, timeElement(task.run_at)),
    h("td", { class: "updated" }, timeElement(task.updated_at)),
    h("td", { class: "actions" }));
  row.task = { ...task };
  renderRow(row, onChanged);
  return row;
}

/** Ids are UUIDv7: the first digits are the creation time, shared by tasks
 * created close together; the last ones tell them apart. */
export function shortId(id) {
  return `${id.slice(0, 8)}…${id.slice(-4)}`;
}

/** A few words on what the task does, from its payload. */
export function summary(task) {
  const payload = task.payload || {};
  if (task.type === "send_email") return [payload.to, payload.subject].filter(Boolean).join(": ");
  if (task.type === "process_image") return payload.path || "";
  if (task.type === "download_files" && Array.isArray(payload.urls)) {
    const [first] = payload.urls;
    return payload.urls.length > 1 ? `${first} +${payload.urls.length - 1}` : first || "";
  }
  return "";
}

export function updateRow(row, event) {
  Object.assign(row.task, { status: event.status, attempts: event.attempt, updated_at: event.at });
  renderRow(row, row.onChanged);
}

function renderRow(row, onChanged) {
  row.onChanged = onChanged;
  const task = row.task;
  row.dataset.status = task.status;
  clear(row.querySelector(".status"), statusBadge(task.status));
  row.querySelector(".attempts").textContent = `${task.attempts} / ${task.max_retries + 1}`;
  clear(row.querySelector(".updated"), timeElement(task.updated_at));
  clear(row.querySelector(".actions"), actionButtons(task, (changed) => {
    if (changed === null) {
      row.remove();
    } else {
      row.task = { ...changed };
      renderRow(row, onChanged);
    }
    // Then the page from the server, which may have moved on meanwhile.
    if (onChanged) onChanged();
  }));
}

/** Cancel / Retry / Delete, as the task's status allows. done(task or null). */
export function actionButtons(task, done) {
  const act = async (button, method, path, message) => {
    button.disabled = true;
    try {
      const changed = await api(path, { method });
      toast(message);
      done(changed);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      toast(error.message, "error");
      button.disabled = false;
    }
  };
  const buttons = [];
  if (CANCELLABLE.has(task.status)) {
    const button = h("button", { type: "button", class: "small", dataset: { action: "cancel" },
      onclick: () => act(button, "POST", `/api/tasks/${task.id}/cancel`, "Task cancelled") }, "Cancel");
    buttons.push(button);
  }
  if (RETRYABLE.has(task.status)) {
    const button = h("button", { type: "button", class: "small", dataset: { action: "retry" },
      onclick: () => act(button, "POST", `/api/tasks/${task.id}/retry`, "Task queued again") }, "Retry");
    buttons.push(button);
  }
  if (FINISHED.has(task.status)) {
    const button = h("button", { type: "button", class: "small danger", dataset: { action: "delete" },
      onclick: () => {
        if (confirm("Delete this task and its history?")) {
          act(button, "DELETE", `/api/tasks/${task.id}`, "Task deleted");
        }
      } }, "Delete");
    buttons.push(button);
  }
  return buttons;
}

// ----- the create form

// Laid out on a four-column grid; "wide" fields take a whole row.
const FIELDS = {
  send_email: () => [
    field("To", h("input", { name: "to", type: "email", placeholder: "someone@example.com" })),
    field("Subject", h("input", { name: "subject" }), null, "span-2"),
    field("Attachments", h("input", { name: "attached_files", list: "my-files", placeholder: "report.pdf, photo.png" }),
      "your files' names, comma-separated"),
    field("Body (HTML)", h("textarea", { name: "body", rows: 2 }), null, "wide"),
  ],
  process_image: () => [
    field("Image", h("input", { name: "path", list: "my-files", placeholder: "photo.png" }), "one of your files"),
    field("Blur", h("input", { name: "blur", type: "number", step: "any" }), "radius, px"),
    field("Sharpen", h("input", { name: "sharpen", type: "number", step: "any" }), "strength, 1 = standard"),
    field("Gamma", h("input", { name: "gamma", type: "number", step: "any" }), "> 1 brightens"),
    field("Contrast", h("input", { name: "contrast", type: "number", step: "any" }), "-100 … 100 %"),
    field("Brightness", h("input", { name: "brightness", type: "number", step: "any" }), "-100 … 100 %"),
    field("Saturation", h("input", { name: "saturation", type: "number", step: "any" }), "-100 … 100 %"),
    h("div", { class: "checks" },
      h("label", { class: "check" }, h("input", { name: "grayscale", type: "checkbox" }), "Grayscale"),
      h("label", { class: "check" }, h("input", { name: "invert", type: "checkbox" }), "Invert")),
  ],
  download_files: () => [
    field("URLs", h("textarea", { name: "urls", rows: 2, placeholder: "https://example.com/a.png" }),
      "one per line, up to 20", "wide"),
  ],
};

const NUMBERS = ["blur", "sharpen", "gamma", "contrast", "brightness", "saturation"];

function payloadOf(type, form) {
  const text = (name) => form.elements[name].value.trim();
  if (type === "send_email") {
    const payload = { to: text("to") };
    if (text("subject")) payload.subject = text("subject");
    if (form.elements.body.value.trim()) payload.body = form.elements.body.value;
    const files = text("attached_files").split(",").map((s) => s.trim()).filter(Boolean);
    if (files.length) payload.attached_files = files;
    return payload;
  }
  if (type === "process_image") {
    const payload = { path: text("path") };
    for (const name of NUMBERS) {
      // Sent as typed: "abc" reaches the API, which says what is wrong with it.
      if (text(name) !== "") payload[name] = Number.isNaN(Number(text(name))) ? text(name) : Number(text(name));
    }
    if (form.elements.grayscale.checked) payload.grayscale = true;
    if (form.elements.invert.checked) payload.invert = true;
    return payload;
  }
  return { urls: form.elements.urls.value.split("\n").map((s) => s.trim()).filter(Boolean) };
}

/** "payload.urls.0" -> "urls"; "run_at" -> "run_at"; "payload" -> null (top). */
function formField(apiField) {
  const parts = apiField.split(".");
  if (parts[0] === "payload") return parts[1] || null;
  return ["max_retries", "run_at", "priority"].includes(parts[0]) ? parts[0] : null;
}

function createForm(onCreated) {
  const typeSelect = h("select", { name: "type", id: "new-task-type" },
    TYPES.map((t) => h("option", { value: t }, t)));
  const payloadFields = h("fieldset", { class: "payload" });
  const files = h("datalist", { id: "my-files" });
  const form = h("form", { class: "card", id: "new-task", novalidate: true },
    h("div", { class: "card-head" }, h("h2", {}, "New task"), typeSelect),
    h("p", { class: "form-error", dataset: { errorFor: "(form)" }, hidden: true }),
    payloadFields,
    h("details", { class: "options" }, h("summary", {}, "Options: retries, priority, run later"),
      h("div", { class: "row" },
        field("Max retries", h("input", { name: "max_retries", type: "number", min: 0, max: 10, placeholder: "3" })),
        field("Priority", h("input", { name: "priority", type: "number", min: -100, max: 100, placeholder: "0" })),
        field("Run at", h("input", { name: "run_at", type: "datetime-local", step: 1 }), "empty: now"))),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary" }, "Create task")),
    files);

  const showFields = () => clear(payloadFields, FIELDS[typeSelect.value]());
  typeSelect.addEventListener("change", () => { clearErrors(form); showFields(); });
  showFields();
  // Suggestions for file names: the user's own files.
  api("/api/files").then((list) => clear(files, list.map((f) => h("option", { value: f.name })))).catch(() => {});

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const type = typeSelect.value;
    const body = { type, payload: payloadOf(type, form) };
    const number = (name) => form.elements[name].value.trim();
    if (number("max_retries") !== "") body.max_retries = Number(number("max_retries"));
    if (number("priority") !== "") body.priority = Number(number("priority"));
    if (form.elements.run_at.value) {
      const when = new Date(form.elements.run_at.value);
      body.run_at = Number.isNaN(when.getTime()) ? form.elements.run_at.value : when.toISOString();
    }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      const task = await api("/api/tasks", { method: "POST", json: body });
      toast(`Created ${task.type} task ${shortId(task.id)} (${task.status})`);
      // Ready for the next one of the same type.
      form.reset();
      typeSelect.value = type;
      showFields();
      onCreated(task);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      showErrors(form, error, formField);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
