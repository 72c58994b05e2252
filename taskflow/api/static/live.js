// Server-Sent Events read with fetch() rather than EventSource: fetch can send
// the Authorization header, so the token never goes into a URL (where logs and
// history keep it). The protocol is the same: this reconnects by itself and
// sends Last-Event-ID, so the server replays what happened in between.

import { authHeaders, session } from "./api.js";

const MAX_DELAY_MS = 15_000;
const SEEN_KEPT = 4000;

/** The header's live indicator: open, connecting or off. */
export function showLiveState(state) {
  const indicator = document.getElementById("live");
  if (indicator) indicator.dataset.state = state;
}

export class LiveStream {
  /**
   * path: /api/events or /api/tasks/<id>/events.
   * handlers: onEvent(data) for each task event (each id once), onReady()
   * after the server's replay (every connection), onResync() when the server
   * says too much was missed (reload everything), onGone() on a 404.
   */
  constructor(path, handlers) {
    this.path = path;
    this.handlers = handlers;
    this.lastEventId = null;
    this.retryMs = 3000;
    this.stopped = true;
    this.seen = new Set();
    this.seenOrder = [];
    this.controller = null;
  }

  start() {
    this.stopped = false;
    this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
    showLiveState("off");
  }

  async run() {
    let delay = 0;
    while (!this.stopped) {
      if (delay) await new Promise((resolve) => setTimeout(resolve, delay));
      if (this.stopped || !session.token) return;
      this.controller = new AbortController();
      showLiveState("connecting");
      try {
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (this.lastEventId !== null) headers.set("Last-Event-ID", this.lastEventId);
        const response = await fetch(this.path, {
          headers, cache: "no-store", signal: this.controller.signal,
        });
        if (response.status === 404) {
          showLiveState("off");
          if (this.handlers.onGone) this.handlers.onGone();
          return;
        }
        if (response.status === 401) {
          showLiveState("off");
          return;  // the next API call signs the user out
        }
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        await this.read(response.body);
        delay = this.retryMs;  // the server closed the stream: come back soon
      } catch (error) {
        if (this.stopped) return;
        delay = Math.min(Math.max(delay * 2, this.retryMs), MAX_DELAY_MS);
      }
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        this.dispatch(block);
      }
    }
  }

  dispatch(block) {
    let event = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (line === "" || line.startsWith(":")) continue;  // a heartbeat comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id") id = value;
      else if (field === "retry" && /^\d+$/.test(value)) this.retryMs = Number(value);
    }
    if (id !== null) this.lastEventId = id;
    if (!data.length) return;
    let payload;
    try { payload = JSON.parse(data.join("\n")); } catch { return; }
    if (event === "ready") {
      showLiveState("open");
      if (this.handlers.onReady) this.handlers.onReady(payload);
    } else if (event === "resync") {
      if (this.handlers.onResync) this.handlers.onResync(payload);
    } else if (event === "task") {
      // Delivery is at least once (a resume overlaps a little): each id once.
      if (this.seen.has(payload.id)) return;
      this.seen.add(payload.id);
      this.seenOrder.push(payload.id);
      if (this.seenOrder.length > SEEN_KEPT) this.seen.delete(this.seenOrder.shift());
      if (this.handlers.onEvent) this.handlers.onEvent(payload);
    }
  }
}
