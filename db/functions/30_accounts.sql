-- Accounts: token revocation and the login and registration throttles
-- (db/migrations/0006_accounts.sql has the tables, the triggers and the
-- design). Re-applied by `taskflow migrate` whenever this file changes.

-- How an email is kept in the throttle tables: matched as login matches it
-- (lower(), as users_email_lower_key), and never in clear.
CREATE OR REPLACE FUNCTION taskflow_email_digest(email text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(convert_to(lower(email), 'UTF8'))
$$;
COMMENT ON FUNCTION taskflow_email_digest(text) IS
    'The key of an email in login_failures: sha256 of lower(email).';

-- ----- revocation: what changes, and the NOTIFY that tells the API processes

-- A new password hash signs the user out of every session, whoever sets it
-- (the API's POST /api/password or a person in psql); and token_version only
-- grows, or tokens refused once would be accepted again.
CREATE OR REPLACE FUNCTION taskflow_users_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.token_version < OLD.token_version THEN
        RAISE EXCEPTION 'user %: token_version only grows (% -> %)',
            OLD.id, OLD.token_version, NEW.token_version
            USING ERRCODE = 'check_violation', CONSTRAINT = 'users_token_version_grows';
    END IF;
    IF NEW.password_hash IS DISTINCT FROM OLD.password_hash
       AND NEW.token_version = OLD.token_version THEN
        NEW.token_version := OLD.token_version + 1;
    END IF;
    RETURN NEW;
END
$$;

-- Payloads on channel taskflow_accounts, one JSON object per change, sent at
-- commit (never for a rolled-back change):
--   {"user_id": 7, "token_version": 3}     tokens of any other version are refused
--   {"user_id": 7, "deleted": true}        every token of the user is refused
--   {"user_id": 7, "revoked": "<jti>", "expires_at": <unix seconds>}
-- Changes of accounts are rare (a logout, a password change, an operator),
-- so a NOTIFY each costs nothing that matters.
CREATE OR REPLACE FUNCTION taskflow_users_notify_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskflow_accounts',
        json_build_object('user_id', NEW.id, 'token_version', NEW.token_version)::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION taskflow_users_notify_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskflow_accounts',
        json_build_object('user_id', OLD.id, 'deleted', true)::text);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION taskflow_revoked_tokens_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('taskflow_accounts',
        json_build_object('user_id', NEW.user_id, 'revoked', NEW.jti,
                          'expires_at', extract(epoch FROM NEW.expires_at))::text);
    RETURN NULL;
END
$$;

-- ----- throttles

-- Whether a login for `login_email` from `client_address` is refused now, and
-- for how long: at most one row, naming the limit (its config key) that
-- refuses for longer. A limit of N refuses while the window holds N failures,
-- that is until the N-th newest of them leaves it. Reads at most N rows of
-- each index. Operators can ask it too:
--   SELECT * FROM taskflow_login_refusal('a@example.com', '192.0.2.1', 900, 5, 20);
CREATE OR REPLACE FUNCTION taskflow_login_refusal(
    login_email text, client_address text, window_seconds double precision,
    max_failures integer, max_failures_per_address integer
) RETURNS TABLE (limit_name text, retry_after_seconds double precision)
LANGUAGE sql STABLE AS $$
    SELECT refusal.limit_name,
           extract(epoch FROM refusal.nth_newest
                              + make_interval(secs => window_seconds) - now())::double precision
    FROM (
        SELECT 'login_max_failures' AS limit_name,
               (SELECT f.at FROM login_failures f
                WHERE f.email_digest = taskflow_email_digest(login_email)
                  AND f.at > now() - make_interval(secs => window_seconds)
                ORDER BY f.at DESC OFFSET max_failures - 1 LIMIT 1) AS nth_newest
        UNION ALL
        SELECT 'login_max_failures_per_address',
               (SELECT f.at FROM login_failures f
                WHERE f.address = client_address
                  AND f.at > now() - make_interval(secs => window_seconds)
                ORDER BY f.at DESC OFFSET max_failures_per_address - 1 LIMIT 1)
    ) AS refusal
    WHERE refusal.nth_newest IS NOT NULL
    ORDER BY refusal.nth_newest DESC
    LIMIT 1
$$;
COMMENT ON FUNCTION taskflow_login_refusal(text, text, double precision, integer, integer) IS
    'The login limit that refuses this email and address now, and for how many seconds.';

-- The same for registrations: at most `per_hour` per client address in any hour.
CREATE OR REPLACE FUNCTION taskflow_registration_refusal(client_address text, per_hour integer)
RETURNS TABLE (limit_name text, retry_after_seconds double precision)
LANGUAGE sql STABLE AS $$
    SELECT 'register_per_address_per_hour',
           extract(epoch FROM r.at + interval '1 hour' - now())::double precision
    FROM registration_attempts r
    WHERE r.address = client_address AND r.at > now() - interval '1 hour'
    ORDER BY r.at DESC OFFSET per_hour - 1 LIMIT 1
$$;
COMMENT ON FUNCTION taskflow_registration_refusal(text, integer) IS
    'Whether this client address is over its registrations per hour, and for how many seconds.';

-- Rows that no longer count for anything: failures older than the login
-- window, registrations older than an hour, revocations of tokens that have
-- expired anyway. At most `batch_limit` rows of each table per call, so a
-- backlog is worked off in bounded steps; returns how many rows went. Safe
-- to run from several processes at once (a row deleted twice is skipped).
CREATE OR REPLACE FUNCTION taskflow_prune_accounts(
    login_window_seconds double precision, batch_limit integer
) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    WITH failures AS (
        DELETE FROM login_failures
        WHERE ctid = ANY (ARRAY(
            SELECT f.ctid FROM login_failures f
            WHERE f.at < now() - make_interval(secs => login_window_seconds)
            LIMIT batch_limit))
        RETURNING 1
    ), registrations AS (
        DELETE FROM registration_attempts
        WHERE ctid = ANY (ARRAY(
            SELECT r.ctid FROM registration_attempts r
            WHERE r.at < now() - interval '1 hour'
            LIMIT batch_limit))
        RETURNING 1
    ), revocations AS (
        DELETE FROM revoked_tokens
        WHERE jti IN (SELECT t.jti FROM revoked_tokens t WHERE t.expires_at < now()
                      LIMIT batch_limit)
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM failures) + (SELECT count(*) FROM registrations)
           + (SELECT count(*) FROM revocations)
$$;
COMMENT ON FUNCTION taskflow_prune_accounts(double precision, integer) IS
    'Delete throttle rows past their window and revocations of expired tokens, in bounded batches.';
