-- A job counts its targets by status, kept by triggers in the statement that
-- changes a target, and its status, error and times follow from the counts
-- there: every change of a target is one statement, so no transaction
-- holds a lock while its client is on the network. A job's events are
-- numbered from its own counter (`last_event`), under its own row lock:
-- ids are gap-free in commit order per job (a stream resumes per job), and
-- no row is written by every job's changes (the global `event_counter`
-- serialised every commit). `counts` keeps what the metrics, the engines
-- list and the queue limit read, spread over shards by backend so that
-- concurrent writers rarely meet on a row. The same schema in
-- migrations/sqlite/20261207000002_jobs_count_their_targets.sql.

ALTER TABLE jobs
    ADD COLUMN pending_targets BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN active_targets BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN succeeded_targets BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN failed_targets BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN cancelled_targets BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN last_event BIGINT NOT NULL DEFAULT 0;
UPDATE jobs SET
    pending_targets = c.pending, active_targets = c.active, succeeded_targets = c.succeeded,
    failed_targets = c.failed, cancelled_targets = c.cancelled
FROM (SELECT job_id,
             count(*) FILTER (WHERE status = 'pending') AS pending,
             count(*) FILTER (WHERE status IN ('tagging', 'pushing', 'untagging')) AS active,
             count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
             count(*) FILTER (WHERE status = 'failed') AS failed,
             count(*) FILTER (WHERE status = 'cancelled') AS cancelled
      FROM targets GROUP BY job_id) c
WHERE c.job_id = jobs.id;

-- The engine of the target's job, so that a claim finds its next target
-- through an index.
ALTER TABLE targets ADD COLUMN engine TEXT COLLATE "C";
UPDATE targets SET engine = jobs.engine FROM jobs WHERE jobs.id = targets.job_id;

DROP TRIGGER a_pending_targets_insert ON targets;
DROP TRIGGER a_pending_targets_update ON targets;
DROP TRIGGER a_pending_targets_delete ON targets;
DROP TRIGGER events_numbered ON events;
DROP TRIGGER events_job_created ON jobs;
DROP TRIGGER events_job_status ON jobs;
DROP TRIGGER events_job_cancel ON jobs;
DROP TRIGGER events_target_created ON targets;
DROP TRIGGER events_target_status ON targets;
DROP TRIGGER events_target_attempt ON targets;
DROP TRIGGER deliveries_on_finish ON jobs;
DROP FUNCTION pending_targets_count();
DROP FUNCTION events_number();
DROP FUNCTION events_of_job();
DROP FUNCTION events_of_target();
DROP FUNCTION deliveries_on_finish();
DROP TABLE pending_targets;
DROP TABLE event_counter;

-- Events keyed by job: ids that were global increase within each job, so
-- they are kept; each job's counter starts from its last.
DELETE FROM events WHERE id IS NULL;
DROP INDEX events_unnumbered;
DROP INDEX events_by_job;
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events DROP CONSTRAINT events_id_key;
ALTER TABLE events DROP COLUMN seq, DROP COLUMN tx;
ALTER TABLE events ALTER COLUMN id SET NOT NULL;
ALTER TABLE events ADD PRIMARY KEY (job_id, id);
UPDATE jobs SET last_event = e.last FROM (SELECT job_id, max(id) AS last FROM events GROUP BY job_id) e
WHERE e.job_id = jobs.id;

CREATE TABLE counts (
    kind   TEXT COLLATE "C" NOT NULL,  -- job, target
    status TEXT COLLATE "C" NOT NULL,
    engine TEXT COLLATE "C" NOT NULL,  -- the job's engine; '' for none
    shard  BIGINT NOT NULL,            -- the writing backend's (`publishd_count`)
    n      BIGINT NOT NULL,
    PRIMARY KEY (kind, status, engine, shard)
);
INSERT INTO counts (kind, status, engine, shard, n)
SELECT 'job', status, COALESCE(engine, ''), 0, count(*) FROM jobs
GROUP BY status, COALESCE(engine, '');
INSERT INTO counts (kind, status, engine, shard, n)
SELECT 'target', status, COALESCE(engine, ''), 0, count(*) FROM targets
GROUP BY status, COALESCE(engine, '');

