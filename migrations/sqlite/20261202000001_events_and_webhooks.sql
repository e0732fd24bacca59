-- Every state change of a job and its targets, and every failed try, in
-- the order they happened: what `/api/v1/jobs/{id}/events` streams (and
-- replays from any `Last-Event-ID`). Written by triggers, in the very
-- transaction that makes the change, so no change can go unrecorded.
CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id   TEXT NOT NULL,
    at       TEXT NOT NULL,
    kind     TEXT NOT NULL,      -- job, target, attempt, cancel
    position INTEGER,            -- the target's, for target and attempt events
    data     TEXT NOT NULL       -- JSON
);
CREATE INDEX events_by_job ON events (job_id, id);

CREATE TRIGGER events_job_created AFTER INSERT ON jobs BEGIN
    INSERT INTO events (job_id, at, kind, data)
    VALUES (NEW.id, NEW.created_at, 'job', json_object('status', NEW.status));
END;

CREATE TRIGGER events_job_status AFTER UPDATE OF status ON jobs
WHEN OLD.status <> NEW.status BEGIN
    INSERT INTO events (job_id, at, kind, data)
    VALUES (NEW.id, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', 'job',
            json_object('status', NEW.status, 'error', NEW.error));
END;

CREATE TRIGGER events_job_cancel AFTER UPDATE OF cancel_requested ON jobs
WHEN NEW.cancel_requested AND NOT OLD.cancel_requested BEGIN
    INSERT INTO events (job_id, at, kind, data)
    VALUES (NEW.id, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', 'cancel',
            json_object('cancel_requested', json('true')));
END;

-- What a `target` event says of a target: one definition for the event
-- of its creation and of each change of its status.
CREATE VIEW target_event_rows AS
SELECT id, job_id, position,
       json_object('status', status, 'reference', reference, 'digest', digest,
                   'up_to_date', json(CASE WHEN up_to_date THEN 'true' ELSE 'false' END),
                   'error', error, 'attempts', attempts) AS data
FROM targets;

-- A target's first event names it (its reference, unless the content
-- strategy binds that later) before anything happens to it.
CREATE TRIGGER events_target_created AFTER INSERT ON targets BEGIN
    INSERT INTO events (job_id, at, kind, position, data)
    SELECT job_id, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', 'target', position, data
    FROM target_event_rows WHERE id = NEW.id;
END;

CREATE TRIGGER events_target_status AFTER UPDATE OF status ON targets
WHEN OLD.status <> NEW.status BEGIN
    INSERT INTO events (job_id, at, kind, position, data)
    SELECT job_id, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', 'target', position, data
    FROM target_event_rows WHERE id = NEW.id;
END;

CREATE TRIGGER events_target_attempt AFTER UPDATE OF attempt_errors ON targets
WHEN json_array_length(NEW.attempt_errors) > json_array_length(OLD.attempt_errors) BEGIN
    INSERT INTO events (job_id, at, kind, position, data)
    VALUES (NEW.job_id, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', 'attempt', NEW.position,
            json_extract(NEW.attempt_errors, '$[#-1]'));
END;

-- Jobs recorded before events: their history starts where they are now.
INSERT INTO events (job_id, at, kind, data)
SELECT id, COALESCE(finished_at, started_at, created_at), 'job', json_object('status', status)
FROM jobs ORDER BY id;

-- A job may name a URL to be called when it ends.
ALTER TABLE jobs ADD COLUMN callback_url TEXT;

-- Webhook deliveries: made when a job with a callback URL ends, tried until
-- the receiver accepts or --webhook-max-age passes; every attempt kept.
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY NOT NULL,  -- sent as X-Publishd-Delivery
    job_id          TEXT NOT NULL,
    url             TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    state           TEXT NOT NULL,              -- pending, delivered, failed
    attempts        TEXT NOT NULL DEFAULT '[]', -- JSON: [{attempt, at, status, error}]
    next_attempt_at TEXT,
    body            TEXT                        -- the exact JSON sent, made at the first attempt
);
CREATE INDEX deliveries_due ON deliveries (state, next_attempt_at);
CREATE INDEX deliveries_by_job ON deliveries (job_id);

CREATE TRIGGER deliveries_on_finish AFTER UPDATE OF status ON jobs
WHEN NEW.callback_url IS NOT NULL
 AND NEW.status IN ('succeeded', 'failed', 'cancelled')
 AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled') BEGIN
    INSERT INTO deliveries (id, job_id, url, created_at, state, next_attempt_at)
    VALUES (lower(hex(randomblob(16))), NEW.id, NEW.callback_url,
            strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', 'pending',
            strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z');
END;

-- Retention finds finished jobs by when they ended.
CREATE INDEX jobs_by_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX audit_by_time ON audit (at);
