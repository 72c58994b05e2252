// The API's validation answers shown where they belong: each {field, message}
// of a 400's "details" next to its input, anything else at the top of the form.

import { h } from "../dom.js";

export function clearErrors(form) {
  form.querySelectorAll("[data-error-for]").forEach((slot) => {
    slot.hidden = true;
    slot.textContent = "";
  });
  form.querySelectorAll(".invalid").forEach((input) => input.classList.remove("invalid"));
}

/**
 * fieldName(apiField) maps "payload.to" or "urls.0" to the form's name for it
 * (or null: show it at the top).
 */
export function showErrors(form, error, fieldName) {
  const general = form.querySelector('[data-error-for="(form)"]');
  const placed = [];
  const unplaced = [];
  for (const detail of error.details) {
    const name = fieldName(String(detail.field || ""));
    const slot = name ? form.querySelector(`[data-error-for="${CSS.escape(name)}"]`) : null;
    if (slot) {
      slot.textContent = slot.textContent ? `${slot.textContent}; ${detail.message}` : detail.message;
      slot.hidden = false;
      const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
      if (input) input.classList.add("invalid");
      placed.push(detail);
    } else {
      unplaced.push(detail.field && detail.field !== "(body)"
        ? `${detail.field}: ${detail.message}` : detail.message);
    }
  }
  if (general) {
    const lines = placed.length && !unplaced.length ? [error.message] : [error.message, ...unplaced];
    general.replaceChildren(...lines.map((line, index) =>
      index ? h("span", { class: "detail" }, line) : h("strong", {}, line)));
    general.hidden = false;
  }
}

/** A labelled input with its error slot; className e.g. "wide" in a grid. */
export function field(label, input, hint, className = "") {
  return h("label", { class: `field ${className}`.trim() }, h("span", { class: "label" }, label), input,
    hint ? h("span", { class: "hint" }, hint) : null,
    h("span", { class: "field-error", dataset: { errorFor: input.name }, hidden: true }));
}
