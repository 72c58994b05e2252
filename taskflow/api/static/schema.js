// What the API says of itself, read once per page load and shared by every
// view. The task types, each with its payload fields, and the task statuses
// are read in GET /api/openapi.json, which the server generates out of the
// very models that check requests: a plugin's task type is there with its
// fields, and gets a form. What each status allows (cancel, retry, delete)
// is read in GET /api/meta, made out of the server's one transition table.
// Nothing here is a list typed by hand.

import { api } from "./api.js";
import { clear, h } from "./dom.js";

let loading = null;

/** The schema, fetched at the first call; a failed fetch is tried again at the next. */
export function apiSchema() {
  if (!loading) {
    loading = Promise.all([api("/api/openapi.json"), api("/api/meta")])
      .then(([document, meta]) => read(document, meta));
    loading.catch(() => { loading = null; });
  }
  return loading;
}

/**
 * Render a view once the schema is in. Returns the view's stop function at
 * once, as the router wants, whether or not the view has started yet.
 */
export function withSchema(main, render) {
  let stop = null;
  let left = false;
  apiSchema().then((schema) => {
    if (!left) stop = render(schema) || null;
  }).catch((error) => {
    if (left) return;
    clear(main, h("section", { class: "card" }, h("h1", {}, "The dashboard cannot start"),
      h("p", { class: "form-error" }, `Reading the API's description failed: ${error.message}`)));
  });
  return () => {
    left = true;
    if (stop) stop();
  };
}

function read(document, meta) {
  const schemas = (document.components && document.components.schemas) || {};
  const resolve = (schema) => {
    let current = schema || {};
    // A $ref names a component; a chain of them ends (pydantic writes one step).
    for (let step = 0; current.$ref && step < 16; step += 1) {
      current = schemas[current.$ref.split("/").pop()] || {};
    }
    return current;
  };
  const model = (name) => resolve(schemas[name]);
  const fieldsOf = (objectSchema, skip = []) => {
    const required = new Set(objectSchema.required || []);
    return Object.entries(objectSchema.properties || {})
      .filter(([name]) => !skip.includes(name))
      .map(([name, property]) => fieldOf(name, property, required.has(name), resolve));
  };

  // TaskCreate is one variant per registered type, each with its payload's model.
  const create = model("TaskCreate");
  const variants = create.oneOf || [create];
  const types = new Map();
  for (const variant of variants) {
    const properties = variant.properties || {};
    const name = properties.type && properties.type.const;
    if (typeof name !== "string") continue;
    const payload = resolve(properties.payload);
    types.set(name, {
      name,
      description: (payload.description || "").replace(/``/g, ""),
      fields: fieldsOf(payload),
    });
  }
  return {
    statuses: model("TaskStatus").enum || meta.statuses,
    types,
    typeNames: [...types.keys()],
    // The fields of a new task besides its type and payload, as TaskCreate has them.
    taskOptions: fieldsOf(variants[0] || {}, ["type", "payload"]),
    cancellable: new Set(meta.cancellable),
    retryable: new Set(meta.retryable),
    finished: new Set(meta.finished),
    model,
    fieldsOf,
  };
}

/** "attached_files" or "Attached Files" -> "Attached files". */
function sentenceCase(text) {
  const words = text.replace(/_/g, " ").trim().split(/\s+/);
  return words.map((word, index) => (index ? word.toLowerCase()
    : word.charAt(0).toUpperCase() + word.slice(1))).join(" ");
}

/**
 * A form field from one property of a JSON Schema object: its name, label,
 * whether it is required, its kind (string, text, number, boolean, enum,
 * list, datetime, json) and the hint its constraints make.
 */
export function fieldOf(name, property, required, resolve) {
  let schema = resolve(property);
  const variants = schema.anyOf || schema.oneOf;
  if (variants) {
    // An optional field is "anyOf: [its schema, null]": its schema says what it is.
    const others = variants.map(resolve).filter((variant) => variant.type !== "null");
    schema = others.length === 1 ? others[0] : {};
  }
  const field = {
    name,
    label: sentenceCase(property.title || schema.title || name),
    description: property.description || schema.description || "",
    required,
    default: property.default ?? schema.default ?? null,
    schema,
    kind: kindOf(schema, resolve),
  };
  field.values = field.kind === "enum" ? (schema.enum || [schema.const]) : null;
  field.hint = hintOf(field, resolve);
  return field;
}

function kindOf(schema, resolve) {
  if (Array.isArray(schema.enum) || "const" in schema) return "enum";
  switch (schema.type) {
    case "boolean": return "boolean";
    case "integer":
    case "number": return "number";
    case "string":
      if (schema.format === "date-time") return "datetime";
      return (schema.maxLength || 0) > 1000 ? "text" : "string";
    case "array": {
      const items = resolve(schema.items);
      return items.type === "string" && !items.enum ? "list" : "json";
    }
    default: return "json";  // objects, and anything a form cannot type: as JSON
  }
}

const FORMATS = { email: "an email address", uri: "a URL", uuid: "an id", "date-time": "a date and time" };

function range(schema) {
  const low = schema.exclusiveMinimum !== undefined ? `> ${schema.exclusiveMinimum}`
    : schema.minimum !== undefined ? `${schema.minimum}` : null;
  const high = schema.exclusiveMaximum !== undefined ? `< ${schema.exclusiveMaximum}`
    : schema.maximum !== undefined ? `${schema.maximum}` : null;
  if (low !== null && high !== null) {
    return schema.exclusiveMinimum === undefined && schema.exclusiveMaximum === undefined
      ? `${low} … ${high}` : `${low}, up to ${high}`;
  }
  if (low !== null) return schema.exclusiveMinimum !== undefined ? low : `at least ${low}`;
  if (high !== null) return schema.exclusiveMaximum !== undefined ? high : `at most ${high}`;
  return null;
}

function hintOf(field, resolve) {
  const { schema } = field;
  const parts = [];
  if (field.description) parts.push(field.description.replace(/``/g, ""));
  if (field.kind === "number") {
    if (schema.type === "integer") parts.push("a whole number");
    parts.push(range(schema));
  } else if (field.kind === "string") {
    // An email field is an <input type="email">, which says so itself.
    if (FORMATS[schema.format] && schema.format !== "email") parts.push(FORMATS[schema.format]);
    if (schema.pattern) parts.push(`matching ${schema.pattern}`);
    if (schema.maxLength) parts.push(`up to ${schema.maxLength} characters`);
  } else if (field.kind === "list") {
    parts.push("one per line");
    const items = resolve(schema.items);
    if (FORMATS[items.format]) parts.push(`each ${FORMATS[items.format]}`);
    if (schema.minItems && schema.maxItems) parts.push(`${schema.minItems} to ${schema.maxItems}`);
    else if (schema.maxItems) parts.push(`up to ${schema.maxItems}`);
  } else if (field.kind === "datetime") {
    parts.push("in your time zone");
  } else if (field.kind === "json") {
    parts.push(schema.type === "object" ? "a JSON object" : "JSON");
  }
  const shown = field.default;
  if (shown !== null && field.kind !== "boolean" && typeof shown !== "object") {
    parts.push(`default ${shown}`);
  }
  return parts.filter(Boolean).join("; ");
}
