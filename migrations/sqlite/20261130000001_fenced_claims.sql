-- Claims are fenced: every write a lane makes names its claim's token, and
-- a write for a claim that is no longer the target's changes nothing.
ALTER TABLE targets ADD COLUMN claim_token TEXT;
-- The lease's end on the owning process's monotonic clock (milliseconds
-- since its store opened): a wall-clock step cannot expire or extend it.
-- One process owns the database (its lock file), and every target in
-- flight when it starts is recovered before any claim, so no lease outlives
-- the clock it was measured on.
ALTER TABLE targets ADD COLUMN lease_expires_ms INTEGER;
ALTER TABLE targets DROP COLUMN lease_until;
-- Runs started (claims) that did not end by themselves counted against
-- --max-target-runs: a target that keeps killing its lane or the process
-- is failed as a dead letter.
ALTER TABLE targets ADD COLUMN runs INTEGER NOT NULL DEFAULT 0;
ALTER TABLE targets ADD COLUMN dead_letter INTEGER NOT NULL DEFAULT 0;
-- What the last run that made an image recorded, kept when a new run clears
-- its own: a load still in flight when a process died can finish later,
-- and the next run must know that image is not the user's.
ALTER TABLE targets ADD COLUMN previous_prior_image_id TEXT;
ALTER TABLE targets ADD COLUMN previous_created_image_id TEXT;
-- A target waiting (after a restart) for its job's credentials to be
-- resubmitted: not claimed again before `not_before`, failed after
-- `credentials_wait_until`.
ALTER TABLE targets ADD COLUMN not_before TEXT;
ALTER TABLE targets ADD COLUMN credentials_wait_until TEXT;
