-- Creation limits (SPEC §8): a user's tasks not yet finished
-- (user_max_active_tasks) and send_email tasks created per UTC day
-- (email_per_user_per_day). Checked by taskflow_admit()
-- (db/functions/55_creation_limits.sql) in the statement that inserts the
-- tasks, so a refused create creates nothing.
--
-- The daily email count is kept here rather than counted from tasks: a user
-- who deletes finished tasks must not get their quota back.
CREATE TABLE user_email_days (
    user_id  bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    day      date NOT NULL,
    created  integer NOT NULL CHECK (created >= 0),
    PRIMARY KEY (user_id, day)
);
COMMENT ON TABLE user_email_days IS
    'send_email tasks created per user per UTC day, for email_per_user_per_day.';
