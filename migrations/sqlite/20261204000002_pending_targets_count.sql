-- The number of pending targets, kept by triggers in the transaction that
-- changes a target: every submission checks it against
-- --max-queued-targets, and counting the rows costs as much as the queue
-- is long (about 10 ms at 100,000), for every submission.
CREATE TABLE pending_targets (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    count INTEGER NOT NULL
);
INSERT INTO pending_targets (id, count)
SELECT 1, count(*) FROM targets WHERE status = 'pending';

CREATE TRIGGER pending_targets_insert AFTER INSERT ON targets
WHEN NEW.status = 'pending' BEGIN
    UPDATE pending_targets SET count = count + 1;
END;

CREATE TRIGGER pending_targets_update AFTER UPDATE OF status ON targets
WHEN (OLD.status = 'pending') <> (NEW.status = 'pending') BEGIN
    UPDATE pending_targets SET count = count + (NEW.status = 'pending') - (OLD.status = 'pending');
END;

CREATE TRIGGER pending_targets_delete AFTER DELETE ON targets
WHEN OLD.status = 'pending' BEGIN
    UPDATE pending_targets SET count = count - 1;
END;
