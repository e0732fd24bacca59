-- The repositories a job's submitter may read (its scope's `read_repos`,
-- a JSON array of patterns): the worker mounts layers only from these.
-- Jobs from before it were accepted without the rule.
ALTER TABLE jobs ADD COLUMN read_repos TEXT NOT NULL DEFAULT '["**"]';
