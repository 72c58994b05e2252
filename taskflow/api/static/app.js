// The dashboard: a hash router over a handful of views. Each view renders into
// <main> and returns a function that stops its streams and timers.

import { api, session, whenSignedOut } from "./api.js";
import { clear, h, toast } from "./dom.js";
import { renderAdmin } from "./views/admin.js";
import { renderSignIn } from "./views/auth.js";
import { renderFiles } from "./views/files.js";
import { renderTask } from "./views/task.js";
import { renderTasks } from "./views/tasks.js";

const main = document.getElementById("main");
let leaveView = () => {};
let afterSignIn = null;

const routes = [
  [/^#\/login$/, () => renderSignIn(main, { onSignedIn })],
  [/^#\/tasks$/, () => renderTasks(main)],
  [/^#\/tasks\/([0-9a-fA-F-]{36})$/, (match) => renderTask(main, match[1])],
  [/^#\/files$/, () => renderFiles(main)],
  [/^#\/admin$/, () => renderAdmin(main)],
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
  try {
    await api("/api/admin/overview");
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
