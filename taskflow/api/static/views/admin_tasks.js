// Operator tasks: any user's tasks found by status, type and owner, and a
// bulk retry or cancel of what the filter matches. The page shows how many
// match and how many each action would take, asks to confirm naming that
// number, then acts; the server takes at most its cap per request and says
// when more are left. The filter is in the address: #/admin/tasks?status=failed.

import { ApiError } from "../api.js";
import { clear, h, shortId, statusBadge, timeElement, toast } from "../dom.js";
import { adminApi, operatorFrame, table, taskLink } from "./operator.js";

const ACTIONS = {
  retry: { path: "/api/admin/tasks/bulk-retry", count: "retryable", verb: "Retry", done: "Retried",
    what: "failed or cancelled" },
  cancel: { path: "/api/admin/tasks/bulk-cancel", count: "cancellable", verb: "Cancel", done: "Cancelled",
    what: "unfinished" },
};

export function renderOperatorTasks(main, schema, query) {
  const frame = operatorFrame(main, "Tasks of every user", "#/admin/tasks");
  const preset = new URLSearchParams(query || "");
  const status = h("select", { name: "status", id: "operator-status" },
    h("option", { value: "" }, "any status"), schema.statuses.map((s) => h("option", { value: s }, s)));
  const type = h("select", { name: "type", id: "operator-type" },
    h("option", { value: "" }, "any type"), schema.typeNames.map((t) => h("option", { value: t }, t)));
  const email = h("input", { name: "email", id: "operator-email", type: "email", placeholder: "any user",
    autocomplete: "off" });
  status.value = preset.get("status") || "";
  type.value = preset.get("type") || "";
  email.value = preset.get("email") || "";

  const filterForm = h("form", { class: "card", id: "operator-filter", "aria-labelledby": "operator-filter-title" },
    h("h2", { id: "operator-filter-title" }, "Find tasks"),
    h("div", { class: "row" },
      h("div", { class: "field" }, h("label", { class: "label", for: status.id }, "Status"), status),
      h("div", { class: "field" }, h("label", { class: "label", for: type.id }, "Type"), type),
      h("div", { class: "field" }, h("label", { class: "label", for: email.id }, "Owner's email"), email),
      h("div", { class: "field" }, h("button", { type: "submit", class: "primary" }, "Show"))));
  const count = h("p", { id: "bulk-count", role: "status" }, "Counting…");
  const reason = h("input", { name: "reason", id: "bulk-reason", maxlength: 1000,
    placeholder: "e.g. mail provider back up" });
  const result = h("p", { id: "bulk-result", role: "status" });
  const buttons = Object.fromEntries(Object.entries(ACTIONS).map(([name, action]) => [name,
    h("button", { type: "button", id: `bulk-${name}`, class: name === "cancel" ? "danger" : "primary",
      disabled: true, onclick: () => act(name) }, action.verb)]));
  const bulk = h("section", { class: "card", id: "bulk", "aria-labelledby": "bulk-title" },
    h("h2", { id: "bulk-title" }, "Act on every match"), count,
    h("div", { class: "row" },
      h("div", { class: "field grow" }, h("label", { class: "label", for: reason.id }, "Reason"), reason,
        h("span", { class: "hint" }, "optional: recorded in each task's history")),
      h("div", { class: "field" }, h("div", { class: "form-actions" }, buttons.retry, buttons.cancel))),
    result);
  const listed = h("div", { id: "operator-tasks" });
  const caption = h("p", { class: "muted", id: "operator-tasks-caption" });
  clear(frame.body, filterForm, bulk,
    h("section", { class: "card", "aria-labelledby": "operator-list-title" },
      h("h2", { id: "operator-list-title" }, "Newest matches"), caption, listed));

  let counts = null;
  let latest = 0;

  const filter = () => {
    const chosen = { status: status.value, type: type.value, email: email.value.trim() };
    return Object.fromEntries(Object.entries(chosen).filter(([, value]) => value));
  };
  const describe = (chosen) => {
    const parts = Object.entries(chosen).map(([key, value]) => `${key} ${value}`);
    return parts.length ? `with ${parts.join(", ")}` : "of every user, of any status and type";
  };

  async function load() {
    const mine = ++latest;
    const chosen = filter();
    const search = new URLSearchParams(chosen).toString();
    history.replaceState(null, "", `#/admin/tasks${search ? `?${search}` : ""}`);
    let answer;
    try {
      answer = await adminApi(frame, `/api/admin/tasks${search ? `?${search}` : ""}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (mine === latest) count.textContent = error.message;
      return;
    }
    if (answer === null || mine !== latest) return;
    counts = { ...answer, filter: chosen };
    // Counting stops at count_limit: a count that high means at least that many.
    const many = (n) => (n >= answer.count_limit ? `${n} or more` : String(n));
    count.textContent = `${many(answer.matching)} ${answer.matching === 1 ? "task matches" : "tasks match"} `
      + `(${describe(chosen)}): ${many(answer.retryable)} can be retried, `
      + `${many(answer.cancellable)} can be cancelled.`;
    for (const [name, action] of Object.entries(ACTIONS)) {
      const n = Math.min(answer[action.count], answer.bulk_max_tasks);
      const of = answer[action.count] > n ? ` of ${many(answer[action.count])}` : "";
      buttons[name].textContent = `${action.verb} ${n}${of}${n ? "…" : ""}`;
      buttons[name].disabled = n === 0;
      buttons[name].dataset.count = String(n);
    }
    caption.textContent = answer.tasks.length < answer.matching
      ? `The newest ${answer.tasks.length} of ${answer.matching}.` : "";
    clear(listed, table(["Task", "Owner", "Type", "Status", "Attempts", "Updated", "Last error"],
      answer.tasks.map((task) => h("tr", { dataset: { taskId: task.id, status: task.status } },
        h("td", {}, taskLink(task.id, shortId(task.id))), h("td", {}, task.email), h("td", {}, task.type),
        h("td", {}, statusBadge(task.status)), h("td", {}, `${task.attempts} / ${task.max_retries + 1}`),
        h("td", {}, timeElement(task.updated_at)),
        h("td", { class: "error-text" }, task.last_error || ""))),
      "No task matches.", { id: "operator-tasks-table" }));
  }

  async function act(name) {
    if (!counts) return;
    const action = ACTIONS[name];
    const total = counts[action.count];
    const n = Math.min(total, counts.bulk_max_tasks);
    const more = total > n ? `\n\nOnly ${n} are taken per request: run it again for the rest.` : "";
    if (!confirm(`${action.verb} ${n} ${action.what} ${n === 1 ? "task" : "tasks"} ${describe(counts.filter)}?${more}`)) return;
    const button = buttons[name];
    button.disabled = true;
    const body = { ...counts.filter, max_tasks: n };
    if (reason.value.trim()) body.reason = reason.value.trim();
    try {
      const done = await adminApi(frame, action.path, { method: "POST", json: body });
      if (done === null) return;
      const parts = [`${action.done} ${done.changed} ${done.changed === 1 ? "task" : "tasks"}.`];
      if (done.skipped) {
        parts.push(`${done.skipped} skipped: changed by someone else in the meantime.`);
      }
      if (done.more) parts.push(`More match: at most ${done.max_tasks} are taken per request, run it again.`);
      result.textContent = parts.join(" ");
      toast(parts[0]);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      result.textContent = error.message;
    }
    await load();
  }

  filterForm.addEventListener("submit", (event) => {
    event.preventDefault();
    result.textContent = "";
    load();
  });
  load();
  return () => { latest += 1; };
}
