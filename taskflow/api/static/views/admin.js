// The operator overview: queue depth, throughput of the last hour, workers,
// stuck and recently failed tasks. Admins only (the API answers 403 to others).

import { api, ApiError } from "../api.js";
import { clear, h, shortId, statusBadge, timeElement } from "../dom.js";

const REFRESH_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";

export function renderAdmin(main) {
  const body = h("div", { id: "overview" }, h("p", { class: "muted" }, "Loading…"));
  clear(main, h("div", { class: "page-head" }, h("h1", {}, "Operator overview"),
    h("span", { class: "muted", id: "overview-time" })), body);
  let timer = null;
  let stopped = false;

  async function refresh() {
    try {
      const overview = await api("/api/admin/overview");
      if (stopped) return;
      render(body, overview);
      document.getElementById("overview-time").textContent =
        `as of ${new Date(overview.generated_at).toLocaleTimeString()}, refreshed every ${REFRESH_MS / 1000} s`;
      timer = setTimeout(refresh, REFRESH_MS);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (stopped) return;
      if (error.status === 403) {
        clear(body, h("section", { class: "card notice", id: "forbidden" },
          h("h2", {}, "Operators only"),
          h("p", {}, "This overview is for accounts marked as admin in the database. ",
            "An operator can mark one with psql (see ops/README.md).")));
      } else {
        clear(body, h("p", { class: "form-error" }, error.message));
        timer = setTimeout(refresh, REFRESH_MS);
      }
    }
  }

  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function render(body, overview) {
  const buckets = overview.throughput.buckets;
  const completed = buckets.reduce((sum, b) => sum + b.completed, 0);
  const failed = buckets.reduce((sum, b) => sum + b.failed, 0);
  const retried = buckets.reduce((sum, b) => sum + b.retried, 0);
  clear(body,
    h("section", { class: "card" }, h("h2", {}, "Queue depth"),
      // Every status the server counts, in its order: a new one shows up by itself.
      h("div", { class: "tiles", id: "queue-depth" }, Object.entries(overview.queue).map(([status, count]) =>
        h("div", { class: "tile", dataset: { status } },
          h("div", { class: "number" }, String(count)), statusBadge(status))))),
    h("div", { class: "columns" },
      h("section", { class: "card", id: "throughput" }, h("h2", {}, "Throughput, last hour"),
        sparkline(buckets),
        h("div", { class: "axis-labels muted" }, h("span", {}, "60 min ago"), h("span", {}, "now")),
        h("p", { class: "legend" },
          h("span", { class: "key done" }), ` ${completed} completed · `,
          h("span", { class: "key failed" }), ` ${failed} failed · ${retried} retried`,
          h("span", { class: "muted" }, " (per minute)"))),
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
        h("span", { class: "mono", title: t.id }, shortId(t.id)), t.type, String(t.user_id),
        h("span", { class: "mono" }, t.worker_id || ""), `${t.attempts} / ${t.max_retries + 1}`,
        timeElement(t.lease_expires_at)]), "Nothing is stuck.")),
    h("section", { class: "card", id: "failures" },
      h("h2", {}, "Recently failed ", h("span", { class: "pill" }, String(overview.recent_failures.total))),
      table(["Task", "Type", "User", "Status", "When", "Attempts", "Last error"],
        overview.recent_failures.items.map((t) => [
          h("span", { class: "mono", title: t.id }, shortId(t.id)), t.type, String(t.user_id),
          statusBadge(t.status), timeElement(t.failed_at), `${t.attempts} / ${t.max_retries + 1}`,
          h("span", { class: "error-text" }, t.last_error || "")]),
        "No failures in the last 24 hours.")));
}

function table(headings, rows, empty) {
  return h("table", {},
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.length
      ? rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))
      : h("tr", { class: "empty" }, h("td", { colspan: headings.length }, empty))));
}

function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  element.append(...children);
  return element;
}

/** One point a minute: completed as a line over an area, failed as red bars. */
function sparkline(buckets) {
  const width = 600;
  const height = 90;
  const top = Math.max(1, ...buckets.map((b) => b.completed + b.failed));
  const step = buckets.length > 1 ? width / (buckets.length - 1) : width;
  const y = (value) => height - 4 - (value / top) * (height - 12);
  const points = buckets.map((b, i) => `${(i * step).toFixed(1)},${y(b.completed).toFixed(1)}`);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "sparkline", id: "sparkline",
    role: "img", "aria-label": "tasks completed per minute over the last hour", preserveAspectRatio: "none" });
  chart.append(svg("line", { x1: 0, y1: height - 4, x2: width, y2: height - 4, class: "axis" }));
  if (points.length) {
    chart.append(svg("polygon", { points: `0,${height - 4} ${points.join(" ")} ${width},${height - 4}`, class: "area" }));
    chart.append(svg("polyline", { points: points.join(" "), class: "line" }));
  }
  buckets.forEach((b, i) => {
    if (b.failed) {
      const barTop = y(b.failed);
      chart.append(svg("rect", { x: Math.max(0, i * step - 2), y: barTop, width: 4,
        height: height - 4 - barTop, class: "failed" }));
    }
    const title = svg("title");
    title.textContent = `${new Date(b.at).toLocaleTimeString()}: ${b.completed} completed, ${b.failed} failed, ${b.retried} retried`;
    chart.append(svg("circle", { cx: i * step, cy: y(b.completed), r: b.completed ? 2.5 : 0, class: "dot" }, title));
  });
  return chart;
}
