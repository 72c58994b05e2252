// "My limits": each of the user's limits (SPEC §8) and how much of it they
// use now, from GET /api/limits; what each limit means is the API
// document's description of it, so a limit added later shows up explained.

import { api, ApiError } from "../api.js";
import { clear, formatBytes, h, toast } from "../dom.js";

export function renderLimits(main, schema) {
  const described = schema.model("Limits").properties || {};
  const weight = h("p", { id: "my-weight" });
  const tbody = h("tbody");
  clear(main, h("h1", { class: "visually-hidden" }, "Limits"),
    h("section", { class: "card", "aria-labelledby": "my-limits-title" },
      h("div", { class: "card-head" }, h("h2", { id: "my-limits-title" }, "My limits"),
        h("button", { type: "button", onclick: () => load() }, "Refresh")),
      weight,
      h("table", { id: "limits-table" },
        h("thead", {}, h("tr", {}, ["Limit", "What it limits", "Used", "Allowed", "Remaining", "Use"].map((text) =>
          h("th", { scope: "col" }, text)))),
        tbody)));

  async function load() {
    let answer;
    try {
      answer = await api("/api/limits");
    } catch (error) {
      if (error instanceof ApiError) toast(error.message, "error");
      return;
    }
    weight.textContent = `Your fair share weight is ${answer.weight}: when users compete for free `
      + `worker slots, you take ${answer.weight} ${answer.weight === 1 ? "task" : "tasks"} at each turn.`;
    clear(tbody, Object.entries(answer.limits).map(([key, use]) => {
      // Sizes are named in bytes (user_files_max_bytes): shown as KiB, MiB, GiB.
      const amount = (value) => (value === null ? "no limit" : key.endsWith("_bytes") ? formatBytes(value) : String(value));
      const share = use.limit ? Math.min(100, Math.round((use.used / use.limit) * 100)) : null;
      return h("tr", { dataset: { limit: key } },
        h("td", { class: "mono" }, key),
        h("td", { class: "muted" }, (described[key] && described[key].description) || ""),
        h("td", { class: "used" }, amount(use.used)),
        h("td", { class: "allowed" }, amount(use.limit)),
        h("td", { class: "remaining" }, use.remaining === null ? "—" : amount(use.remaining)),
        h("td", {}, share === null ? "" : h("meter", { min: 0, max: 100, value: share, low: 70, high: 90,
          optimum: 0, "aria-label": `${key}: ${share}% used` })));
    }));
  }

  load();
  return () => {};
}
