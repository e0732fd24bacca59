-- Each image of a job, with its source resolved to one image id: every
-- target of the image publishes that id, even if the source's name moves
-- while the job runs. Resolved when the job is accepted, or at the first
-- claim of one of its targets when the engine could not say then.
CREATE TABLE job_images (
    job_id          TEXT NOT NULL REFERENCES jobs (id),
    position        INTEGER NOT NULL,
    name            TEXT,
    source          TEXT NOT NULL,
    source_image_id TEXT,
    PRIMARY KEY (job_id, position)
);

-- Which image of its job a target publishes.
ALTER TABLE targets ADD COLUMN image_position INTEGER NOT NULL DEFAULT 0;
-- The reference normalised (`app:v1` is `docker.io/library/app:v1`): what
-- per-reference exclusion compares.
ALTER TABLE targets ADD COLUMN reference_key TEXT;
-- The build tag method's temporary name for the image it builds, recorded
-- before the build: what recovery removes if the process dies meanwhile.
ALTER TABLE targets ADD COLUMN staging_reference TEXT;

-- Jobs recorded before this migration: one image per distinct name and
-- source, in the order their targets were planned.
INSERT INTO job_images (job_id, position, name, source)
SELECT job_id, ROW_NUMBER() OVER (PARTITION BY job_id ORDER BY first_position) - 1, image_name, source
FROM (
    SELECT job_id, image_name, source, MIN(position) AS first_position
    FROM targets GROUP BY job_id, image_name, source
);
UPDATE targets SET image_position = (
    SELECT i.position FROM job_images i
    WHERE i.job_id = targets.job_id AND i.source = targets.source
      AND i.name IS targets.image_name
);
UPDATE targets SET reference_key = reference;

DROP INDEX targets_by_reference;
CREATE INDEX targets_by_reference_key ON targets (reference_key, status);
