// "My files": upload, list, download, delete.

import { api, ApiError, downloadFile, fileUrl } from "../api.js";
import { clear, formatBytes, h, timeElement, toast } from "../dom.js";
import { formError } from "./forms.js";

export function renderFiles(main) {
  const tbody = h("tbody");
  const input = h("input", { type: "file", name: "file", id: "upload-input", required: true });
  const rename = h("input", { type: "checkbox", name: "rename", id: "upload-rename" });
  const error = formError("upload-error");
  const form = h("form", { class: "card", id: "upload", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload a file"), error,
    h("div", { class: "row" },
      h("label", { class: "visually-hidden", for: input.id }, "File to upload"), input,
      h("label", { class: "check" }, rename, "rename if the name is taken"),
      h("button", { type: "submit", class: "primary" }, "Upload")));

  const fail = (message) => {
    error.textContent = message;
    error.focus();
  };

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    if (!input.files.length) {
      fail("Choose a file first.");
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
      fail(failure.message);
    } finally {
      button.disabled = false;
    }
  });

  clear(main, h("h1", { class: "visually-hidden" }, "Files"), form,
    h("section", { class: "card", "aria-labelledby": "my-files-title" },
      h("div", { class: "card-head" }, h("h2", { id: "my-files-title" }, "My files"),
        h("button", { type: "button", onclick: () => reload() }, "Refresh")),
      h("table", { id: "files-table" },
        h("thead", {}, h("tr", {}, ["Name", "Size", "Uploaded"].map((t) => h("th", { scope: "col" }, t)),
          h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")))),
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
      "aria-label": `Delete ${file.name}`,
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
          "aria-label": `Download ${file.name}`,
          onclick: () => downloadFile(file.name).catch((e) => toast(e.message, "error")) }, "Download"),
        remove));
  }

  reload();
  return () => {};
}
