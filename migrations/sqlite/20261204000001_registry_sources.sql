-- Registry sources (`docker://...`): the manifest digest a job's source
-- named when it was first read, so every target of the job publishes the
-- same image even if the source's tag moves.
ALTER TABLE job_images ADD COLUMN source_digest TEXT;
