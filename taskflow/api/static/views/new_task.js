// The "New task" form of the tasks page: the payload fields of the type
// chosen, and the options of a new task, all as the API's document describes
// them (schema.js); the API's validation messages next to the fields they
// are about.

import { api, ApiError } from "../api.js";
import { h, shortId, toast } from "../dom.js";
import { clearErrors, formError, showErrors } from "./forms.js";
import { fieldInputs, localProblems, payloadPicker, readFields } from "./payload_form.js";

export function createForm(schema, onCreated) {
  const picker = payloadPicker(schema, { id: "new-task-type", onChange: () => clearErrors(form) });
  const options = h("fieldset", { class: "grid" },
    h("legend", { class: "visually-hidden" }, "Options"), fieldInputs(schema.taskOptions));
  const form = h("form", { class: "card", id: "new-task", novalidate: true, "aria-labelledby": "new-task-title" },
    h("div", { class: "card-head" }, h("h2", { id: "new-task-title" }, "New task"),
      h("div", { class: "inline-field" }, h("label", { for: picker.typeSelect.id }, "Type"), picker.typeSelect)),
    formError("new-task-error"),
    picker.fieldset,
    h("details", { class: "options" },
      h("summary", {}, `Options: ${schema.taskOptions.map((field) => field.label.toLowerCase()).join(", ")}`),
      options),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary" }, "Create task")));

  /** "payload.urls.0" -> the payload's urls input; "run_at" -> the option's; else null (top). */
  const inputFor = (apiField) => picker.inputFor(apiField)
    || options.querySelector(`[name="${CSS.escape(apiField.split(".")[0])}"]`);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const { type, payload, problems } = picker.read();
    const chosen = readFields(options, schema.taskOptions);
    if (problems.length || chosen.problems.length) {
      showErrors(form, localProblems([
        ...problems.map((p) => ({ ...p, field: `payload.${p.field}` })), ...chosen.problems]), inputFor);
      return;
    }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      const task = await api("/api/tasks", { method: "POST", json: { type, payload, ...chosen.values } });
      toast(`Created ${task.type} task ${shortId(task.id)} (${task.status})`);
      // Ready for the next one of the same type.
      form.reset();
      picker.reset(type);
      onCreated(task);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      showErrors(form, error, inputFor);
    } finally {
      button.disabled = false;
    }
  });
  return form;
}
