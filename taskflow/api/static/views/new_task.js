// The "New task" form of the tasks page: one set of fields per task type,
// the API's validation messages next to the fields they are about.

import { api, ApiError } from "../api.js";
import { clear, h, shortId, toast } from "../dom.js";
import { clearErrors, field, formError, showErrors } from "./forms.js";

// Laid out on a four-column grid; "wide" fields take a whole row.
const FIELDS = {
  send_email: () => [
    field("To", h("input", { name: "to", type: "email", placeholder: "someone@example.com" })),
    field("Subject", h("input", { name: "subject" }), null, "span-2"),
    field("Attachments", h("input", { name: "attached_files", list: "my-files", placeholder: "report.pdf, photo.png" }),
      "your files' names, comma-separated"),
    field("Body (HTML)", h("textarea", { name: "body", rows: 2 }), null, "wide"),
  ],
  process_image: () => [
    field("Image", h("input", { name: "path", list: "my-files", placeholder: "photo.png" }), "one of your files"),
    field("Blur", h("input", { name: "blur", type: "number", step: "any" }), "radius, px"),
    field("Sharpen", h("input", { name: "sharpen", type: "number", step: "any" }), "strength, 1 = standard"),
    field("Gamma", h("input", { name: "gamma", type: "number", step: "any" }), "> 1 brightens"),
    field("Contrast", h("input", { name: "contrast", type: "number", step: "any" }), "-100 … 100 %"),
    field("Brightness", h("input", { name: "brightness", type: "number", step: "any" }), "-100 … 100 %"),
    field("Saturation", h("input", { name: "saturation", type: "number", step: "any" }), "-100 … 100 %"),
    h("div", { class: "checks" },
      h("label", { class: "check" }, h("input", { name: "grayscale", type: "checkbox" }), "Grayscale"),
      h("label", { class: "check" }, h("input", { name: "invert", type: "checkbox" }), "Invert")),
  ],
  download_files: () => [
    field("URLs", h("textarea", { name: "urls", rows: 2, placeholder: "https://example.com/a.png" }),
      "one per line, up to 20", "wide"),
  ],
};

export const TYPES = Object.keys(FIELDS);
const NUMBERS = ["blur", "sharpen", "gamma", "contrast", "brightness", "saturation"];

function payloadOf(type, form) {
  const text = (name) => form.elements[name].value.trim();
  if (type === "send_email") {
    const payload = { to: text("to") };
    if (text("subject")) payload.subject = text("subject");
    if (form.elements.body.value.trim()) payload.body = form.elements.body.value;
    const files = text("attached_files").split(",").map((s) => s.trim()).filter(Boolean);
    if (files.length) payload.attached_files = files;
    return payload;
  }
  if (type === "process_image") {
    const payload = { path: text("path") };
    for (const name of NUMBERS) {
      // Sent as typed: "abc" reaches the API, which says what is wrong with it.
      if (text(name) !== "") payload[name] = Number.isNaN(Number(text(name))) ? text(name) : Number(text(name));
    }
    if (form.elements.grayscale.checked) payload.grayscale = true;
    if (form.elements.invert.checked) payload.invert = true;
    return payload;
  }
  return { urls: form.elements.urls.value.split("\n").map((s) => s.trim()).filter(Boolean) };
}

/** "payload.urls.0" -> "urls"; "run_at" -> "run_at"; "payload" -> null (top). */
function formField(apiField) {
  const parts = apiField.split(".");
  if (parts[0] === "payload") return parts[1] || null;
  return ["max_retries", "run_at", "priority"].includes(parts[0]) ? parts[0] : null;
}

export function createForm(onCreated) {
  const typeSelect = h("select", { name: "type", id: "new-task-type" },
    TYPES.map((t) => h("option", { value: t }, t)));
  const legend = h("legend", { class: "visually-hidden" }, "What the task does");
  const payloadFields = h("fieldset", { class: "payload" });
  const files = h("datalist", { id: "my-files" });
  const form = h("form", { class: "card", id: "new-task", novalidate: true, "aria-labelledby": "new-task-title" },
    h("div", { class: "card-head" }, h("h2", { id: "new-task-title" }, "New task"),
      h("div", { class: "inline-field" }, h("label", { for: typeSelect.id }, "Type"), typeSelect)),
    formError("new-task-error"),
    payloadFields,
    h("details", { class: "options" }, h("summary", {}, "Options: retries, priority, run later"),
      h("div", { class: "row" },
        field("Max retries", h("input", { name: "max_retries", type: "number", min: 0, max: 10, placeholder: "3" })),
        field("Priority", h("input", { name: "priority", type: "number", min: -100, max: 100, placeholder: "0" })),
        field("Run at", h("input", { name: "run_at", type: "datetime-local", step: 1 }), "empty: now"))),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary" }, "Create task")),
    files);

  const showFields = () => clear(payloadFields, legend, FIELDS[typeSelect.value]());
  typeSelect.addEventListener("change", () => { clearErrors(form); showFields(); });
  showFields();
  // Suggestions for file names: the user's own files.
  api("/api/files").then((list) => clear(files, list.map((f) => h("option", { value: f.name })))).catch(() => {});

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const type = typeSelect.value;
    const body = { type, payload: payloadOf(type, form) };
    const number = (name) => form.elements[name].value.trim();
    if (number("max_retries") !== "") body.max_retries = Number(number("max_retries"));
    if (number("priority") !== "") body.priority = Number(number("priority"));
    if (form.elements.run_at.value) {
      const when = new Date(form.elements.run_at.value);
      body.run_at = Number.isNaN(when.getTime()) ? form.elements.run_at.value : when.toISOString();
    }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      const task = await api("/api/tasks", { method: "POST", json: body });
      toast(`Created ${task.type} task ${shortId(task.id)} (${task.status})`);
      // Ready for the next one of the same type.
      form.reset();
      typeSelect.value = type;
      showFields();
      onCreated(task);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      showErrors(form, error, formField);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
