-- Helpers shared by the operator views and functions in this directory.
-- Answers: "how long may a worker stay silent before it counts as dead?" and
-- formats times and durations the way the other files print them.
-- Safe on a live system: defines functions only; they read a setting and
-- format values, and touch no table.
--
-- Why in public with a taskflow_ prefix (not a separate schema): the engine's own
-- functions (taskflow_actor, taskflow_event_name) already live there, every
-- stack has its own database, and operators need no search_path change:
--   \dv taskflow_*      lists the views,   \df taskflow_*   lists the functions.

-- Workers heartbeat every lease_seconds / 3. A worker silent for three leases
-- (90 s at the default lease_seconds = 30) is reported dead. The lease lives in
-- config.json, not in the database, so a deployment with another lease says so
-- once per database, or per psql session:
--   ALTER DATABASE taskflow SET taskflow.worker_alive_seconds = '30';
--   SET taskflow.worker_alive_seconds = '30';
CREATE OR REPLACE FUNCTION taskflow_worker_alive_seconds() RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('taskflow.worker_alive_seconds', true), '')::double precision,
        90)
$$;
COMMENT ON FUNCTION taskflow_worker_alive_seconds() IS
    'Seconds without a heartbeat after which a worker counts as dead '
    '(setting taskflow.worker_alive_seconds, default 90 = 3 x the default lease).';

-- RFC 3339 in UTC, to the second, whatever the session's TimeZone.
CREATE OR REPLACE FUNCTION taskflow_format_time(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
$$;

-- "850ms", "4.2s", "46s", "3m 12s", "2h 5m", "3d 4h": the length of an interval,
-- its sign dropped (the sentence around it says "ago" or "in").
CREATE OR REPLACE FUNCTION taskflow_format_duration(length interval) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN s IS NULL THEN NULL
        WHEN s < 1 THEN round(s * 1000) || 'ms'
        WHEN s < 60 THEN trim_scale(round(s, 1)) || 's'
        WHEN s < 3600 THEN floor(s / 60) || 'm ' || floor(s)::bigint % 60 || 's'
        WHEN s < 86400 THEN floor(s / 3600) || 'h ' || floor(s)::bigint % 3600 / 60 || 'm'
        ELSE floor(s / 86400) || 'd ' || floor(s)::bigint % 86400 / 3600 || 'h'
    END
    FROM (SELECT abs(extract(epoch FROM length)) AS s) AS seconds
$$;
