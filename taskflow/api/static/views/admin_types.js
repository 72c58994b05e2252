// Task types, paused and resumed by an operator (as `taskflow pause TYPE`
// and taskflow_pause_type() in psql): a paused type's queued tasks stay
// queued and no worker claims them until it is resumed.

import { ApiError } from "../api.js";
import { clear, h, timeElement, toast } from "../dom.js";
import { adminApi, operatorFrame, table } from "./operator.js";

export function renderTaskTypes(main) {
  const frame = operatorFrame(main, "Task types", "#/admin/types");
  const reason = h("input", { name: "reason", id: "pause-reason", maxlength: 1000,
    placeholder: "e.g. mail provider down" });
  const listed = h("div", { id: "task-types" });
  clear(frame.body,
    h("section", { class: "card", "aria-labelledby": "types-title" },
      h("div", { class: "card-head" }, h("h2", { id: "types-title" }, "Pause or resume a task type"),
        h("button", { type: "button", id: "task-types-refresh", onclick: () => load() }, "Refresh")),
      h("p", { class: "muted" }, "A paused type's queued tasks wait, unclaimed, until it is resumed; "
        + "other types run as usual. Tasks already running finish."),
      h("div", { class: "field narrow" }, h("label", { class: "label", for: reason.id }, "Reason for a pause"),
        reason, h("span", { class: "hint" }, "optional: recorded with the pause")),
      listed));
  let stopped = false;

  async function load() {
    let answer;
    try {
      answer = await adminApi(frame, "/api/admin/task-types");
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      toast(error.message, "error");
      return;
    }
    if (answer === null || stopped) return;
    clear(listed, table(["Type", "State", "Queued", "Paused by", "Since", "Reason", "Action"],
      answer.types.map((type) => h("tr", { dataset: { type: type.name, paused: String(type.paused) } },
        h("td", { class: "mono" }, type.name, type.registered ? "" : h("span", { class: "muted" }, " (not registered)")),
        h("td", {}, h("span", { class: `badge ${type.paused ? "status-failed" : "status-done"}` },
          type.paused ? "paused" : "running")),
        h("td", {}, String(type.queued)),
        h("td", {}, type.paused_by || ""),
        h("td", {}, timeElement(type.paused_at)),
        h("td", {}, type.reason || ""),
        h("td", { class: "actions" }, toggle(type)))),
      "No task types.", { id: "task-types-table" }));
  }

  function toggle(type) {
    const action = type.paused ? "resume" : "pause";
    const button = h("button", { type: "button", class: type.paused ? "small primary" : "small danger",
      dataset: { action }, "aria-label": `${type.paused ? "Resume" : "Pause"} ${type.name}`,
      onclick: async () => {
        button.disabled = true;
        const body = action === "pause" && reason.value.trim() ? { reason: reason.value.trim() } : {};
        try {
          const changed = await adminApi(frame, `/api/admin/task-types/${encodeURIComponent(type.name)}/${action}`,
            { method: "POST", json: body });
          if (changed === null) return;
          toast(changed.changed ? `${type.name} ${action === "pause" ? "paused" : "resumed"}`
            : `${type.name} was ${action === "pause" ? "paused" : "running"} already`);
        } catch (error) {
          if (!(error instanceof ApiError)) throw error;
          toast(error.message, "error");
        }
        await load();
      } }, type.paused ? "Resume" : "Pause");
    return button;
  }

  load();
  return () => { stopped = true; };
}
