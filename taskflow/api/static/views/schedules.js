// "My schedules": periodic tasks (SPEC §9). A form to create one, its fields
// and its task's payload fields as the API's document describes them, and
// the list of the user's schedules with pause, resume and delete.

import { api, ApiError } from "../api.js";
import { clear, h, shortId, timeElement, toast } from "../dom.js";
import { clearErrors, formError, showErrors } from "./forms.js";
import { fieldInputs, localProblems, payloadPicker, readFields } from "./payload_form.js";

const CRON_HINT = "minute hour day month weekday, e.g. */15 * * * * or 0 3 * * 1-5";

export function renderSchedules(main, schema) {
  // A schedule's own fields, and those each of its tasks gets (as a new task's options).
  const create = schema.model("ScheduleCreate");
  const taskOptions = schema.taskOptions.map((field) => field.name);
  const own = schema.fieldsOf(create, ["type", "payload", ...taskOptions]);
  const options = schema.fieldsOf(create, ["type", "payload", ...own.map((field) => field.name)]);
  const cron = own.find((field) => field.name === "cron");
  if (cron) cron.hint = [cron.hint, CRON_HINT].filter(Boolean).join("; ");
  const ownFields = h("fieldset", { class: "grid" }, h("legend", { class: "visually-hidden" }, "Schedule"),
    fieldInputs(own));
  const zones = h("datalist", { id: "time-zones" },
    (Intl.supportedValuesOf ? Intl.supportedValuesOf("timeZone") : []).map((zone) => h("option", { value: zone })));
  const zoneInput = ownFields.elements.namedItem("timezone");
  if (zoneInput) zoneInput.setAttribute("list", zones.id);
  const picker = payloadPicker(schema, { id: "new-schedule-type", onChange: () => clearErrors(form) });
  const optionFields = h("fieldset", { class: "grid" }, h("legend", { class: "visually-hidden" }, "Options"),
    fieldInputs(options));
  const form = h("form", { class: "card", id: "new-schedule", novalidate: true, "aria-labelledby": "new-schedule-title" },
    h("div", { class: "card-head" }, h("h2", { id: "new-schedule-title" }, "New schedule"),
      h("div", { class: "inline-field" }, h("label", { for: picker.typeSelect.id }, "Type"), picker.typeSelect)),
    formError("new-schedule-error"),
    ownFields, picker.fieldset,
    h("details", { class: "options" },
      h("summary", {}, `Options of each task: ${options.map((field) => field.label.toLowerCase()).join(", ")}`),
      optionFields),
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary" }, "Create schedule")),
    zones);
  const tbody = h("tbody");
  clear(main, h("h1", { class: "visually-hidden" }, "Schedules"), form,
    h("section", { class: "card", "aria-labelledby": "my-schedules-title" },
      h("div", { class: "card-head" }, h("h2", { id: "my-schedules-title" }, "My schedules"),
        h("button", { type: "button", onclick: () => reload() }, "Refresh")),
      h("table", { id: "schedules-table" },
        h("thead", {}, h("tr", {}, ["Name", "Type", "Cron", "State", "Next run", "Last run"].map((text) =>
          h("th", { scope: "col" }, text)),
        h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
        tbody)));

  const inputFor = (apiField) => {
    const name = apiField.split(".")[0];
    return picker.inputFor(apiField) || ownFields.elements.namedItem(name)
      || optionFields.elements.namedItem(name);
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const chosen = picker.read();
    const mine = readFields(ownFields, own);
    const extra = readFields(optionFields, options);
    const problems = [...chosen.problems.map((p) => ({ ...p, field: `payload.${p.field}` })),
      ...mine.problems, ...extra.problems];
    if (problems.length) {
      showErrors(form, localProblems(problems), inputFor);
      return;
    }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    try {
      const body = { ...mine.values, type: chosen.type, payload: chosen.payload, ...extra.values };
      const created = await api("/api/schedules", { method: "POST", json: body });
      toast(`Created schedule ${created.name}`);
      form.reset();
      picker.reset(chosen.type);
      await reload();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      showErrors(form, error, inputFor);
    } finally {
      button.disabled = false;
    }
  });

  async function reload() {
    let schedules;
    try {
      schedules = await api("/api/schedules");
    } catch (error) {
      if (error instanceof ApiError) toast(error.message, "error");
      return;
    }
    clear(tbody, schedules.length ? schedules.map(scheduleRow)
      : h("tr", { class: "empty" }, h("td", { colspan: 7 }, "No schedules yet.")));
  }

  function button(schedule, action, text, method, path, message, className = "small") {
    const element = h("button", { type: "button", class: className, dataset: { action },
      "aria-label": `${text} schedule ${schedule.name}`,
      onclick: async () => {
        if (action === "delete" && !confirm(`Delete the schedule ${schedule.name}? Its tasks stay.`)) return;
        element.disabled = true;
        try {
          await api(path, { method });
          toast(message);
        } catch (error) {
          if (!(error instanceof ApiError)) throw error;
          toast(error.message, "error");
        }
        await reload();
      } }, text);
    return element;
  }

  function scheduleRow(schedule) {
    const url = `/api/schedules/${schedule.id}`;
    const state = schedule.paused ? "paused" : "active";
    return h("tr", { dataset: { scheduleId: schedule.id, state } },
      h("td", {}, schedule.name),
      h("td", {}, schedule.type),
      h("td", {}, h("span", { class: "mono" }, schedule.cron), h("span", { class: "muted" }, ` ${schedule.timezone}`)),
      h("td", {}, h("span", { class: `badge schedule-${state}` }, state),
        schedule.last_skip_reason ? h("div", { class: "error-text" },
          `skipped a slot: ${schedule.last_skip_reason}`) : null),
      h("td", {}, timeElement(schedule.next_run_at)),
      h("td", {}, timeElement(schedule.last_run_at), schedule.last_task_id
        ? [" ", h("a", { href: `#/tasks/${schedule.last_task_id}`, class: "mono", title: schedule.last_task_id },
          shortId(schedule.last_task_id))] : null),
      h("td", { class: "actions" },
        schedule.paused
          ? button(schedule, "resume", "Resume", "POST", `${url}/resume`, "Schedule resumed")
          : button(schedule, "pause", "Pause", "POST", `${url}/pause`, "Schedule paused"),
        button(schedule, "delete", "Delete", "DELETE", url, "Schedule deleted", "small danger")));
  }

  reload();
  return () => {};
}
