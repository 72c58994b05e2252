// "My tasks": the create form, the filtered and paged table, live updates.
// The statuses and types of the filters, what each row says of its payload
// and which buttons it has all come from the API's description of itself
// (schema.js).
//
// A row shows the newest state of its task the page has seen, whether it
// came from a page of the list, an event of the stream or the answer to one
// of the row's buttons, and never goes back to an older one: the stream
// replays the moments before it opened (and repeats itself after a
// reconnect), and a page of the list may have been read before an event the
// page already applied. views/freshness.js says how two states are ordered.

import { api, ApiError, nextLink } from "../api.js";
import { clear, debounce, h, shortId, statusBadge, timeElement, toast } from "../dom.js";
import { LiveStream } from "../live.js";
import { eventFields, isNewer, stampOfEvent, stampOfTask } from "./freshness.js";
import { createForm } from "./new_task.js";

const PAGE_SIZE = 20;
// The newest states remembered for tasks, on the page or not; the oldest
// remembered are forgotten first. A forgotten task's row still has its own
// state to compare with.
const KNOWN_KEPT = 2000;

export function renderTasks(main, schema) {
  const state = {
    status: "", type: "",
    pages: [null],        // the URL of each page seen so far; null is the first
    page: 0,
    next: null,
    rows: new Map(),      // task id -> <tr>
  };
  // task id -> {stamp, fields}: the newest state seen of each task (events,
  // the buttons' answers), laid over a page of the list read before it.
  const known = new Map();
  const tbody = h("tbody");
  const summary = h("span", { class: "muted", id: "page-summary" });
  const newer = h("button", { type: "button", id: "page-newer", disabled: true, onclick: () => go(state.page - 1) }, "← Newer");
  const older = h("button", { type: "button", id: "page-older", disabled: true, onclick: () => go(state.page + 1) }, "Older →");
  const statusFilter = h("select", { id: "filter-status", "aria-label": "Status",
    onchange: () => { state.status = statusFilter.value; reset(); } },
    h("option", { value: "" }, "all statuses"), schema.statuses.map((s) => h("option", { value: s }, s)));
  const typeFilter = h("select", { id: "filter-type", "aria-label": "Type",
    onchange: () => { state.type = typeFilter.value; reset(); } },
    h("option", { value: "" }, "all types"), schema.typeNames.map((t) => h("option", { value: t }, t)));

  clear(main,
    h("h1", { class: "visually-hidden" }, "Tasks"),
    createForm(schema, () => { if (state.page === 0) reload(); }),
    h("section", { class: "card", "aria-labelledby": "my-tasks-title" },
      h("div", { class: "card-head" },
        h("h2", { id: "my-tasks-title" }, "My tasks"),
        h("div", { class: "filters" }, statusFilter, typeFilter,
          h("button", { type: "button", onclick: () => reload() }, "Refresh"))),
      h("table", { class: "tasks", id: "tasks-table" },
        h("thead", {}, h("tr", {},
          ["Task", "Type", "What", "Status", "Attempts", "Run at", "Updated"].map((t) => h("th", { scope: "col" }, t)),
          h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
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

  /** Remember a state of a task if it is the newest seen; says whether it was. */
  function remember(taskId, stamp, fields) {
    const previous = known.get(taskId);
    if (previous && !isNewer(stamp, previous.stamp)) return false;
    known.delete(taskId);  // to the end of the Map's order: forgotten last
    known.set(taskId, { stamp, fields });
    if (known.size > KNOWN_KEPT) known.delete(known.keys().next().value);
    return true;
  }

  /** Show a state of a task in its row, if it is newer than what the row shows. */
  function offer(row, stamp, fields) {
    if (!isNewer(stamp, stampOfTask(row.task))) return;
    Object.assign(row.task, fields);
    renderRow(row);
  }

  function onAction(row, changed) {
    if (changed === null) {
      row.remove();
      state.rows.delete(row.task.id);
    } else {
      // A history id the answer does not carry is not the row's any more.
      const fields = { history_id: null, ...changed };
      const stamp = stampOfTask(fields);
      remember(changed.id, stamp, fields);
      offer(row, stamp, fields);
    }
    // Then the page from the server, which may have moved on meanwhile.
    reloadSoon();
  }

  let latestReload = 0;

  async function reload() {
    // Only the newest answer is shown: an older one may predate a change
    // made since (a row deleted here must not come back).
    const mine = ++latestReload;
    const url = state.pages[state.page] || firstPageUrl();
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
    // Built, brought up to date and put on the page in one go: a row never
    // shows the page's older state, not even for a frame.
    const rows = tasks.map((task) => {
      const row = taskRow(task, schema, onAction);
      const newest = known.get(task.id);
      if (newest) offer(row, newest.stamp, newest.fields);
      state.rows.set(task.id, row);
      return row;
    });
    clear(tbody, rows.length ? rows : h("tr", { class: "empty" }, h("td", { colspan: 8 }, "No tasks here yet.")));
    newer.disabled = state.page === 0;
    older.disabled = !state.next;
    summary.textContent = `Page ${state.page + 1}`;
  }

  // New tasks show up on the first page; changes update their row in place.
  const reloadSoon = debounce(reload, 250);
  const stream = new LiveStream("/api/events", {
    onEvent(event) {
      const stamp = stampOfEvent(event);
      const fields = eventFields(event);
      if (!remember(event.task_id, stamp, fields)) return;
      const row = state.rows.get(event.task_id);
      if (row) offer(row, stamp, fields);
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

/** One row of the table; onAction(row, task or null) after one of its buttons. */
export function taskRow(task, schema, onAction) {
  const row = h("tr", { dataset: { taskId: task.id, status: task.status } },
    h("td", {}, h("a", { href: `#/tasks/${task.id}`, class: "mono", title: task.id }, shortId(task.id))),
    h("td", { class: "type" }, task.type),
    h("td", { class: "what", title: summary(task, schema) }, summary(task, schema)),
    h("td", { class: "status" }),
    h("td", { class: "attempts" }),
    h("td", { class: "run-at" }, timeElement(task.run_at)),
    h("td", { class: "updated" }),
    h("td", { class: "actions" }));
  row.task = { ...task };
  row.schema = schema;
  row.onAction = onAction;
  renderRow(row);
  return row;
}

/** One payload value in a few words: a list as its first item and how many more. */
function brief(field, value) {
  if (Array.isArray(value)) return value.length > 1 ? `${value[0]} +${value.length - 1}` : String(value[0] ?? "");
  if (typeof value === "string") return value;
  return `${field.name} ${JSON.stringify(value)}`;
}

/**
 * A few words on what the task does, from its payload as its type's fields
 * describe it: the required fields, then the first optional text given.
 */
export function summary(task, schema) {
  const payload = task.payload || {};
  const type = schema.types.get(task.type);
  const given = (field) => payload[field.name] !== undefined && payload[field.name] !== null
    && payload[field.name] !== "";
  const fields = type ? type.fields.filter(given) : [];
  const parts = fields.filter((field) => field.required).map((field) => brief(field, payload[field.name]));
  const text = fields.find((field) => !field.required && typeof payload[field.name] === "string");
  if (text) parts.push(payload[text.name]);
  if (!parts.length && fields.length) parts.push(brief(fields[0], payload[fields[0].name]));
  return parts.join(" — ");
}

function renderRow(row) {
  const task = row.task;
  row.dataset.status = task.status;
  clear(row.querySelector(".status"), statusBadge(task.status));
  row.querySelector(".attempts").textContent = `${task.attempts} / ${task.max_retries + 1}`;
  clear(row.querySelector(".updated"), timeElement(task.updated_at));
  clear(row.querySelector(".actions"), actionButtons(task, row.schema, (changed) => row.onAction(row, changed)));
}

/** Cancel / Retry / Delete, as the server says the task's status allows. done(task or null). */
export function actionButtons(task, schema, done) {
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
  const label = `task ${shortId(task.id)}`;
  const buttons = [];
  if (schema.cancellable.has(task.status)) {
    const button = h("button", { type: "button", class: "small", dataset: { action: "cancel" },
      "aria-label": `Cancel ${label}`,
      onclick: () => act(button, "POST", `/api/tasks/${task.id}/cancel`, "Task cancelled") }, "Cancel");
    buttons.push(button);
  }
  if (schema.retryable.has(task.status)) {
    const button = h("button", { type: "button", class: "small", dataset: { action: "retry" },
      "aria-label": `Retry ${label}`,
      onclick: () => act(button, "POST", `/api/tasks/${task.id}/retry`, "Task queued again") }, "Retry");
    buttons.push(button);
  }
  if (schema.finished.has(task.status)) {
    const button = h("button", { type: "button", class: "small danger", dataset: { action: "delete" },
      "aria-label": `Delete ${label}`,
      onclick: () => {
        if (confirm("Delete this task and its history?")) {
          act(button, "DELETE", `/api/tasks/${task.id}`, "Task deleted");
        }
      } }, "Delete");
    buttons.push(button);
  }
  return buttons;
}
