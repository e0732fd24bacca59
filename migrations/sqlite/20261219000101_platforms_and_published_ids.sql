-- The platforms a job publishes of its sources' indexes (a JSON array of
-- "os/arch[/variant]"); null: every platform.
ALTER TABLE jobs ADD COLUMN platforms TEXT;
-- What werf's publish report calls a target's DockerImageID: the published
-- image's config digest, or an index's own digest.
ALTER TABLE targets ADD COLUMN image_id TEXT;
