// The frame of the operator pages: their own navigation, shown to admins
// only, and what anyone else sees instead of a tool (the API answers them
// 403, and the page says why).

import { api, ApiError, session } from "../api.js";
import { clear, h } from "../dom.js";

const PAGES = [
  ["#/admin", "Overview"],
  ["#/admin/tasks", "Tasks"],
  ["#/admin/types", "Task types"],
  ["#/admin/schedules", "Schedules"],
  ["#/admin/users", "Users"],
];

/**
 * Clears <main> for an operator page; returns {body, note, ...}: the page
 * goes in body, which stays hidden until the server has answered as to an
 * admin, so nobody else ever sees a tool, not even for a moment.
 */
export function operatorFrame(main, title, current) {
  const body = h("div", { class: "operator-body", hidden: true });
  const waiting = h("p", { class: "muted", id: "operator-waiting" }, "Loading…");
  const note = h("span", { class: "muted", id: "operator-note" });
  const nav = h("nav", { class: "subnav", id: "operator-nav", "aria-label": "Operator pages",
    hidden: !session.isAdmin },
  PAGES.map(([href, text]) => {
    // "page" on the page itself; "true" within its section (one task, within Tasks).
    const within = href !== "#/admin" && current.startsWith(`${href}/`);
    const mark = href === current ? "page" : within ? "true" : null;
    return h("a", { href, "aria-current": mark, class: mark ? "active" : null }, text);
  }));
  clear(main, nav, h("div", { class: "page-head" }, h("h1", {}, title), note), waiting, body);
  return { body, note, nav, waiting };
}

function reveal(frame) {
  frame.waiting.remove();
  frame.body.hidden = false;
}

export function showForbidden(frame) {
  frame.nav.hidden = true;
  clear(frame.body);
  frame.body.hidden = true;
  if (frame.body.parentNode.querySelector("#forbidden")) return;
  const notice = h("section", { class: "card notice", id: "forbidden" },
    h("h2", {}, "Operators only"),
    h("p", {}, "These pages are for accounts marked as admin in the database. ",
      "An operator can mark one with psql (see ops/README.md)."));
  // In place of "Loading…", or, when the admin mark was taken away while the
  // page was open, above what it showed.
  if (frame.waiting.isConnected) frame.waiting.replaceWith(notice);
  else frame.body.before(notice);
}

/**
 * api() for an operator page. A 403 (not an admin, or no longer) shows why
 * instead of the page and answers null; any other error is thrown.
 */
export async function adminApi(frame, path, options) {
  try {
    const answer = await api(path, options);
    reveal(frame);
    return answer;
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    if (error.status !== 403) {
      reveal(frame);
      throw error;
    }
    session.setAdmin(false);
    document.getElementById("nav-admin").hidden = true;
    showForbidden(frame);
    return null;
  }
}

/** A table: headings, rows of cells (each a node or text), and what to say when empty. */
export function table(headings, rows, empty, props = {}) {
  return h("table", props,
    h("thead", {}, h("tr", {}, headings.map((text) => h("th", { scope: "col" }, text)))),
    h("tbody", {}, rows.length
      ? rows.map((cells) => (cells instanceof Node ? cells
        : h("tr", {}, cells.map((cell) => h("td", {}, cell)))))
      : h("tr", { class: "empty" }, h("td", { colspan: headings.length }, empty))));
}

/** The link to an operator's page of any user's task. */
export function taskLink(id, text) {
  return h("a", { href: `#/admin/tasks/${id}`, class: "mono", title: id }, text || id);
}
