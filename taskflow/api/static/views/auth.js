// Sign in and register: two small forms. A new account is signed in at once.

import { api, ApiError, session } from "../api.js";
import { clear, h } from "../dom.js";
import { clearErrors, field, formError, showErrors } from "./forms.js";

export function renderSignIn(main, { onSignedIn }) {
  const signIn = credentialsForm("sign-in", "Sign in", "current-password", async (email, password) => {
    await logIn(email, password);
  });
  const register = credentialsForm("register", "Create an account", "new-password", async (email, password) => {
    await api("/api/register", { method: "POST", json: { email, password } });
    await logIn(email, password);
  });

  async function logIn(email, password) {
    const answer = await api("/api/login", { method: "POST", json: { email, password } });
    session.start(answer.access_token, email);
    await onSignedIn();
  }

  clear(main, h("section", { class: "auth" },
    h("div", { class: "auth-intro" },
      h("h1", {}, "TaskFlow"),
      h("p", { class: "muted" },
        "Queue e-mails, image processing and downloads, and watch them run live.")),
    signIn, register));
  return () => {};
}

function credentialsForm(id, title, autocomplete, submit) {
  const heading = h("h2", { id: `${id}-title` }, title);
  const form = h("form", { class: "card auth-form", id, novalidate: true, "aria-labelledby": heading.id },
    heading,
    formError(`${id}-error`),
    field("E-mail", h("input", { name: "email", type: "email", autocomplete: "username", required: true })),
    field("Password", h("input", { name: "password", type: "password", autocomplete, required: true })),
    h("button", { type: "submit", class: "primary" }, title));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      await submit(form.email.value.trim(), form.password.value);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      showErrors(form, error, (field) => field);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
