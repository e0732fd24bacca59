-- The engine a job's local sources are on: only instances that drive it
-- claim the job's targets. Null: the job has registry sources only, which
-- any instance publishes.
ALTER TABLE jobs ADD COLUMN engine TEXT;

-- The publishd instances working on this database and the engine each
-- drives, with a heartbeat: what `GET /api/v1/engines` answers. SQLite
-- has one at a time; the table is kept the same as PostgreSQL's.
CREATE TABLE instances (
    id           TEXT PRIMARY KEY NOT NULL,
    engine       TEXT,
    address      TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
