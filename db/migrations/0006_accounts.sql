-- Accounts that can be taken back, and throttles on logins and registrations.
--
-- Tokens are JWTs checked without a query per request, so taking one back
-- means telling every API process. The database keeps what is taken back and
-- says so on channel taskflow_accounts; each API process keeps the state of
-- the users it serves in memory and applies what it hears
-- (taskflow/api/revocations.py). Whoever makes the change, the API or a
-- person in psql, the triggers below send it:
--
-- * users.token_version: every token carries the version of its user at
--   login (claim "ver"); a token of another version is refused. A new
--   password_hash bumps it (so a password reset in psql signs the user out
--   everywhere too), and an operator can sign a user out of every session:
--     UPDATE users SET token_version = token_version + 1 WHERE id = 7;
--   It only ever grows: lowering it would bring old tokens back.
-- * A deleted user: every token of theirs is refused.
-- * revoked_tokens: one token taken back (POST /api/logout), kept until the
--   token would have expired anyway, then pruned by the API.
--
-- Throttles (SPEC §8), shared by every API process, so kept here:
-- login_failures (failed logins, per email and per client address) and
-- registration_attempts (per client address). Emails are kept as
-- taskflow_email_digest(email), never in clear; an operator who unlocks an
-- account runs
--   DELETE FROM login_failures WHERE email_digest = taskflow_email_digest('a@example.com');
-- Rows older than their window are pruned by the API.
--
-- The functions these triggers call live in db/functions/30_accounts.sql
-- (repeatable), which `taskflow migrate` applies right after this file. The
-- placeholders below only exist so that the triggers can be declared here;
-- they fail loudly rather than drop a notification, should they ever run.

ALTER TABLE users ADD COLUMN token_version integer NOT NULL DEFAULT 0
    CONSTRAINT users_token_version_not_negative CHECK (token_version >= 0);
COMMENT ON COLUMN users.token_version IS
    'Tokens of any other version are refused; bumped by a new password_hash. Never lower it.';

CREATE TABLE revoked_tokens (
    jti        text PRIMARY KEY CHECK (length(jti) BETWEEN 1 AND 64),
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revoked_tokens_user_idx ON revoked_tokens (user_id);
CREATE INDEX revoked_tokens_expires_idx ON revoked_tokens (expires_at);
COMMENT ON TABLE revoked_tokens IS
    'Single tokens taken back (logout), until they expire; pruned by the API after.';

CREATE TABLE login_failures (
    email_digest bytea NOT NULL,
    address      text NOT NULL CHECK (length(address) <= 100),
    at           timestamptz NOT NULL DEFAULT now()
);
-- Each throttle reads at most its limit's worth of rows, newest first.
CREATE INDEX login_failures_email_idx ON login_failures (email_digest, at);
CREATE INDEX login_failures_address_idx ON login_failures (address, at);
CREATE INDEX login_failures_at_idx ON login_failures (at);
COMMENT ON TABLE login_failures IS
    'Failed logins, per email digest and client address; pruned after login_window_seconds.';

CREATE TABLE registration_attempts (
    address text NOT NULL CHECK (length(address) <= 100),
    at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX registration_attempts_address_idx ON registration_attempts (address, at);
CREATE INDEX registration_attempts_at_idx ON registration_attempts (at);
COMMENT ON TABLE registration_attempts IS
    'Registrations that ran a password hash, per client address; pruned after an hour.';

CREATE FUNCTION taskflow_users_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'taskflow_users_before_update: apply db/functions/30_accounts.sql';
END
$$;
CREATE FUNCTION taskflow_users_notify_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'taskflow_users_notify_version: apply db/functions/30_accounts.sql';
END
$$;
CREATE FUNCTION taskflow_users_notify_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'taskflow_users_notify_deleted: apply db/functions/30_accounts.sql';
END
$$;
CREATE FUNCTION taskflow_revoked_tokens_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'taskflow_revoked_tokens_notify: apply db/functions/30_accounts.sql';
END
$$;

CREATE TRIGGER users_before_update BEFORE UPDATE ON users
    FOR EACH ROW
    WHEN (OLD.password_hash IS DISTINCT FROM NEW.password_hash
          OR OLD.token_version IS DISTINCT FROM NEW.token_version)
    EXECUTE FUNCTION taskflow_users_before_update();
CREATE TRIGGER users_notify_version AFTER UPDATE ON users
    FOR EACH ROW
    WHEN (OLD.token_version IS DISTINCT FROM NEW.token_version)
    EXECUTE FUNCTION taskflow_users_notify_version();
CREATE TRIGGER users_notify_deleted AFTER DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION taskflow_users_notify_deleted();
CREATE TRIGGER revoked_tokens_notify AFTER INSERT ON revoked_tokens
    FOR EACH ROW EXECUTE FUNCTION taskflow_revoked_tokens_notify();
