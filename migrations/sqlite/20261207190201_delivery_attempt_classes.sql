-- A delivery attempt keeps only the class of what came of it (`result`:
-- 2xx, 3xx, 4xx, 5xx, timeout, refused), not the receiver's status code or
-- error text: those are not the submitter's to read (a callback must not be
-- a way to probe the hosts publishd reaches). Attempts recorded before are
-- rewritten the same way, dropping what they kept.
UPDATE deliveries SET attempts = (
    SELECT json_group_array(json_object(
        'attempt', json_extract(tried.value, '$.attempt'),
        'at', json_extract(tried.value, '$.at'),
        'result', CASE
            WHEN json_extract(tried.value, '$.status') BETWEEN 200 AND 299 THEN '2xx'
            WHEN json_extract(tried.value, '$.status') BETWEEN 300 AND 399 THEN '3xx'
            WHEN json_extract(tried.value, '$.status') BETWEEN 400 AND 499 THEN '4xx'
            WHEN json_extract(tried.value, '$.status') IS NOT NULL THEN '5xx'
            WHEN lower(json_extract(tried.value, '$.error')) LIKE '%timed out%' THEN 'timeout'
            ELSE 'refused' END))
    FROM (SELECT value FROM json_each(deliveries.attempts) ORDER BY key) AS tried)
WHERE attempts <> '[]';
