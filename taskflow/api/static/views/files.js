// "My files": upload, list, download, delete.

import { api, ApiError, downloadFile, fileUrl } from "../api.js";
import { clear, formatBytes, h, timeElement, toast } from "../dom.js";

export function renderFiles(main) {
  const tbody = h("tbody");
  const input = h("input", { type: "file", name: "file", id: "upload-input", required: true });
  const rename = h("input", { type: "checkbox", name: "rename", id: "upload-rename" });
  const error = h("p", { class: "form-error", hidden: true, id: "upload-error" });
  const form = h("form", { class: "card", id: "upload" },
    h("h2", {}, "Upload a file"), error,
    h("div", { class: "row" }, input,
      h("label", { class: "check" }, rename, "rename if the name is taken"),
      h("button", { type: "submit", class: "primary" }, "Upload")));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    if (!input.files.length) {
      error.textContent = "Choose a file first.";
      error.hidden = false;
      return;
    }
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      for (const file of input.files) {
        const body = new FormData();
        body.append("file", file, file.name);  // multipart field "file", as the API wants
        const query = rename.checked ? "?on_conflict=rename" : "";
        const stored = await api(`/api/files${query}`, { method: "POST", body });
        toast(`Uploaded ${stored.name}`);
      }
      form.reset();
      await reload();
    } catch (failure) {
      if (!(failure instanceof ApiError)) throw failure;
      error.textContent = failure.message;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  });

  clear(main, form,
    h("section", { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "My files"),
        h("button", { type: "button", onclick: () => reload() }, "Refresh")),
      h("table", { id: "files-table" },
        h("thead", {}, h("tr", {}, ["Name", "Size", "Uploaded", ""].map((t) => h("th", {}, t)))),
        tbody)));

  async function reload() {
    let files;
    try {
      files = await api("/api/files");
    } catch (failure) {
      if (failure instanceof ApiError) toast(failure.message, "error");
      return;
    }
    clear(tbody, files.length ? files.map(fileRow)
      : h("tr", { class: "empty" }, h("td", { colspan: 4 }, "No files yet.")));
  }

  function fileRow(file) {
    const remove = h("button", { type: "button", class: "small danger", dataset: { action: "delete" },
      onclick: async () => {
        if (!confirm(`Delete ${file.name}?`)) return;
        remove.disabled = true;
        try {
          await api(fileUrl(file.name), { method: "DELETE" });
          toast(`Deleted ${file.name}`);
          await reload();
        } catch (failure) {
          if (!(failure instanceof ApiError)) throw failure;
          toast(failure.message, "error");
          remove.disabled = false;
        }
      } }, "Delete");
    return h("tr", { dataset: { file: file.name } },
      h("td", { class: "name" }, file.name),
      h("td", {}, formatBytes(file.size)),
      h("td", {}, timeElement(file.created_at)),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "small", dataset: { action: "download" },
          onclick: () => downloadFile(file.name).catch((e) => toast(e.message, "error")) }, "Download"),
        remove));
  }

  reload();
  return () => {};
}
