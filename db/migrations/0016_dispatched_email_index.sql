-- The email rate (SPEC §8) counts a user's send_email tasks on their way to a
-- worker at every visit of the fair pick, whether or not the user sends
-- email. dispatched_tasks churns at the drain's rate (every picked task is
-- inserted, then deleted by its claim), and a count over
-- dispatched_tasks_user_idx walked every dead entry the user's drained tasks
-- left there until vacuum came by: right after a 20,000-task drain, an idle
-- worker's claim took 1.5 ms instead of 0.96. Only send_email rows go into
-- this index, so the count is one probe for a user without emails in flight,
-- and walks only the dead entries of email traffic, which the rate itself
-- keeps small.
CREATE INDEX dispatched_tasks_email_user_idx ON dispatched_tasks (user_id)
    WHERE type = 'send_email';
