// Which of two states of one task is newer: a row must never go back to a
// state older than the one it shows.
//
// A state comes from the REST API (a task's JSON) or from the event stream
// (one history row). Its stamp is the id of the task's newest history row
// behind it, and that id orders one task's states exactly: every change of a
// task appends its history row while it holds the task's row lock, so the
// next change of that task takes its id only after this one committed. (Ids
// of different tasks may commit out of order; those are never compared.)
//
// Neither the attempt nor the status can stand in for it: a manual retry
// starts the attempts again at 0 and takes a failed task back to queued, and
// a task handed back at shutdown leaves processing for queued with one
// attempt fewer.
//
// Events carry their history id. A task's JSON carries it as `history_id`
// when the API sends one; until then (and for a task whose history was
// pruned) a stamp falls back to the time of the change, to the microsecond:
// an event's `at` is the `updated_at` its change wrote (both are the
// transaction's now()). That is right except when a transaction that began
// before the row's last change commits after it, which is rare and at worst
// keeps a row one change behind until the next one: never backwards.

/** Microseconds since the epoch of an RFC 3339 time, or null. */
export function microseconds(iso) {
  if (typeof iso !== "string") return null;
  const match = iso.match(/^(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)$/i);
  if (!match) return null;
  const seconds = Date.parse(match[1] + match[3]);
  if (Number.isNaN(seconds)) return null;
  const fraction = (match[2] || "").padEnd(6, "0").slice(0, 6);
  return seconds * 1000 + Number(fraction);
}

/** The stamp of a task's JSON from the API. */
export function stampOfTask(task) {
  const id = task.history_id;
  return { historyId: Number.isSafeInteger(id) ? id : null, at: microseconds(task.updated_at) };
}

/** The stamp of an event from the stream (its id is its history id). */
export function stampOfEvent(event) {
  return { historyId: Number.isSafeInteger(event.id) ? event.id : null, at: microseconds(event.at) };
}

/**
 * Whether the state stamped `candidate` is newer than the one stamped
 * `current` (null: nothing shown yet). Equal is not newer: the row already
 * shows what that change left.
 */
export function isNewer(candidate, current) {
  if (!current) return true;
  if (candidate.historyId !== null && current.historyId !== null) {
    return candidate.historyId > current.historyId;
  }
  if (candidate.at === null || current.at === null) return candidate.at !== null;
  return candidate.at > current.at;
}

/** What an event changes in a task's JSON. */
export function eventFields(event) {
  return { status: event.status, attempts: event.attempt, updated_at: event.at, history_id: event.id };
}