-- Claims go through the owners: every submitter of a target has its row.
INSERT INTO owners (name, weight, pass)
SELECT DISTINCT submitted_by, 1, 0 FROM targets
WHERE submitted_by NOT IN (SELECT name FROM owners);

-- Claims take the least-served submitter's first target on this
-- instance's engine (or on none): per engine and submitter, in job and
-- position order, through this index.
DROP INDEX targets_pending;
CREATE INDEX targets_to_claim ON targets (engine, submitted_by, job_id, position)
    WHERE status = 'pending';

-- Adds `delta` to a count, in the row of this backend's shard.
CREATE FUNCTION publishd_count(kind TEXT, status TEXT, engine TEXT, delta BIGINT)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO counts (kind, status, engine, shard, n)
    VALUES (kind, status, COALESCE(engine, ''), pg_backend_pid() % 16, delta)
    ON CONFLICT (kind, status, engine, shard) DO UPDATE SET n = counts.n + excluded.n
$$;

-- The job's next event id, under its row's lock.
CREATE FUNCTION publishd_next_event(job TEXT) RETURNS BIGINT LANGUAGE sql AS $$
    UPDATE jobs SET last_event = last_event + 1 WHERE id = job RETURNING last_event
$$;

-- What the new status means for the job's error and times, then its event
-- (which says the error), its count, and its webhook when it ends.
CREATE FUNCTION jobs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    job jobs;
    changed_at TEXT := publishd_now();
