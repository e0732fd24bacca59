-- One row per accepted publish job. The job's status is kept in step with its
-- targets by the store, in the same transaction that changes a target.
CREATE TABLE jobs (
    id               TEXT PRIMARY KEY NOT NULL,  -- uuid v7: sorts by creation time
    status           TEXT NOT NULL,
    repo             TEXT NOT NULL,
    repo_mode        TEXT NOT NULL,
    idempotency_key  TEXT UNIQUE,
    spec_hash        TEXT NOT NULL,              -- sha256 of the canonical request body
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    force            INTEGER NOT NULL DEFAULT 0,  -- push even when the registry is up to date
    -- The job came with its own registry credentials. They are kept in memory
    -- only, never here; after a restart they are gone and the job must be resubmitted.
    has_registry_auth INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT
);

CREATE INDEX jobs_by_status ON jobs (status, id);

-- One row per image x tag. `reference` is NULL until known (content tags need
-- the source image id).
CREATE TABLE targets (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           TEXT NOT NULL REFERENCES jobs (id),
    position         INTEGER NOT NULL,
    image_name       TEXT,
    source           TEXT NOT NULL,
    strategy         TEXT NOT NULL,
    tag              TEXT,
    reference        TEXT,
    status           TEXT NOT NULL,
    digest           TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    attempt_errors   TEXT NOT NULL DEFAULT '[]',  -- JSON array: every failed try, in order
    up_to_date       INTEGER NOT NULL DEFAULT 0,  -- succeeded without a push (werf's rule)
    warnings         TEXT NOT NULL DEFAULT '[]',  -- JSON array of strings
    prior_image_id   TEXT,                        -- what REFERENCE named locally before the tag step
    created_image_id TEXT,                        -- the labelled image the tag step made
    lease_until      TEXT,                        -- a lane working on the target renews this
    started_at       TEXT,
    finished_at      TEXT,
    UNIQUE (job_id, position)
);

CREATE INDEX targets_claimable ON targets (status, job_id, position);
CREATE INDEX targets_by_reference ON targets (reference, status);

-- One row that /readyz rewrites: proves the database still takes writes
-- (not locked by another process, not read-only, not out of space).
CREATE TABLE liveness (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at TEXT NOT NULL
);
