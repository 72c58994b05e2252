-- Live status changes, for the API's Server-Sent Events
-- (GET /api/events and GET /api/tasks/{id}/events).
--
-- Design: task_history is the event log; NOTIFY is only the doorbell.
--
-- * Every creation and every change of status already appends exactly one
--   task_history row, in the same transaction, whoever made it: the API, a
--   worker, the scheduler or a person in psql (0001's triggers). So an SSE
--   event is a history row and its id is task_history.id. A client that
--   reconnects with Last-Event-ID is caught up by reading its own history rows
--   after that id: no second log to write on the hot path, to prune, or to
--   keep consistent with the first.
--
-- * The trigger below sends those rows on channel taskflow_events as they are
--   inserted, so an API process (one LISTEN connection, fanned out in memory)
--   pushes each change to the right user without a query per event.
--   Notifications go out at commit, in commit order, never for a rolled-back
--   change, so the live path shows only what really happened. It is a
--   statement-level trigger on task_history's INSERT, with a transition table:
--   a claim or finish of N rows costs one join and one json_agg per 16 rows,
--   and only rows that really are a creation or a change of status are sent
--   (0001 writes history for nothing else).
--
-- * Only for users someone is watching. A transaction that NOTIFYs takes a
--   cluster-wide lock from before its commit until after it (so that
--   notifications queue in commit order), which serialises those commits
--   behind one WAL flush at a time: measured here, claims and finishes of 16
--   connections ran at half the rate with a NOTIFY each. So the API keeps a
--   row in task_event_watchers for every user with an open event stream
--   (refreshed while it stays open, expiring a minute after), and the trigger
--   notifies only for those users' tasks. Everyone else's changes, and all of
--   them while nobody has the dashboard open, cost one look at a tiny table.
--
-- * Payload: a JSON array of at most 16 objects
--     {"id", "task_id", "user_id", "from_status", "status", "event", "attempt", "at"}
--   (id is the history id; status the new status; at the time of the change).
--   NOTIFY refuses payloads of 8000 bytes or more, and an error here would
--   roll back the claim or finish that fired it, so every field is bounded:
--   numbers, a uuid, two enum labels, a timestamp, and the event name cut to
--   32 characters. Even with 19-digit ids and an event name of 32 characters
--   that JSON must escape as \uXXXX (about 420 bytes a row;
--   tests/integration/test_events.py builds such rows), 16 rows stay under
--   7000 bytes; a typical row is about 200.
--
-- * Why not the tasks table's own trigger and its updated_at: ids of history
--   rows are what a reconnecting client resumes from, and reading them back
--   needs no new column or index (task_history_task_idx serves one task, the
--   primary key and task_history_at_idx serve a user's stream).
--
-- * A limit the API handles: history ids are taken when the row is inserted
--   but become visible at commit, so two concurrent transactions may commit
--   out of id order. A client that saw id 101 may later need id 100. The
--   stream therefore resumes from "id > last OR at >= (at of last) - a few
--   seconds" and the client drops ids it has already seen (see
--   taskflow/api/events.py). Likewise a change whose trigger ran just before
--   a new stream's watcher row committed is not notified: each stream reads
--   history once more a second after it opens. Pruned history cannot be
--   replayed; a client that missed more than a few hundred changes gets a
--   "resync" event and reloads its state from the REST API.

-- Users with an open event stream in some API process, until watched_until.
-- Written only by the API (an upsert when a stream opens, then one every 20 s
-- per process for all its watched users); expired rows are deleted by the
-- same upkeep. No foreign key: a row of a deleted user just expires.
CREATE TABLE task_event_watchers (
    user_id       bigint PRIMARY KEY,
    watched_until timestamptz NOT NULL
);

CREATE FUNCTION taskflow_history_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- The common case on a busy system: nobody is watching anyone.
    IF NOT EXISTS (SELECT 1 FROM task_event_watchers WHERE watched_until > now()) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('taskflow_events', chunk.payload)
    FROM (
        SELECT json_agg(e.body ORDER BY e.id)::text AS payload
        FROM (
            SELECT h.id,
                   (row_number() OVER (ORDER BY h.id) - 1) / 16 AS chunk_number,
                   -- row_to_json writes no blanks: the most compact JSON text.
                   row_to_json(r) AS body
            FROM new_rows h
            JOIN tasks t ON t.id = h.task_id
            JOIN task_event_watchers w ON w.user_id = t.user_id AND w.watched_until > now()
            CROSS JOIN LATERAL (
                SELECT h.id, h.task_id, t.user_id, h.from_status, h.to_status AS status,
                       left(h.event, 32) AS event, h.attempt, h.at
            ) AS r
        ) AS e
        GROUP BY e.chunk_number
    ) AS chunk;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION taskflow_history_notify() IS
    'NOTIFY taskflow_events with new history rows of watched users, 16 per payload.';
COMMENT ON TABLE task_event_watchers IS
    'Users with an open live event stream; the history trigger notifies only for them.';

CREATE TRIGGER task_history_notify AFTER INSERT ON task_history
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION taskflow_history_notify();
