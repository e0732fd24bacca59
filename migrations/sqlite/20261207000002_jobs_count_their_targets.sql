-- A job counts its targets by status, kept by triggers in the statement that
-- changes a target, and its status, error and times follow from the counts
-- there: every change of a target is one statement, with no read of the
-- job's targets by the store and no lock held while the store thinks.
-- A job's events are numbered from its own counter (`last_event`): a stream
-- resumes per job, and no row is written by every job's changes. `counts`
-- keeps what the metrics, the engines list and the queue limit read (jobs
-- and targets by status and engine) instead of counting rows. The same
-- schema in migrations/postgres/, whose rows are spread over `shard`s.

ALTER TABLE jobs ADD COLUMN pending_targets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN active_targets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN succeeded_targets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN failed_targets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cancelled_targets INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN last_event INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET
    pending_targets = (SELECT count(*) FROM targets t
                       WHERE t.job_id = jobs.id AND t.status = 'pending'),
    active_targets = (SELECT count(*) FROM targets t
                      WHERE t.job_id = jobs.id AND t.status IN ('tagging', 'pushing', 'untagging')),
    succeeded_targets = (SELECT count(*) FROM targets t
                         WHERE t.job_id = jobs.id AND t.status = 'succeeded'),
    failed_targets = (SELECT count(*) FROM targets t
                      WHERE t.job_id = jobs.id AND t.status = 'failed'),
    cancelled_targets = (SELECT count(*) FROM targets t
                         WHERE t.job_id = jobs.id AND t.status = 'cancelled');

-- The engine of the target's job, so that a claim finds its next target
-- through an index.
ALTER TABLE targets ADD COLUMN engine TEXT;
UPDATE targets SET engine = (SELECT engine FROM jobs WHERE jobs.id = targets.job_id);

DROP TRIGGER events_job_created;
DROP TRIGGER events_job_status;
DROP TRIGGER events_job_cancel;
DROP TRIGGER events_target_created;
DROP TRIGGER events_target_status;
DROP TRIGGER events_target_attempt;
DROP TRIGGER deliveries_on_finish;
DROP TRIGGER pending_targets_insert;
DROP TRIGGER pending_targets_update;
DROP TRIGGER pending_targets_delete;
DROP TABLE pending_targets;

-- Events keyed by job: ids that were global increase within each job, so
-- they are kept; each job's counter starts from its last.
CREATE TABLE events_new (
    job_id   TEXT NOT NULL,
    id       INTEGER NOT NULL,   -- 1, 2, … within the job: what `Last-Event-ID` names
    at       TEXT NOT NULL,
    kind     TEXT NOT NULL,      -- job, target, attempt, cancel
    position INTEGER,            -- the target's, for target and attempt events
    data     TEXT NOT NULL,      -- JSON
    PRIMARY KEY (job_id, id)
) WITHOUT ROWID;
INSERT INTO events_new (job_id, id, at, kind, position, data)
SELECT job_id, id, at, kind, position, data FROM events;
UPDATE jobs SET last_event = COALESCE((SELECT max(id) FROM events WHERE events.job_id = jobs.id), 0);
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;

CREATE TABLE counts (
    kind   TEXT NOT NULL,     -- job, target
    status TEXT NOT NULL,
    engine TEXT NOT NULL,     -- the job's engine; '' for none
    shard  INTEGER NOT NULL,  -- always 0 here: one writer
    n      INTEGER NOT NULL,
    PRIMARY KEY (kind, status, engine, shard)
) WITHOUT ROWID;
INSERT INTO counts (kind, status, engine, shard, n)
SELECT 'job', status, COALESCE(engine, ''), 0, count(*) FROM jobs
GROUP BY status, COALESCE(engine, '');
INSERT INTO counts (kind, status, engine, shard, n)
SELECT 'target', status, COALESCE(engine, ''), 0, count(*) FROM targets
GROUP BY status, COALESCE(engine, '');

