// What a user's task page and an operator's task page both show: a task's
// details, its history as a timeline, and the tasks it waits for and that
// wait for it, as links.

import { h, shortId, statusBadge, timeElement } from "../dom.js";

/** The task's fields as a definition list's rows. */
export function detailRows(task) {
  const rows = [
    ["Status", statusBadge(task.status)],
    ["Attempts", `${task.attempts} of ${task.max_retries + 1} (retries done: ${task.retries})`],
    ["Priority", String(task.priority)],
    ["Run at", timeElement(task.run_at)],
    ["Created", timeElement(task.created_at)],
    ["Updated", timeElement(task.updated_at)],
    ["Started", timeElement(task.started_at)],
    ["Finished", timeElement(task.finished_at)],
  ];
  if (task.last_error) rows.push(["Last error", h("span", { class: "error-text" }, task.last_error)]);
  return rows;
}

export function definitions(rows) {
  return rows.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]);
}

export function historyItem(entry) {
  return h("li", { dataset: { event: entry.event, to: entry.to_status } },
    h("div", { class: "when" }, timeElement(entry.at)),
    h("div", { class: "what" },
      h("strong", {}, entry.event), " ",
      entry.from_status ? [statusBadge(entry.from_status), " → "] : null,
      statusBadge(entry.to_status),
      h("span", { class: "muted" }, ` attempt ${entry.attempt}`,
        entry.worker_id ? ` · ${entry.worker_id}` : "", entry.actor ? ` · ${entry.actor}` : ""),
      entry.error ? h("div", { class: "error-text" }, entry.error) : null));
}

function linkList(id, title, linked, hrefOf, empty) {
  return h("div", { class: "links", id },
    h("h3", {}, title),
    linked.tasks.length
      ? h("ul", {}, linked.tasks.map((task) => h("li", { dataset: { taskId: task.id, status: task.status } },
        h("a", { href: hrefOf(task.id), class: "mono", title: task.id }, shortId(task.id)), " ",
        h("span", { class: "type" }, task.type), " ", statusBadge(task.status))),
      linked.more ? h("li", { class: "muted" }, "and more") : null)
      : h("p", { class: "muted" }, empty));
}

/** The "links" answer of a task (its dependencies and dependents) as two lists. */
export function dependencyLists(links, hrefOf) {
  return [
    linkList("task-dependencies", "Waits for", links.dependencies, hrefOf, "No dependencies."),
    linkList("task-dependents", "Waited for by", links.dependents, hrefOf, "Nothing waits for this task."),
  ];
}
