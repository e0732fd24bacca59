-- A delivery attempt keeps only the class of what came of it (`result`:
-- 2xx, 3xx, 4xx, 5xx, timeout, refused), not the receiver's status code or
-- error text: those are not the submitter's to read (a callback must not be
-- a way to probe the hosts publishd reaches). Attempts recorded before are
-- rewritten the same way, dropping what they kept.
UPDATE deliveries SET attempts = (
    SELECT jsonb_agg(jsonb_build_object(
        'attempt', tried.value -> 'attempt',
        'at', tried.value -> 'at',
        'result', CASE
            WHEN (tried.value ->> 'status')::int BETWEEN 200 AND 299 THEN '2xx'
            WHEN (tried.value ->> 'status')::int BETWEEN 300 AND 399 THEN '3xx'
            WHEN (tried.value ->> 'status')::int BETWEEN 400 AND 499 THEN '4xx'
            WHEN tried.value ->> 'status' IS NOT NULL THEN '5xx'
            WHEN lower(tried.value ->> 'error') LIKE '%timed out%' THEN 'timeout'
            ELSE 'refused' END) ORDER BY tried.position)::text
    FROM jsonb_array_elements(deliveries.attempts::jsonb) WITH ORDINALITY AS tried(value, position))
WHERE attempts <> '[]';
