// One task: details, payload, result (an image as a thumbnail, files as
// download links), the tasks it waits for and that wait for it, and its
// history as a timeline, all kept live.

import { api, ApiError, downloadFile, fileBlobUrl } from "../api.js";
import { clear, debounce, formatBytes, h, statusBadge, toast } from "../dom.js";
import { LiveStream } from "../live.js";
import { definitions, dependencyLists, detailRows, historyItem } from "./task_parts.js";
import { actionButtons } from "./tasks.js";

const IMAGE_TYPES = { ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
  ".gif": "image/gif", ".webp": "image/webp", ".bmp": "image/bmp" };

export function renderTask(main, taskId, schema) {
  const header = h("div", { class: "card-head" });
  const details = h("dl", { class: "details" });
  const payload = h("pre", { class: "json", id: "task-payload" });
  const result = h("div", { id: "task-result" });
  const timeline = h("ol", { class: "timeline", id: "task-history" });
  const links = h("div", { class: "columns", id: "task-links" });
  const blobUrls = [];
  let shownResult = null;

  clear(main,
    h("p", {}, h("a", { href: "#/tasks" }, "← All tasks")),
    h("section", { class: "card", id: "task" }, header, details),
    h("div", { class: "columns" },
      h("section", { class: "card" }, h("h2", {}, "Payload"), payload),
      h("section", { class: "card" }, h("h2", {}, "Result"), result)),
    h("section", { class: "card" }, h("h2", {}, "Dependencies"), links),
    h("section", { class: "card" }, h("h2", {}, "History"), timeline));

  let latestLoad = 0;

  async function load() {
    // Only the answer to the newest request is shown: requests started in
    // turn may be answered out of turn, and an older answer would take the
    // page back to a state it has already left.
    const mine = ++latestLoad;
    let task;
    let history;
    let linked;
    try {
      [task, history, linked] = await Promise.all([
        api(`/api/tasks/${taskId}`), api(`/api/tasks/${taskId}/history`),
        api(`/api/tasks/${taskId}/dependencies`)]);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (mine !== latestLoad) return;
      if (error.status === 404) gone();
      else toast(error.message, "error");
      return;
    }
    if (mine !== latestLoad) return;
    clear(header,
      h("h1", {}, h("span", { class: "type" }, task.type), " ", h("span", { class: "mono muted" }, task.id)),
      h("div", { class: "head-right" }, statusBadge(task.status),
        actionButtons(task, schema, (changed) => {
          if (changed === null) location.hash = "#/tasks";
          else load();
        })));
    clear(details, definitions(detailRows(task)));
    details.dataset.status = task.status;
    payload.textContent = JSON.stringify(task.payload, null, 2);
    const resultKey = JSON.stringify(task.result);
    if (resultKey !== shownResult) {
      shownResult = resultKey;
      renderResult(task);
    }
    clear(links, dependencyLists(linked, (id) => `#/tasks/${id}`));
    clear(timeline, history.map(historyItem));
  }

  function renderResult(task) {
    const value = task.result;
    if (value === null || value === undefined) {
      clear(result, h("p", { class: "muted" }, schema.finished.has(task.status)
        ? "No result." : "No result yet."));
      return;
    }
    const parts = [];
    if (task.type === "process_image" && typeof value.output === "string") {
      const image = h("img", { class: "thumbnail", id: "result-thumbnail", alt: `processed image ${value.output}` });
      parts.push(h("figure", {}, image,
        h("figcaption", {}, downloadLink(value.output),
          value.width ? ` ${value.width}×${value.height} ${value.format || ""}` : "")));
      const suffix = value.output.slice(value.output.lastIndexOf(".")).toLowerCase();
      fileBlobUrl(value.output, IMAGE_TYPES[suffix]).then((url) => {
        blobUrls.push(url);
        image.src = url;
      }).catch((error) => { image.alt = `cannot load the image: ${error.message}`; });
    }
    if (task.type === "download_files" && Array.isArray(value.files)) {
      parts.push(h("ul", { class: "files", id: "result-files" }, value.files.map((file) =>
        h("li", {}, downloadLink(file.name), " ", h("span", { class: "muted" },
          `${formatBytes(file.size)} from `, h("span", { class: "mono" }, file.url))))));
    }
    parts.push(h("details", { open: parts.length === 0 }, h("summary", {}, "Raw result"),
      h("pre", { class: "json" }, JSON.stringify(value, null, 2))));
    clear(result, parts);
  }

  function gone() {
    clear(main, h("section", { class: "card" }, h("h1", {}, "Task not found"),
      h("p", {}, "It was deleted, or it is not yours. ", h("a", { href: "#/tasks" }, "Back to your tasks"))));
    stream.stop();
  }

  const loadSoon = debounce(load, 100);
  const stream = new LiveStream(`/api/tasks/${taskId}/events`, {
    onEvent: () => loadSoon(),
    onReady: () => loadSoon(),
    onResync: () => load(),
    onGone: () => gone(),
  }).start();
  load();
  return () => {
    stream.stop();
    loadSoon.cancel();
    blobUrls.forEach((url) => URL.revokeObjectURL(url));
  };
}

function downloadLink(name) {
  return h("a", { href: "#", class: "download", dataset: { file: name },
    onclick: (event) => {
      event.preventDefault();
      downloadFile(name).catch((error) => toast(error.message, "error"));
    } }, name);
}
