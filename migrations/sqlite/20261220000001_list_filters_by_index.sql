-- Every filter of the jobs list is read through an index, newest first
-- (store/sql/jobs.rs writes a page's SQL for the filters given, so that the
-- planner can take these): status and submitter, each, both or neither,
-- over all jobs and again, partial, over the jobs with a failed target (the
-- few); a prefix is a range of repositories. The same indexes in
-- migrations/postgres/20261220000001_list_filters_by_index.sql.
CREATE INDEX jobs_by_submitter_status ON jobs (submitted_by, status, id);
CREATE INDEX jobs_failed ON jobs (id) WHERE failed_targets > 0;
CREATE INDEX jobs_failed_by_status ON jobs (status, id) WHERE failed_targets > 0;
CREATE INDEX jobs_failed_by_submitter ON jobs (submitted_by, id) WHERE failed_targets > 0;
CREATE INDEX jobs_failed_by_submitter_status ON jobs (submitted_by, status, id)
    WHERE failed_targets > 0;
CREATE INDEX jobs_by_repo ON jobs (repo, id);
