-- The platforms a job publishes of its sources' indexes (a JSON array of
-- "os/arch[/variant]"); null: every platform.
ALTER TABLE jobs ADD COLUMN platforms TEXT;
-- What werf's publish report calls a target's DockerImageID: the published
-- image's config digest, or an index's own digest.
ALTER TABLE targets ADD COLUMN image_id TEXT;

-- publishd_submit as in 20261219000001_read_repos.sql, with the job's
-- platforms, which it now inserts with the job.
CREATE OR REPLACE FUNCTION publishd_submit(batch JSONB)
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
                          use_service_credentials, required_labels, read_repos,
                          callback_url, publish_via, engine, accepted_by, platforms)
        SELECT j.id, 'queued', j.repo, j.repo_mode, j.force, j.has_registry_auth,
               j.idempotency_key, j.spec_hash, j.created_at, j.submitted_by,
               j.use_service_credentials, j.required_labels, j.read_repos, j.callback_url,
               j.publish_via, j.engine, j.accepted_by, j.platforms
        FROM jsonb_to_record(submission) AS j (id TEXT, repo TEXT, repo_mode TEXT, force BOOLEAN,
             has_registry_auth BOOLEAN, idempotency_key TEXT, spec_hash TEXT, created_at TEXT,
             submitted_by TEXT, use_service_credentials BOOLEAN, required_labels TEXT,
             read_repos TEXT, callback_url TEXT, publish_via TEXT, engine TEXT,
             accepted_by TEXT, platforms TEXT);
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
