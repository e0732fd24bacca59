-- Jobs belong to the token that submitted them. `submitted_by` is the
-- token's name ('' when the service has no tokens); idempotency keys are
-- unique per submitter, so a replay can never reach another token's job.
-- SQLite cannot drop a column's UNIQUE constraint, so the table is rebuilt
-- the way SQLite documents it: migrations run on a connection without
-- foreign key enforcement, and the store checks the keys afterwards.

CREATE TABLE jobs_new (
    id               TEXT PRIMARY KEY NOT NULL,  -- uuid v7: sorts by creation time
    status           TEXT NOT NULL,
    repo             TEXT NOT NULL,
    repo_mode        TEXT NOT NULL,
    submitted_by     TEXT NOT NULL DEFAULT '',
    idempotency_key  TEXT,
    spec_hash        TEXT NOT NULL,              -- sha256 of the canonical request body
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    force            INTEGER NOT NULL DEFAULT 0,  -- push even when the registry is up to date
    -- The job came with its own registry credentials. They are kept in memory
    -- only, never here; after a restart they are gone and the job must be resubmitted.
    has_registry_auth INTEGER NOT NULL DEFAULT 0,
    -- The submitter's scope lets the job use the service's own docker config
    -- for the repo's registry (else it pushes anonymously or with its own).
    use_service_credentials INTEGER NOT NULL DEFAULT 1,
    -- JSON object: labels every source must carry (the submitter's scope).
    required_labels  TEXT NOT NULL DEFAULT '{}',
    error            TEXT,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT
);

INSERT INTO jobs_new (id, status, repo, repo_mode, idempotency_key, spec_hash, cancel_requested,
                      force, has_registry_auth, error, created_at, started_at, finished_at)
SELECT id, status, repo, repo_mode, idempotency_key, spec_hash, cancel_requested,
       force, has_registry_auth, error, created_at, started_at, finished_at
FROM jobs;

DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;

CREATE INDEX jobs_by_status ON jobs (status, id);
CREATE INDEX jobs_by_submitter ON jobs (submitted_by, id);
CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (submitted_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Fair share: claims go to the submitter with the least `pass`, which grows
-- by 1/weight with each claim (stride scheduling), so one submitter's large
-- job cannot hold back another's.
CREATE TABLE owners (
    name   TEXT PRIMARY KEY NOT NULL,
    weight INTEGER NOT NULL DEFAULT 1,
    pass   REAL NOT NULL DEFAULT 0
);

-- Every submission (accepted or refused), cancel and token reload. Never a
-- secret: no token, no credential.
CREATE TABLE audit (
    id      TEXT PRIMARY KEY NOT NULL,  -- uuid v7: sorts by time
    at      TEXT NOT NULL,
    actor   TEXT,                       -- the token's name; NULL without tokens
    action  TEXT NOT NULL,              -- job.submit, job.cancel, tokens.reload
    outcome TEXT NOT NULL,              -- accepted, replayed, refused, requested, failed …
    job_id  TEXT,
    detail  TEXT NOT NULL DEFAULT '{}'  -- JSON: status, field, rule, message
);
