// Building the page without innerHTML: every value from the API becomes a text
// node or an attribute, so a payload or a file name can never become markup.

/**
 * h("a", {href: "#/x", class: "btn", onclick: fn}, "text", child, [more])
 * Props: class, text, dataset ({key: value}), on<event> handlers, hidden,
 * disabled, value, checked; anything else is set as an attribute.
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "text") element.textContent = value;
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else if (["hidden", "disabled", "checked", "value", "selected"].includes(key)) {
      element[key] = value;
    } else element.setAttribute(key, value === true ? "" : String(value));
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

const pad = (n) => String(n).padStart(2, "0");

/** "2030-01-02 13:04:05" in the browser's time zone; "" for null. */
export function formatTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A time cell: the local time, with the exact UTC instant as a tooltip. */
export function timeElement(iso) {
  return h("time", { datetime: iso || undefined, title: iso || undefined }, formatTime(iso));
}

export function formatBytes(size) {
  if (size === null || size === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB"];
  let value = size;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** Ids are UUIDv7: the first digits are the creation time, shared by tasks
 * created close together; the last ones tell them apart. */
export function shortId(id) {
  return `${id.slice(0, 8)}…${id.slice(-4)}`;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, dataset: { status } }, status);
}

let toastTimer = null;

/** A short message at the bottom of the page; kind is "ok" or "error". */
export function toast(message, kind = "ok") {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.dataset.kind = kind;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 8000 : 3000);
}

/** Calls fn at most once per `ms`, with the latest arguments. */
export function debounce(fn, ms) {
  let timer = null;
  const debounced = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  debounced.cancel = () => clearTimeout(timer);
  return debounced;
}
