// Two operator lists read from the psql views, so the dashboard and psql
// agree: every user's schedules (taskflow_schedules) and each user's share
// of the workers with their caps (taskflow_user_shares).

import { ApiError } from "../api.js";
import { clear, h, shortId, statusBadge, timeElement, toast } from "../dom.js";
import { adminApi, operatorFrame, table, taskLink } from "./operator.js";

const REFRESH_MS = 5000;

/** An operator page that shows one list, reloaded every few seconds. */
function listPage(main, title, current, path, render) {
  const frame = operatorFrame(main, title, current);
  let timer = null;
  let stopped = false;

  async function load() {
    let answer;
    try {
      answer = await adminApi(frame, path);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      toast(error.message, "error");
      timer = setTimeout(load, REFRESH_MS);
      return;
    }
    if (answer === null || stopped) return;
    frame.note.textContent = `refreshed every ${REFRESH_MS / 1000} s`;
    clear(frame.body, render(answer));
    timer = setTimeout(load, REFRESH_MS);
  }

  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** "The first 500 of 812 schedules." or "1 schedule." */
function shownOf(total, shown, [one, many]) {
  const noun = total === 1 ? one : many;
  return h("p", { class: "muted" }, total > shown ? `The first ${shown} of ${total} ${noun}.` : `${total} ${noun}.`);
}

export function renderAllSchedules(main) {
  return listPage(main, "Schedules of every user", "#/admin/schedules", "/api/admin/schedules", (answer) =>
    h("section", { class: "card", "aria-labelledby": "all-schedules-title" },
      h("h2", { id: "all-schedules-title" }, "All schedules"),
      shownOf(answer.total, answer.schedules.length, ["schedule", "schedules"]),
      table(["Owner", "Name", "Type", "Cron", "State", "Next slot", "Last slot", "Last task"],
        answer.schedules.map((s) => h("tr", { dataset: { scheduleId: s.id, state: s.state } },
          h("td", {}, s.email), h("td", {}, s.name), h("td", {}, s.type),
          h("td", {}, h("span", { class: "mono" }, s.cron), h("span", { class: "muted" }, ` ${s.timezone}`)),
          h("td", {}, h("span", { class: `badge schedule-${s.state}` }, s.state)),
          h("td", {}, timeElement(s.next_slot)), h("td", {}, timeElement(s.last_slot)),
          h("td", {}, s.last_task_id
            ? [taskLink(s.last_task_id, shortId(s.last_task_id)), " ",
              s.last_task_status ? statusBadge(s.last_task_status) : h("span", { class: "muted" }, "deleted")]
            : ""))),
        "No schedules.", { id: "all-schedules" })));
}

function percent(share) {
  if (share === null) return h("span", { class: "muted" }, "—");
  const value = Math.round(share * 100);
  return h("span", { class: "share" },
    h("meter", { min: 0, max: 100, value, "aria-label": `${value}% of running tasks` }), ` ${value}%`);
}

const cap = (value) => (value === null ? h("span", { class: "muted" }, "none") : String(value));

export function renderUserShares(main) {
  return listPage(main, "Users' shares and limits", "#/admin/users", "/api/admin/user-shares", (answer) =>
    h("section", { class: "card", "aria-labelledby": "user-shares-title" },
      h("h2", { id: "user-shares-title" }, "Who gets the worker slots"),
      h("p", { class: "muted" }, "Each user with unfinished tasks. Free slots go round-robin among users "
        + "with due tasks, each taking its weight at every turn; a cap holds a user's queued tasks back."),
      shownOf(answer.total, answer.users.length, ["user with unfinished tasks", "users with unfinished tasks"]),
      table(["User", "Weight", "Running", "On their way", "Queued", "Unfinished", "Share of running",
        "Max running", "Emails / min", "Held by"],
      answer.users.map((u) => h("tr", { dataset: { userId: String(u.user_id) } },
        h("td", {}, u.email), h("td", {}, String(u.weight)), h("td", {}, String(u.running)),
        h("td", {}, String(u.dispatched)), h("td", {}, String(u.queued)), h("td", {}, String(u.unfinished)),
        h("td", {}, percent(u.running_share)), h("td", {}, cap(u.max_running)),
        h("td", {}, u.email_per_minute === null ? cap(null) : `${u.emails_last_minute} of ${u.email_per_minute}`),
        h("td", {}, u.held_by ? h("span", { class: "mono" }, u.held_by) : ""))),
      "No user has unfinished tasks.", { id: "user-shares" })));
}
