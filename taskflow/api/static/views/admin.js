// The operator overview: queue depth, throughput of the last hour on a
// scale, workers, stuck and recently failed tasks (each a link to its
// operator page). Admins only (the API answers 403 to others).

import { ApiError } from "../api.js";
import { clear, h, shortId, statusBadge, timeElement } from "../dom.js";
import { throughputChart } from "./chart.js";
import { adminApi, operatorFrame, table, taskLink } from "./operator.js";

const REFRESH_MS = 5000;

export function renderAdmin(main) {
  const frame = operatorFrame(main, "Operator overview", "#/admin");
  frame.body.id = "overview";
  let timer = null;
  let stopped = false;

  async function refresh() {
    let overview;
    try {
      overview = await adminApi(frame, "/api/admin/overview");
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (stopped) return;
      clear(frame.body, h("p", { class: "form-error" }, error.message));
      timer = setTimeout(refresh, REFRESH_MS);
      return;
    }
    if (stopped || overview === null) return;
    render(frame.body, overview);
    frame.note.textContent =
      `as of ${new Date(overview.generated_at).toLocaleTimeString()}, refreshed every ${REFRESH_MS / 1000} s`;
    timer = setTimeout(refresh, REFRESH_MS);
  }

  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function render(body, overview) {
  const { buckets } = overview.throughput;
  const completed = buckets.reduce((sum, b) => sum + b.completed, 0);
  const failed = buckets.reduce((sum, b) => sum + b.failed, 0);
  const retried = buckets.reduce((sum, b) => sum + b.retried, 0);
  clear(body,
    h("section", { class: "card" }, h("h2", {}, "Queue depth"),
      // Every status the server counts, in its order: a new one shows up by itself.
      h("div", { class: "tiles", id: "queue-depth" }, Object.entries(overview.queue).map(([status, count]) =>
        h("a", { class: "tile", href: `#/admin/tasks?status=${encodeURIComponent(status)}`, dataset: { status },
          title: `Find the ${status} tasks` },
        h("div", { class: "number" }, String(count)), statusBadge(status))))),
    h("div", { class: "columns" },
      h("section", { class: "card", id: "throughput" }, h("h2", {}, "Throughput, last hour"),
        throughputChart(buckets, overview.throughput.bucket_seconds),
        h("p", { class: "legend" },
          h("span", { class: "key done" }), ` ${completed} completed · `,
          h("span", { class: "key failed" }), ` ${failed} failed · ${retried} retried`,
          h("span", { class: "muted" }, " in the last hour"))),
      h("section", { class: "card", id: "workers" },
        h("h2", {}, "Workers ", h("span", { class: "pill", id: "workers-alive" }, `${overview.workers.alive} alive`)),
        table(["Worker", "State", "Running", "Slots", "Last heartbeat"], overview.workers.items.map((w) => [
          h("span", { class: "mono", title: `${w.hostname} pid ${w.pid}` }, w.id),
          h("span", { class: `state state-${w.state}` }, w.state),
          String(w.running_tasks), String(w.concurrency), timeElement(w.last_heartbeat_at)]),
        "No workers registered."))),
    h("section", { class: "card", id: "stuck" },
      h("h2", {}, "Stuck ", h("span", { class: "pill" }, String(overview.stuck.total))),
      h("p", { class: "muted" }, "Processing past their lease: their worker is gone. The scheduler rescues them each tick."),
      table(["Task", "Type", "User", "Worker", "Attempts", "Lease expired"], overview.stuck.items.map((t) => [
        taskLink(t.id, shortId(t.id)), t.type, String(t.user_id),
        h("span", { class: "mono" }, t.worker_id || ""), `${t.attempts} / ${t.max_retries + 1}`,
        timeElement(t.lease_expires_at)]), "Nothing is stuck.")),
    h("section", { class: "card", id: "failures" },
      h("div", { class: "card-head" },
        h("h2", {}, "Recently failed ", h("span", { class: "pill" }, String(overview.recent_failures.total))),
        h("a", { href: "#/admin/tasks?status=failed", id: "failures-bulk" }, "All failed tasks, to retry in bulk")),
      table(["Task", "Type", "User", "Status", "When", "Attempts", "Last error"],
        overview.recent_failures.items.map((t) => [
          taskLink(t.id, shortId(t.id)), t.type, String(t.user_id),
          statusBadge(t.status), timeElement(t.failed_at), `${t.attempts} / ${t.max_retries + 1}`,
          h("span", { class: "error-text" }, t.last_error || "")]),
        "No failures in the last 24 hours.")));
}
