// The API's validation answers shown where they belong: each {field, message}
// of a 400's "details" next to its input, anything else at the top of the form.
//
// For screen readers and keyboards too: a field in error says so
// (aria-invalid) and names its message as its description
// (aria-describedby), focus moves to the first field in error (or to the
// form's message when no one field is at fault), and the form's message is
// a live region (role="alert"), read out when it appears.

import { h } from "../dom.js";

let lastId = 0;

/** An id for an element the page builds, unique within the page. */
export function uniqueId(prefix) {
  lastId += 1;
  return `${prefix}-${lastId}`;
}

/**
 * The message at the top of a form: always in the page (an empty live region
 * that is added and filled at once may not be read out), empty when there is
 * nothing to say. tabindex -1: focus can be sent to it, Tab skips it.
 */
export function formError(id) {
  return h("p", { class: "form-error", id, role: "alert", tabindex: "-1", dataset: { errorFor: "(form)" } });
}

function slotOf(form, name) {
  return form.querySelector(`[data-error-for="${CSS.escape(name)}"]`);
}

function describedBy(input, ids) {
  const value = ids.filter(Boolean).join(" ");
  if (value) input.setAttribute("aria-describedby", value);
  else input.removeAttribute("aria-describedby");
}

export function clearErrors(form) {
  form.querySelectorAll("[data-error-for]").forEach((slot) => {
    slot.textContent = "";
    if (slot.dataset.errorFor !== "(form)") slot.hidden = true;
  });
  form.querySelectorAll('[aria-invalid="true"]').forEach((input) => {
    input.classList.remove("invalid");
    input.removeAttribute("aria-invalid");
    describedBy(input, [input.dataset.hintId]);
  });
}

/** The error slot of the field an input belongs to. */
function slotNear(input) {
  const holder = input.closest(".field");
  return holder ? holder.querySelector("[data-error-for]") : null;
}

/**
 * fieldName(apiField) maps "payload.to" or "urls.0" to the form's name for
 * it, or to the input itself (where two parts of a form may use one name),
 * or null: show it at the top.
 */
export function showErrors(form, error, fieldName) {
  const general = slotOf(form, "(form)");
  const placed = [];
  const unplaced = [];
  for (const detail of error.details) {
    const name = fieldName(String(detail.field || ""));
    const input = name instanceof Element ? name
      : name ? form.querySelector(`[name="${CSS.escape(name)}"]`) : null;
    const slot = name instanceof Element ? slotNear(name) : name ? slotOf(form, name) : null;
    if (slot && input) {
      slot.textContent = slot.textContent ? `${slot.textContent}; ${detail.message}` : detail.message;
      slot.hidden = false;
      slot.id = slot.id || uniqueId("error");
      input.classList.add("invalid");
      input.setAttribute("aria-invalid", "true");
      describedBy(input, [slot.id, input.dataset.hintId]);
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
  }
  // The first field in error in the form's order, else the message on top.
  const first = form.querySelector('[aria-invalid="true"]') || general;
  if (first) {
    const folded = first.closest("details");
    if (folded) folded.open = true;
    first.focus();
  }
}

/**
 * An input with its label, hint and error slot; className e.g. "wide" in a
 * grid. The label holds only the label's words: the hint and the error are
 * the input's description, not part of its name.
 */
export function field(label, input, hint, className = "") {
  input.id = input.id || uniqueId("field");
  let hintElement = null;
  if (hint) {
    hintElement = h("span", { class: "hint", id: uniqueId("hint") }, hint);
    input.dataset.hintId = hintElement.id;
    describedBy(input, [hintElement.id]);
  }
  return h("div", { class: `field ${className}`.trim() },
    h("label", { class: "label", for: input.id }, label), input, hintElement,
    h("span", { class: "field-error", dataset: { errorFor: input.name }, hidden: true }));
}
