-- The columns and indexes PostgreSQL's schema has, so that one store's SQL
-- runs on both (store/sql/) and a test compares the two schemas
-- (store/tests.rs, `schemas_agree`).

-- The instance that holds a job's own registry credentials (PostgreSQL's
-- claims read it; one SQLite file has one instance).
ALTER TABLE jobs ADD COLUMN accepted_by TEXT;

-- A target's submitter, so that "has this submitter targets waiting or
-- under way?" (asked at every submission) is one probe of an index.
ALTER TABLE targets ADD COLUMN submitted_by TEXT NOT NULL DEFAULT '';
UPDATE targets SET submitted_by = (SELECT submitted_by FROM jobs WHERE jobs.id = targets.job_id);

CREATE INDEX targets_pending ON targets (job_id, position) WHERE status = 'pending';
CREATE INDEX targets_active_by_submitter ON targets (submitted_by, status)
    WHERE status IN ('pending', 'tagging', 'pushing', 'untagging');
-- Per-reference exclusion, kept by the claims' own statements, also said
-- by the schema: a second target of one reference can never be in flight.
CREATE UNIQUE INDEX targets_one_in_flight_per_reference ON targets (reference_key)
    WHERE status IN ('tagging', 'pushing', 'untagging');
CREATE INDEX seeds_by_time ON seeds (recorded_at);
