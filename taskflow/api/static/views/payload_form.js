// Form fields built from the API's own description of them (schema.js):
// a text box, a number, a check box, a list of choices, one line per item,
// or, for what a form cannot type (a nested object), JSON to write out.
// Used for a task's payload, whatever its type, and for the other fields of
// the new task and new schedule forms.

import { clear, h } from "../dom.js";
import { field as labelled, uniqueId } from "./forms.js";

// Laid out on the forms' grid: these take a whole row.
const WIDE = new Set(["text", "list", "json"]);

function label(field) {
  return field.required
    ? [field.label, h("span", { class: "required", "aria-hidden": "true" }, " *")]
    : field.label;
}

function inputFor(field) {
  const { schema, name } = field;
  const shown = field.default !== null && typeof field.default !== "object" ? String(field.default) : undefined;
  const common = { name, required: field.required, dataset: { kind: field.kind } };
  switch (field.kind) {
    case "number":
      return h("input", { ...common, type: "number", step: schema.type === "integer" ? 1 : "any",
        min: schema.minimum, max: schema.maximum, placeholder: shown });
    case "enum": {
      const blank = field.required && field.default === null ? "choose…" : "—";
      return h("select", common,
        field.default === null ? h("option", { value: "" }, blank) : null,
        field.values.map((value, index) => h("option",
          { value: String(index), selected: value === field.default }, String(value))));
    }
    case "datetime":
      return h("input", { ...common, type: "datetime-local", step: 1 });
    case "text":
      return h("textarea", { ...common, rows: 3 });
    case "list":
      return h("textarea", { ...common, rows: 2, placeholder: "one per line" });
    case "json":
      return h("textarea", { ...common, rows: 3, class: "mono",
        placeholder: schema.type === "object" ? '{"key": "value"}' : "JSON" });
    default:
      if (schema.format === "email") {
        return h("input", { ...common, type: "email", placeholder: shown || "someone@example.com" });
      }
      return h("input", { ...common, type: "text", placeholder: shown });
  }
}

/** A check box with its label, hint and error slot. */
function checkField(field) {
  const input = h("input", { type: "checkbox", name: field.name, id: uniqueId("field"),
    checked: field.default === true, dataset: { kind: "boolean" } });
  let hint = null;
  if (field.hint) {
    hint = h("span", { class: "hint", id: uniqueId("hint") }, field.hint);
    input.dataset.hintId = hint.id;
    input.setAttribute("aria-describedby", hint.id);
  }
  return h("div", { class: "field check-field" },
    h("label", { class: "check", for: input.id }, input, label(field)), hint,
    h("span", { class: "field-error", dataset: { errorFor: field.name }, hidden: true }));
}

/** The inputs of these fields, check boxes together at the end. */
export function fieldInputs(fields) {
  const checks = fields.filter((field) => field.kind === "boolean").map(checkField);
  const others = fields.filter((field) => field.kind !== "boolean").map((field) =>
    labelled(label(field), inputFor(field), field.hint || null, WIDE.has(field.kind) ? "wide" : ""));
  return [...others, checks.length ? h("div", { class: "checks" }, checks) : null];
}

/**
 * The values of these fields in `container` (a fieldset or a form), as the
 * API wants them. An optional field left empty is left out; a required one
 * is sent as it is, so the API says what is wrong with it. Problems found
 * here (JSON that does not parse) come back as {field, message}.
 */
export function readFields(container, fields) {
  const values = {};
  const problems = [];
  for (const field of fields) {
    const input = container.elements.namedItem(field.name);
    if (!input) continue;
    const raw = input.value;
    switch (field.kind) {
      case "boolean":
        if (field.required || input.checked !== (field.default === true)) values[field.name] = input.checked;
        break;
      case "number": {
        const text = raw.trim();
        // Sent as typed: "1e999" reaches the API, which says what is wrong with it.
        if (text !== "") values[field.name] = Number.isNaN(Number(text)) ? text : Number(text);
        break;
      }
      case "enum":
        if (raw !== "") values[field.name] = field.values[Number(raw)];
        break;
      case "datetime":
        if (raw) {
          const when = new Date(raw);
          values[field.name] = Number.isNaN(when.getTime()) ? raw : when.toISOString();
        }
        break;
      case "list": {
        const items = raw.split("\n").map((line) => line.trim()).filter(Boolean);
        if (items.length || field.required) values[field.name] = items;
        break;
      }
      case "json":
        if (raw.trim()) {
          try {
            values[field.name] = JSON.parse(raw);
          } catch {
            problems.push({ field: field.name, message: "not valid JSON" });
          }
        }
        break;
      case "text":
        if (raw.trim() || field.required) values[field.name] = raw;
        break;
      default:
        if (raw.trim() || field.required) values[field.name] = raw.trim();
    }
  }
  return { values, problems };
}

/**
 * The task type select and the payload fields of the type chosen, kept in
 * step: {typeSelect, fieldset, read(), inputFor(name), reset()}.
 */
export function payloadPicker(schema, { id, onChange = () => {} }) {
  const typeSelect = h("select", { name: "type", id },
    schema.typeNames.map((name) => h("option", { value: name }, name)));
  const fieldset = h("fieldset", { class: "payload" });
  const current = () => schema.types.get(typeSelect.value);

  function show() {
    const type = current();
    const fields = type ? type.fields : [];
    clear(fieldset, h("legend", { class: "visually-hidden" }, `Payload of ${typeSelect.value}`),
      type && type.description ? h("p", { class: "muted wide payload-about" }, type.description) : null,
      fields.length ? fieldInputs(fields) : h("p", { class: "muted wide" }, "This type takes no payload fields."));
  }

  typeSelect.addEventListener("change", () => { onChange(); show(); });
  show();
  return {
    typeSelect,
    fieldset,
    read() {
      const type = current();
      const { values, problems } = readFields(fieldset, type ? type.fields : []);
      return { type: typeSelect.value, payload: values, problems };
    },
    /** The payload's input for an API field such as "payload.urls.0", or null. */
    inputFor(apiField) {
      const [top, name] = apiField.split(".");
      if (top !== "payload" || !name) return null;
      return fieldset.elements.namedItem(name);
    },
    reset(type) {
      if (type) typeSelect.value = type;
      show();
    },
  };
}

/** A problem found before sending, shown as the API's 400 would be. */
export function localProblems(problems, prefix = "") {
  return {
    message: "Check the fields marked.",
    details: problems.map((problem) => ({ field: `${prefix}${problem.field}`, message: problem.message })),
  };
}
