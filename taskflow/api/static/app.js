// The dashboard: a hash router over a handful of views. Each view renders into
// <main> and returns a function that stops its streams and timers.

import { api, session, whenSignedOut } from "./api.js";
import { clear, h, toast } from "./dom.js";
import { withSchema } from "./schema.js";
import { renderAdmin } from "./views/admin.js";
import { renderAllSchedules, renderUserShares } from "./views/admin_lists.js";
import { renderOperatorTask } from "./views/admin_task.js";
import { renderOperatorTasks } from "./views/admin_tasks.js";
import { renderTaskTypes } from "./views/admin_types.js";
import { renderSignIn } from "./views/auth.js";
import { renderFiles } from "./views/files.js";
import { renderLimits } from "./views/limits.js";
import { renderSchedules } from "./views/schedules.js";
import { renderTask } from "./views/task.js";
import { renderTasks } from "./views/tasks.js";

const main = document.getElementById("main");
let leaveView = () => {};
let afterSignIn = null;

const ID = "([0-9a-fA-F-]{36})";
// Views that need the API's description of itself (schema.js) get it first.
const described = (render) => (match) => withSchema(main, (schema) => render(schema, match));
const routes = [
  [/^#\/login$/, () => renderSignIn(main, { onSignedIn })],
  [/^#\/tasks$/, described((schema) => renderTasks(main, schema))],
  [new RegExp(`^#/tasks/${ID}$`), described((schema, match) => renderTask(main, match[1], schema))],
  [/^#\/schedules$/, described((schema) => renderSchedules(main, schema))],
  [/^#\/files$/, () => renderFiles(main)],
  [/^#\/limits$/, described((schema) => renderLimits(main, schema))],
  [/^#\/admin$/, () => renderAdmin(main)],
  [/^#\/admin\/tasks(?:\?(.*))?$/, described((schema, match) => renderOperatorTasks(main, schema, match[1]))],
  [new RegExp(`^#/admin/tasks/${ID}$`), (match) => renderOperatorTask(main, match[1])],
  [/^#\/admin\/types$/, () => renderTaskTypes(main)],
  [/^#\/admin\/schedules$/, () => renderAllSchedules(main)],
  [/^#\/admin\/users$/, () => renderUserShares(main)],
];

function route() {
  leaveView();
  leaveView = () => {};
  let hash = location.hash || "#/tasks";
  if (!session.token && hash !== "#/login") {
    afterSignIn = hash;  // a link to a task works once signed in
    location.replace("#/login");
    return;
  }
  if (session.token && hash === "#/login") {
    location.replace("#/tasks");
    return;
  }
  showSession();
  markCurrentLink(hash);
  for (const [pattern, render] of routes) {
    const match = hash.match(pattern);
    if (match) {
      leaveView = render(match) || (() => {});
      return;
    }
  }
  clear(main, h("section", { class: "card" }, h("h1", {}, "Not found"),
    h("p", {}, h("a", { href: "#/tasks" }, "Back to your tasks"))));
}

/** The nav link of the page shown: "page" when it is that very page, "true"
 * on a page within its section (one task, within Tasks). */
function markCurrentLink(hash) {
  document.querySelectorAll("#nav a").forEach((link) => {
    const href = link.getAttribute("href");
    const current = hash === href ? "page" : hash.startsWith(`${href}/`) ? "true" : null;
    link.classList.toggle("active", current !== null);
    if (current) link.setAttribute("aria-current", current);
    else link.removeAttribute("aria-current");
  });
}

function showSession() {
  const signedIn = Boolean(session.token);
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("session").hidden = !signedIn;
  document.getElementById("session-email").textContent = session.email;
  document.getElementById("nav-admin").hidden = !(signedIn && session.isAdmin);
}

async function onSignedIn() {
  // Admins see the operator link; anyone else gets a 403 here and no link.
  // (A light operator route: the task types and their queued counts.)
  try {
    await api("/api/admin/task-types");
    session.setAdmin(true);
  } catch {
    session.setAdmin(false);
  }
  location.hash = afterSignIn || "#/tasks";  // the hashchange renders it
  afterSignIn = null;
}

whenSignedOut((message) => {
  toast(message, "error");
  location.hash = "#/login";
});

document.getElementById("sign-out").addEventListener("click", () => {
  session.end();
  location.hash = "#/login";
});

window.addEventListener("hashchange", route);
route();