BEGIN
    IF TG_ARGV[0] = 'inserted' THEN
        INSERT INTO events (job_id, id, at, kind, data)
        VALUES (NEW.id, publishd_next_event(NEW.id), NEW.created_at, 'job',
                json_build_object('status', NEW.status)::text);
        PERFORM publishd_count('job', NEW.status, NEW.engine, 1);
    ELSIF TG_ARGV[0] = 'deleted' THEN
        PERFORM publishd_count('job', OLD.status, OLD.engine, -1);
    ELSIF TG_ARGV[0] = 'status' THEN
        UPDATE jobs SET
            error = CASE NEW.status
                WHEN 'failed' THEN failed_targets || ' of '
                    || (pending_targets + active_targets + succeeded_targets + failed_targets
                        + cancelled_targets) || ' targets failed'
                WHEN 'cancelled' THEN 'cancelled' END,
            started_at = CASE WHEN NEW.status <> 'queued' THEN COALESCE(started_at, changed_at)
                              ELSE started_at END,
            finished_at = CASE WHEN NEW.status IN ('succeeded', 'failed', 'cancelled')
                               THEN COALESCE(finished_at, changed_at) END,
            last_event = last_event + 1
        WHERE id = NEW.id RETURNING * INTO job;
        INSERT INTO events (job_id, id, at, kind, data)
        VALUES (NEW.id, job.last_event, changed_at, 'job',
                json_build_object('status', job.status, 'error', job.error)::text);
        PERFORM publishd_count('job', OLD.status, NEW.engine, -1);
        PERFORM publishd_count('job', NEW.status, NEW.engine, 1);
        IF NEW.callback_url IS NOT NULL AND NEW.status IN ('succeeded', 'failed', 'cancelled')
           AND OLD.status NOT IN ('succeeded', 'failed', 'cancelled') THEN
            INSERT INTO deliveries (id, job_id, url, created_at, state, next_attempt_at)
            VALUES (replace(gen_random_uuid()::text, '-', ''), NEW.id, NEW.callback_url,
                    changed_at, 'pending', changed_at);
        END IF;
    ELSE
        INSERT INTO events (job_id, id, at, kind, data)
        VALUES (NEW.id, publishd_next_event(NEW.id), changed_at, 'cancel',
                json_build_object('cancel_requested', true)::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
FOR EACH ROW EXECUTE FUNCTION jobs_changed('inserted');
CREATE TRIGGER jobs_status_changed AFTER UPDATE OF status ON jobs
FOR EACH ROW WHEN (OLD.status <> NEW.status) EXECUTE FUNCTION jobs_changed('status');
CREATE TRIGGER jobs_cancel_requested AFTER UPDATE OF cancel_requested ON jobs
FOR EACH ROW WHEN (NEW.cancel_requested AND NOT OLD.cancel_requested)
EXECUTE FUNCTION jobs_changed('cancel');
CREATE TRIGGER jobs_deleted AFTER DELETE ON jobs
FOR EACH ROW EXECUTE FUNCTION jobs_changed('deleted');

-- A target's event, its job's counts and then its job's status: all
-- terminal is succeeded (every target did), cancelled (a cancel was asked
-- for and cancelled some) or failed; all pending is queued; else running.
-- `domain::status::job_status` says the same, and a test holds them equal.
CREATE FUNCTION targets_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    job jobs;
    job_status TEXT;
    target_data TEXT;
BEGIN
    IF TG_ARGV[0] = 'deleted' THEN
        -- Retention deletes a finished job's targets before the job: only
        -- the counts change (the job's own would make it look changed).
        PERFORM publishd_count('target', OLD.status, OLD.engine, -1);
        RETURN NULL;
    ELSIF TG_ARGV[0] = 'attempt' THEN
        INSERT INTO events (job_id, id, at, kind, position, data)
        VALUES (NEW.job_id, publishd_next_event(NEW.job_id), publishd_now(), 'attempt',
                NEW.position, (NEW.attempt_errors::jsonb -> -1)::text);
        RETURN NULL;
    END IF;
    target_data := json_build_object('status', NEW.status, 'reference', NEW.reference,
                              'digest', NEW.digest, 'up_to_date', NEW.up_to_date,
                              'error', NEW.error, 'attempts', NEW.attempts)::text;
    IF TG_ARGV[0] = 'inserted' THEN
        UPDATE jobs SET
            last_event = last_event + 1,
            pending_targets = pending_targets + (NEW.status = 'pending')::int,
            active_targets = active_targets
                + (NEW.status IN ('tagging', 'pushing', 'untagging'))::int,
            succeeded_targets = succeeded_targets + (NEW.status = 'succeeded')::int,
            failed_targets = failed_targets + (NEW.status = 'failed')::int,
            cancelled_targets = cancelled_targets + (NEW.status = 'cancelled')::int
        WHERE id = NEW.job_id RETURNING * INTO job;
        INSERT INTO events (job_id, id, at, kind, position, data)
        VALUES (NEW.job_id, job.last_event, publishd_now(), 'target', NEW.position, target_data);
        PERFORM publishd_count('target', NEW.status, NEW.engine, 1);
        RETURN NULL;
    END IF;
    UPDATE jobs SET
        last_event = last_event + 1,
        pending_targets = pending_targets + (NEW.status = 'pending')::int
            - (OLD.status = 'pending')::int,
        active_targets = active_targets
            + (NEW.status IN ('tagging', 'pushing', 'untagging'))::int
            - (OLD.status IN ('tagging', 'pushing', 'untagging'))::int,
        succeeded_targets = succeeded_targets + (NEW.status = 'succeeded')::int
            - (OLD.status = 'succeeded')::int,
        failed_targets = failed_targets + (NEW.status = 'failed')::int
            - (OLD.status = 'failed')::int,
        cancelled_targets = cancelled_targets + (NEW.status = 'cancelled')::int
            - (OLD.status = 'cancelled')::int
    WHERE id = NEW.job_id RETURNING * INTO job;
    INSERT INTO events (job_id, id, at, kind, position, data)
    VALUES (NEW.job_id, job.last_event, publishd_now(), 'target', NEW.position, target_data);
    job_status := CASE
        WHEN job.pending_targets + job.active_targets = 0 THEN CASE
            WHEN job.failed_targets + job.cancelled_targets = 0 THEN 'succeeded'
            WHEN job.cancel_requested AND job.cancelled_targets > 0 THEN 'cancelled'
            ELSE 'failed' END
        WHEN job.active_targets + job.succeeded_targets + job.failed_targets
             + job.cancelled_targets = 0 THEN 'queued'
        ELSE 'running' END;
    IF job_status <> job.status THEN
        UPDATE jobs SET status = job_status WHERE id = NEW.job_id;
    END IF;
    PERFORM publishd_count('target', OLD.status, NEW.engine, -1);
    PERFORM publishd_count('target', NEW.status, NEW.engine, 1);
    RETURN NULL;
END $$;

CREATE TRIGGER targets_inserted AFTER INSERT ON targets
FOR EACH ROW EXECUTE FUNCTION targets_changed('inserted');
CREATE TRIGGER targets_status_changed AFTER UPDATE OF status ON targets
FOR EACH ROW WHEN (OLD.status <> NEW.status) EXECUTE FUNCTION targets_changed('status');
CREATE TRIGGER targets_attempt_failed AFTER UPDATE OF attempt_errors ON targets
FOR EACH ROW WHEN (jsonb_array_length(NEW.attempt_errors::jsonb)
                   > jsonb_array_length(OLD.attempt_errors::jsonb))
EXECUTE FUNCTION targets_changed('attempt');
CREATE TRIGGER targets_deleted AFTER DELETE ON targets
FOR EACH ROW EXECUTE FUNCTION targets_changed('deleted');

-- A claim, in one round trip: the least-served submitter (by `pass`) with
-- a target this instance may run, and its first target on this instance's
-- engine or on none (whichever comes first in job order). Lock order: the
-- job's row first (waiting, as the single statements that hold it commit
-- at once), then the target's, skipped if another transaction holds it;
-- every other statement locks a target and then, in its trigger, the job,
-- and none waits for a pending target while it holds a job but the cancel,
-- which a claim never waits for: no cycle. Re-checked under the locks.
-- Two instances that claim two targets of one reference at once meet at
-- `targets_one_in_flight_per_reference`: the loser goes on to its next
-- candidate. The id of the target claimed, or NULL.
CREATE FUNCTION publishd_claim(token TEXT, claimed_at TEXT, lease_secs DOUBLE PRECISION,
                               my_engine TEXT, me TEXT, live_secs DOUBLE PRECISION)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    owner_name TEXT;
    on_engine RECORD;
    on_none RECORD;
    candidate RECORD;
    taken BIGINT;
    passed BIGINT[] := '{}';
BEGIN
    FOR owner_name IN SELECT name FROM owners ORDER BY pass, name LOOP
        LOOP
            SELECT t.id, t.job_id, t.position INTO on_engine
            FROM targets t JOIN jobs j ON j.id = t.job_id
            WHERE t.status = 'pending' AND t.engine = my_engine AND t.submitted_by = owner_name
              AND t.id <> ALL (passed) AND NOT j.cancel_requested
              AND (j.accepted_by IS NULL OR j.accepted_by = me OR NOT EXISTS (
                   SELECT 1 FROM instances i WHERE i.id = j.accepted_by
                     AND i.heartbeat_at > clock_timestamp() - make_interval(secs => live_secs)))
              AND (t.not_before IS NULL OR t.not_before <= claimed_at)
              AND (t.reference_key IS NULL OR NOT EXISTS (
                   SELECT 1 FROM targets u WHERE u.reference_key = t.reference_key
                     AND u.status IN ('tagging', 'pushing', 'untagging')))
            ORDER BY t.job_id, t.position LIMIT 1;
            SELECT t.id, t.job_id, t.position INTO on_none
            FROM targets t JOIN jobs j ON j.id = t.job_id
            WHERE t.status = 'pending' AND t.engine IS NULL AND t.submitted_by = owner_name
              AND t.id <> ALL (passed) AND NOT j.cancel_requested
              AND (j.accepted_by IS NULL OR j.accepted_by = me OR NOT EXISTS (
                   SELECT 1 FROM instances i WHERE i.id = j.accepted_by
                     AND i.heartbeat_at > clock_timestamp() - make_interval(secs => live_secs)))
              AND (t.not_before IS NULL OR t.not_before <= claimed_at)
              AND (t.reference_key IS NULL OR NOT EXISTS (
                   SELECT 1 FROM targets u WHERE u.reference_key = t.reference_key
                     AND u.status IN ('tagging', 'pushing', 'untagging')))
            ORDER BY t.job_id, t.position LIMIT 1;
            IF on_engine.id IS NULL AND on_none.id IS NULL THEN
                EXIT;
            ELSIF on_none.id IS NULL OR (on_engine.id IS NOT NULL
                    AND (on_engine.job_id, on_engine.position) < (on_none.job_id, on_none.position)) THEN
                candidate := on_engine;
            ELSE
                candidate := on_none;
            END IF;
            passed := passed || candidate.id;
            PERFORM 1 FROM jobs WHERE id = candidate.job_id FOR NO KEY UPDATE;
            SELECT t.id INTO taken FROM targets t JOIN jobs j ON j.id = t.job_id
            WHERE t.id = candidate.id AND t.status = 'pending' AND NOT j.cancel_requested
              AND (t.reference_key IS NULL OR NOT EXISTS (
                   SELECT 1 FROM targets u WHERE u.reference_key = t.reference_key
                     AND u.status IN ('tagging', 'pushing', 'untagging')))
            FOR UPDATE OF t SKIP LOCKED;
            CONTINUE WHEN taken IS NULL;
            BEGIN
                UPDATE targets
                SET status = 'tagging', attempts = attempts + 1, runs = runs + 1, error = NULL,
                    started_at = COALESCE(started_at, claimed_at), claim_token = token,
                    lease_expires_at = clock_timestamp() + make_interval(secs => lease_secs),
                    previous_prior_image_id = CASE WHEN created_image_id IS NOT NULL
                        THEN prior_image_id ELSE previous_prior_image_id END,
                    previous_created_image_id = COALESCE(created_image_id, previous_created_image_id),
                    prior_image_id = NULL, created_image_id = NULL, staging_reference = NULL,
                    not_before = NULL
                WHERE id = taken;
                UPDATE owners SET pass = pass + 1.0::float8 / weight WHERE name = owner_name;
                RETURN taken;
            EXCEPTION WHEN unique_violation THEN
                -- Another instance took the reference at this very moment.
                NULL;
            END;
        END LOOP;
    END LOOP;
    RETURN NULL;
END $$;

-- A batch of submissions of one instance, in one round trip (see
-- store/postgres/submit.rs for the fields of each). Every instance's
-- submissions pass the advisory lock one batch at a time, held to the
-- commit that follows the call at once: the queue limit is exact, and no
-- lock waits on a client. Per job: one already there (a batch sent again
-- after its answer was lost) is new; an idempotency key seen before
-- answers its job, or a refusal for another body; then the limits; then
-- the job, its images, its submitter's share, its targets, and its audit
-- record. Answers (job id, verdict, tally) per job, in order: `new`,
-- `existing`, `key_reused`, `overloaded` (tally: pending targets) or
-- `submitter_overloaded` (tally: the submitter's).
CREATE FUNCTION publishd_submit(batch JSONB)
RETURNS TABLE (job TEXT, verdict TEXT, tally BIGINT) LANGUAGE plpgsql AS $$
DECLARE
    submission JSONB;
    existing RECORD;
    pending BIGINT;
    submitters BIGINT;
    wanted BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('publishd_submit'));
    SELECT COALESCE(sum(n), 0) INTO pending FROM counts
    WHERE kind = 'target' AND status = 'pending';
    FOR submission IN SELECT value FROM jsonb_array_elements(batch) LOOP
        wanted := jsonb_array_length(submission -> 'targets');
        IF EXISTS (SELECT 1 FROM jobs WHERE id = submission ->> 'id') THEN
            RETURN QUERY SELECT submission ->> 'id', 'new', NULL::bigint;
            CONTINUE;
        END IF;
        IF submission ->> 'idempotency_key' IS NOT NULL THEN
            SELECT j.id, j.spec_hash INTO existing FROM jobs j
            WHERE j.submitted_by = submission ->> 'submitted_by'
              AND j.idempotency_key = submission ->> 'idempotency_key';
            IF FOUND THEN
                IF existing.spec_hash = submission ->> 'spec_hash' THEN
                    INSERT INTO audit (id, at, actor, action, outcome, job_id, detail)
                    SELECT a.id, a.at, a.actor, a.action, a.outcome, existing.id, a.detail
                    FROM jsonb_to_record(submission -> 'replayed')
                         AS a (id TEXT, at TEXT, actor TEXT, action TEXT, outcome TEXT, detail TEXT)
                    WHERE submission -> 'replayed' IS NOT NULL;
                    RETURN QUERY SELECT existing.id, 'existing', NULL::bigint;
                ELSE
                    RETURN QUERY SELECT NULL::text, 'key_reused', NULL::bigint;
                END IF;
                CONTINUE;
            END IF;
        END IF;
        IF pending + wanted > (submission ->> 'max_pending')::bigint THEN
            RETURN QUERY SELECT NULL::text, 'overloaded', pending;
            CONTINUE;
        END IF;
        IF submission ->> 'max_queued' IS NOT NULL THEN
            SELECT count(*) INTO submitters FROM targets t
            WHERE t.submitted_by = submission ->> 'submitted_by' AND t.status = 'pending';
            IF submitters + wanted > (submission ->> 'max_queued')::bigint THEN
                RETURN QUERY SELECT NULL::text, 'submitter_overloaded', submitters;
                CONTINUE;
            END IF;
        END IF;
        INSERT INTO jobs (id, status, repo, repo_mode, force, has_registry_auth,
                          idempotency_key, spec_hash, created_at, submitted_by,
                          use_service_credentials, required_labels, callback_url,
                          publish_via, engine, accepted_by)
        SELECT j.id, 'queued', j.repo, j.repo_mode, j.force, j.has_registry_auth,
               j.idempotency_key, j.spec_hash, j.created_at, j.submitted_by,
               j.use_service_credentials, j.required_labels, j.callback_url,
               j.publish_via, j.engine, j.accepted_by
        FROM jsonb_to_record(submission) AS j (id TEXT, repo TEXT, repo_mode TEXT, force BOOLEAN,
             has_registry_auth BOOLEAN, idempotency_key TEXT, spec_hash TEXT, created_at TEXT,
             submitted_by TEXT, use_service_credentials BOOLEAN, required_labels TEXT,
             callback_url TEXT, publish_via TEXT, engine TEXT, accepted_by TEXT);
        INSERT INTO job_images (job_id, position, name, source, source_image_id, source_digest)
        SELECT submission ->> 'id', i.position, i.name, i.source, i.source_image_id, i.source_digest
        FROM jsonb_to_recordset(submission -> 'images') AS i (position BIGINT, name TEXT, source TEXT,
             source_image_id TEXT, source_digest TEXT);
        -- A submitter that was idle starts level with the least-served one
        -- still queued, not with the credit of its idle time.
        INSERT INTO owners (name, weight, pass)
        VALUES (submission ->> 'submitted_by', (submission ->> 'weight')::bigint,
                COALESCE((SELECT MIN(o.pass) FROM owners o WHERE EXISTS (
                    SELECT 1 FROM targets t WHERE t.submitted_by = o.name
                      AND t.status IN ('pending', 'tagging', 'pushing', 'untagging'))), 0))
        ON CONFLICT (name) DO UPDATE SET weight = excluded.weight,
            pass = CASE WHEN EXISTS (
                    SELECT 1 FROM targets t WHERE t.submitted_by = owners.name
                      AND t.status IN ('pending', 'tagging', 'pushing', 'untagging'))
                THEN owners.pass ELSE GREATEST(owners.pass, excluded.pass) END;
        INSERT INTO targets (job_id, position, image_position, image_name, source, strategy,
                             tag, reference, reference_key, status, submitted_by, engine)
        SELECT submission ->> 'id', t.position, t.image_position, t.image_name, t.source, t.strategy,
               t.tag, t.reference, t.reference_key, 'pending', submission ->> 'submitted_by',
               submission ->> 'engine'
        FROM jsonb_to_recordset(submission -> 'targets') AS t (position BIGINT, image_position BIGINT,
             image_name TEXT, source TEXT, strategy TEXT, tag TEXT, reference TEXT,
             reference_key TEXT)
        ORDER BY t.position;
        INSERT INTO audit (id, at, actor, action, outcome, job_id, detail)
        SELECT a.id, a.at, a.actor, a.action, a.outcome, submission ->> 'id', a.detail
        FROM jsonb_to_record(submission -> 'accepted')
             AS a (id TEXT, at TEXT, actor TEXT, action TEXT, outcome TEXT, detail TEXT)
        WHERE submission -> 'accepted' IS NOT NULL;
        pending := pending + wanted;
        RETURN QUERY SELECT submission ->> 'id', 'new', NULL::bigint;
    END LOOP;
END $$;
