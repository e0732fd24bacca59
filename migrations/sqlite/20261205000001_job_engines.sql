-- The engine a job's local sources are on, by the name instances give it
-- (`GET /api/v1/engines`). Null: the job has registry sources only. One
-- publishd owns a SQLite file, so it claims every job whatever the name
-- (a renamed engine strands nothing); the name matters on PostgreSQL.
ALTER TABLE jobs ADD COLUMN engine TEXT;
