// The JSON API, as this page uses it. The token lives in sessionStorage: it
// is gone when the tab closes, and other tabs and sites never see it.

const TOKEN = "taskflow.token";
const EMAIL = "taskflow.email";
const ADMIN = "taskflow.admin";

export const session = {
  get token() { return sessionStorage.getItem(TOKEN); },
  get email() { return sessionStorage.getItem(EMAIL) || ""; },
  get isAdmin() { return sessionStorage.getItem(ADMIN) === "true"; },
  start(token, email) {
    sessionStorage.setItem(TOKEN, token);
    sessionStorage.setItem(EMAIL, email);
    sessionStorage.removeItem(ADMIN);
  },
  setAdmin(value) { sessionStorage.setItem(ADMIN, value ? "true" : "false"); },
  end() {
    for (const key of [TOKEN, EMAIL, ADMIN]) sessionStorage.removeItem(key);
  },
};

/** An error answer of the API: {error, details?} and its status. */
export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.details = Array.isArray(body && body.details) ? body.details : [];
    this.body = body;
  }
}

/** Called when the token is refused: the app sends the user to sign in. */
let onSignedOut = () => {};
export function whenSignedOut(callback) { onSignedOut = callback; }

export function authHeaders(extra = {}) {
  const headers = new Headers(extra);
  if (session.token) headers.set("Authorization", `Bearer ${session.token}`);
  return headers;
}

/**
 * fetch() with the token and JSON in and out. Returns the parsed body (null
 * for 204), or the Response itself with {raw: true}. Throws ApiError.
 */
export async function api(path, { method = "GET", json, body, headers, raw = false, signal } = {}) {
  const sent = authHeaders(headers);
  let payload = body;
  if (json !== undefined) {
    sent.set("Content-Type", "application/json");
    payload = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers: sent, body: payload, cache: "no-store", signal });
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch { data = { error: response.statusText } }
    if (response.status === 401 && session.token) {
      session.end();
      onSignedOut("Your session has ended: please sign in again.");
    }
    throw new ApiError(response.status, data);
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** The URL of a Link: <...>; rel="next" header, or null. */
export function nextLink(response) {
  const header = response.headers.get("Link") || "";
  const match = header.match(/<([^>]+)>\s*;\s*rel="?next"?/);
  return match ? match[1] : null;
}

export function fileUrl(name) {
  return `/api/files/${encodeURIComponent(name)}`;
}

/**
 * A file of the user's as a blob: URL. The file API needs the token, which an
 * <img src> or <a href> cannot send, so the page fetches the bytes itself.
 * The caller revokes the URL when it is done with it.
 */
export async function fileBlobUrl(name, type) {
  const response = await api(fileUrl(name), { raw: true });
  const blob = await response.blob();
  return URL.createObjectURL(type ? new Blob([blob], { type }) : blob);
}

/** Save one of the user's files through the browser's download. */
export async function downloadFile(name) {
  const url = await fileBlobUrl(name);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
