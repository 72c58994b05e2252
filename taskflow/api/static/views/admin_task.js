// An operator's page of any user's task: its owner, details, last error,
// payload and result as JSON, the worker holding it, the tasks it waits for
// and that wait for it (each a link to its own operator page), and its
// history with who made each change.

import { ApiError } from "../api.js";
import { clear, h, statusBadge, timeElement, toast } from "../dom.js";
import { adminApi, operatorFrame } from "./operator.js";
import { definitions, dependencyLists, detailRows, historyItem } from "./task_parts.js";

const REFRESH_MS = 5000;

export function renderOperatorTask(main, taskId) {
  const frame = operatorFrame(main, "Task", `#/admin/tasks/${taskId}`);
  const header = h("div", { class: "card-head" });
  const details = h("dl", { class: "details" });
  const payload = h("pre", { class: "json", id: "operator-payload" });
  const result = h("pre", { class: "json", id: "operator-result" });
  const links = h("div", { class: "columns", id: "task-links" });
  const timeline = h("ol", { class: "timeline", id: "task-history" });
  clear(frame.body,
    h("p", {}, h("a", { href: "#/admin/tasks" }, "← Tasks of every user")),
    h("section", { class: "card", id: "operator-task" }, header, details),
    h("div", { class: "columns" },
      h("section", { class: "card" }, h("h2", {}, "Payload"), payload),
      h("section", { class: "card" }, h("h2", {}, "Result"), result)),
    h("section", { class: "card" }, h("h2", {}, "Dependencies"), links),
    h("section", { class: "card" }, h("h2", {}, "History"), timeline));
  let timer = null;
  let stopped = false;
  let latest = 0;

  async function load() {
    const mine = ++latest;
    clearTimeout(timer);
    let shown;
    try {
      shown = await adminApi(frame, `/api/admin/tasks/${taskId}`);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (stopped || mine !== latest) return;
      if (error.status === 404) {
        clear(frame.body, h("section", { class: "card" }, h("h2", {}, "No such task"),
          h("p", {}, "It was deleted (or pruned after the retention period). ",
            h("a", { href: "#/admin/tasks" }, "Find tasks"))));
      } else {
        toast(error.message, "error");
        timer = setTimeout(load, REFRESH_MS);
      }
      return;
    }
    if (stopped || shown === null || mine !== latest) return;
    const { task } = shown;
    frame.note.textContent = `refreshed every ${REFRESH_MS / 1000} s`;
    clear(header,
      h("h2", {}, h("span", { class: "type" }, task.type), " ", h("span", { class: "mono muted" }, task.id)),
      h("div", { class: "head-right" }, statusBadge(task.status),
        h("button", { type: "button", class: "small", onclick: () => load() }, "Refresh")));
    clear(details, definitions([
      ["Owner", h("span", { id: "operator-owner" }, `${shown.email} (user ${task.user_id})`)],
      ...detailRows(task),
      ["Worker", h("span", { class: "mono" }, shown.worker_id || "—")],
      ["Lease until", timeElement(shown.lease_expires_at)],
    ]));
    details.dataset.status = task.status;
    payload.textContent = JSON.stringify(task.payload, null, 2);
    result.textContent = task.result === null ? "No result." : JSON.stringify(task.result, null, 2);
    clear(links, dependencyLists(shown.links, (id) => `#/admin/tasks/${id}`));
    clear(timeline, shown.history.map(historyItem));
    timer = setTimeout(load, REFRESH_MS);
  }

  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