-- Claims go through the owners: a submitter from before owners existed
-- (jobs of a database migrated since) gets its row.
INSERT INTO owners (name, weight, pass)
SELECT DISTINCT submitted_by, 1, 0 FROM targets
WHERE submitted_by NOT IN (SELECT name FROM owners);

-- Claims take the least-served submitter's first target: per submitter, in
-- job and position order, through this index.
DROP INDEX targets_pending;
CREATE INDEX targets_to_claim ON targets (submitted_by, job_id, position)
    WHERE status = 'pending';

CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs BEGIN
    INSERT INTO events (job_id, id, at, kind, data)
    SELECT NEW.id, last_event + 1, NEW.created_at, 'job', json_object('status', NEW.status)
    FROM jobs WHERE id = NEW.id;
    UPDATE jobs SET last_event = last_event + 1 WHERE id = NEW.id;
    INSERT INTO counts (kind, status, engine, shard, n)
    VALUES ('job', NEW.status, COALESCE(NEW.engine, ''), 0, 1)
    ON CONFLICT (kind, status, engine, shard) DO UPDATE SET n = n + excluded.n;
END;

-- What the new status means for the job's error and times, then its event
-- (which says the error), its count, and its webhook when it ends.
CREATE TRIGGER jobs_status_changed AFTER UPDATE OF status ON jobs
WHEN OLD.status <> NEW.status BEGIN
    UPDATE jobs SET
        error = CASE NEW.status
            WHEN 'failed' THEN failed_targets || ' of '
                || (pending_targets + active_targets + succeeded_targets + failed_targets
                    + cancelled_targets) || ' targets failed'
            WHEN 'cancelled' THEN 'cancelled' END,
        started_at = CASE WHEN NEW.status <> 'queued'
            THEN COALESCE(started_at, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
            ELSE started_at END,
        finished_at = CASE WHEN NEW.status IN ('succeeded', 'failed', 'cancelled')
            THEN COALESCE(finished_at, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z') END
    WHERE id = NEW.id;
    INSERT INTO events (job_id, id, at, kind, data)
    SELECT id, last_event + 1, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', 'job',
           json_object('status', status, 'error', error)
    FROM jobs WHERE id = NEW.id;
    UPDATE jobs SET last_event = last_event + 1 WHERE id = NEW.id;
    INSERT INTO counts (kind, status, engine, shard, n)
    VALUES ('job', OLD.status, COALESCE(NEW.engine, ''), 0, -1), ('job', NEW.status, COALESCE(NEW.engine, ''), 0, 1)
    ON CONFLICT (kind, status, engine, shard) DO UPDATE SET n = n + excluded.n;
    INSERT INTO deliveries (id, job_id, url, created_at, state, next_attempt_at)
    SELECT lower(hex(randomblob(16))), NEW.id, NEW.callback_url,
           strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', 'pending',
           strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'
    WHERE NEW.callback_url IS NOT NULL
      AND NEW.status IN ('succeeded', 'failed', 'cancelled')
      AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled');
END;

CREATE TRIGGER jobs_cancel_requested AFTER UPDATE OF cancel_requested ON jobs
WHEN NEW.cancel_requested AND NOT OLD.cancel_requested BEGIN
    INSERT INTO events (job_id, id, at, kind, data)
    SELECT id, last_event + 1, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', 'cancel',
           json_object('cancel_requested', json('true'))
    FROM jobs WHERE id = NEW.id;
    UPDATE jobs SET last_event = last_event + 1 WHERE id = NEW.id;
END;

CREATE TRIGGER jobs_deleted AFTER DELETE ON jobs BEGIN
    INSERT INTO counts (kind, status, engine, shard, n)
    VALUES ('job', OLD.status, COALESCE(OLD.engine, ''), 0, -1)
    ON CONFLICT (kind, status, engine, shard) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER targets_inserted AFTER INSERT ON targets BEGIN
    INSERT INTO events (job_id, id, at, kind, position, data)
    SELECT NEW.job_id, j.last_event + 1, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z',
           'target', NEW.position, v.data
    FROM jobs j, target_event_rows v WHERE j.id = NEW.job_id AND v.id = NEW.id;
    UPDATE jobs SET
        last_event = last_event + 1,
        pending_targets = pending_targets + (NEW.status = 'pending'),
        active_targets = active_targets + (NEW.status IN ('tagging', 'pushing', 'untagging')),
        succeeded_targets = succeeded_targets + (NEW.status = 'succeeded'),
        failed_targets = failed_targets + (NEW.status = 'failed'),
        cancelled_targets = cancelled_targets + (NEW.status = 'cancelled')
    WHERE id = NEW.job_id;
    INSERT INTO counts (kind, status, engine, shard, n)
    VALUES ('target', NEW.status, COALESCE(NEW.engine, ''), 0, 1)
    ON CONFLICT (kind, status, engine, shard) DO UPDATE SET n = n + excluded.n;
END;

-- A target's event, its job's counts and then its job's status: all
-- terminal is succeeded (every target did), cancelled (a cancel was asked
-- for and cancelled some) or failed; all pending is queued; else running.
-- `domain::status::job_status` says the same, and a test holds them equal.
CREATE TRIGGER targets_status_changed AFTER UPDATE OF status ON targets
WHEN OLD.status <> NEW.status BEGIN
    INSERT INTO events (job_id, id, at, kind, position, data)
    SELECT NEW.job_id, j.last_event + 1, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z',
           'target', NEW.position, v.data
    FROM jobs j, target_event_rows v WHERE j.id = NEW.job_id AND v.id = NEW.id;
    UPDATE jobs SET
        last_event = last_event + 1,
        pending_targets = pending_targets + (NEW.status = 'pending') - (OLD.status = 'pending'),
        active_targets = active_targets
            + (NEW.status IN ('tagging', 'pushing', 'untagging'))
            - (OLD.status IN ('tagging', 'pushing', 'untagging')),
        succeeded_targets = succeeded_targets
            + (NEW.status = 'succeeded') - (OLD.status = 'succeeded'),
        failed_targets = failed_targets + (NEW.status = 'failed') - (OLD.status = 'failed'),
        cancelled_targets = cancelled_targets
            + (NEW.status = 'cancelled') - (OLD.status = 'cancelled')
    WHERE id = NEW.job_id;
    UPDATE jobs SET status = CASE
        WHEN pending_targets + active_targets = 0 THEN CASE
            WHEN failed_targets + cancelled_targets = 0 THEN 'succeeded'
            WHEN cancel_requested AND cancelled_targets > 0 THEN 'cancelled'
            ELSE 'failed' END
        WHEN active_targets + succeeded_targets + failed_targets + cancelled_targets = 0
            THEN 'queued'
        ELSE 'running' END
    WHERE id = NEW.job_id;
    INSERT INTO counts (kind, status, engine, shard, n)
    VALUES ('target', OLD.status, COALESCE(NEW.engine, ''), 0, -1),
           ('target', NEW.status, COALESCE(NEW.engine, ''), 0, 1)
    ON CONFLICT (kind, status, engine, shard) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER targets_attempt_failed AFTER UPDATE OF attempt_errors ON targets
WHEN json_array_length(NEW.attempt_errors) > json_array_length(OLD.attempt_errors) BEGIN
    INSERT INTO events (job_id, id, at, kind, position, data)
    SELECT NEW.job_id, last_event + 1, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z',
           'attempt', NEW.position, json_extract(NEW.attempt_errors, '$[#-1]')
    FROM jobs WHERE id = NEW.job_id;
    UPDATE jobs SET last_event = last_event + 1 WHERE id = NEW.job_id;
END;

-- Retention deletes a finished job's targets before the job: only the
-- counts change (the job's own would make it look changed).
CREATE TRIGGER targets_deleted AFTER DELETE ON targets BEGIN
    INSERT INTO counts (kind, status, engine, shard, n)
    VALUES ('target', OLD.status, COALESCE(OLD.engine, ''), 0, -1)
    ON CONFLICT (kind, status, engine, shard) DO UPDATE SET n = n + excluded.n;
END;
